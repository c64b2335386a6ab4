"""Recipes, the run scripts, evaluation and the report."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import sacrebleu

from onmt_lma import plugin  # noqa: F401  (installs)
from onmt_lma import recipes

from conftest import run
from onmt_lma.bin import train as train_cli
from onmt_lma.report import lma_curve, write_report

from conftest import REPO, load

TINY_SETTINGS = {
    "hidden_size": 32, "word_vec_size": 32, "transformer_ff": 64, "heads": 2,
    "enc_layers": 1, "dec_layers": 1, "batch_size": 256, "valid_batch_size": 256,
    "bucket_size": 1024, "warmup_steps": 10, "report_every": 2, "label_smoothing": 0.0,
}


@pytest.fixture(scope="module")
def corpus_dir(vocab, tmp_path_factory):
    """A prepared-corpus directory in data_prep's layout, from the tiny corpus (test = valid)."""
    from sacremoses import MosesDetokenizer

    out = tmp_path_factory.mktemp("prepared") / "multi30k"  # $DATA_ROOT/<corpus>, as the scripts expect
    out.mkdir()
    for split in ("train", "valid"):
        for lang in ("de", "en"):
            (out / f"{split}.{lang}").write_text((vocab / f"{split}.{lang}").read_text())
    for lang in ("de", "en"):
        (out / f"test.{lang}").write_text((vocab / f"valid.{lang}").read_text())
    (out / "test.ref.tok.en").write_text((out / "test.en").read_text())
    detok = MosesDetokenizer("en")
    (out / "test.ref.detok.en").write_text(
        "\n".join(detok.detokenize(l.split()) for l in (out / "test.en").read_text().splitlines()) + "\n"
    )
    for lang in ("de", "en"):
        (out / f"vocab.{lang}").write_text((vocab / f"vocab.{lang}").read_text())
    (out / "data.yaml").write_text(
        f"src_vocab: {out}/vocab.de\ntgt_vocab: {out}/vocab.en\nsrc_vocab_size: 50000\ntgt_vocab_size: 50000\n"
        f"data:\n  corpus_1: {{path_src: {out}/train.de, path_tgt: {out}/train.en}}\n"
        f"  valid: {{path_src: {out}/valid.de, path_tgt: {out}/valid.en}}\n"
    )
    (out / "manifest.json").write_text(json.dumps({"corpus": "multi30k", "options": {"subword": "none"}}))
    return out


@pytest.mark.parametrize("corpus", recipes.CORPORA)
@pytest.mark.parametrize("model", recipes.MODELS)
def test_every_recipe_parses_with_the_strict_option_parser(corpus, model, corpus_dir, tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    settings = [("pos_ffn_activation_fn", "lma"), ("seed", 3)]
    if model != "teacher":
        settings.append(("kd_teacher", str(teacher)))
    config = recipes.compose(corpus, model, corpus_dir, tmp_path / "run", settings)
    recipes.write_config(config, tmp_path / "config.yaml")
    opt = train_cli.get_parser().parse_args(["-config", str(tmp_path / "config.yaml")])
    # the paper's settings (Xu et al. 2020, translation experiments)
    assert (opt.heads, opt.transformer_ff, opt.optim, opt.adam_beta2) == (8, 2048, "adam", 0.998)
    assert (opt.decay_method, opt.batch_size, opt.batch_type) == ("noam", 3192, "tokens")
    # noam peaks at learning_rate * d^-0.5 * warmup^-0.5: the peak of the authors' code
    # (learning rate 1.0 with warmup 8000) for every size
    assert opt.learning_rate * opt.warmup_steps ** -0.5 == pytest.approx(1.0 * 8000 ** -0.5, rel=0.01)
    # the paper's models: biases in every linear layer; the authors' loss: plain NLL
    assert opt.add_qkvbias is True and opt.add_ffnbias is True and opt.label_smoothing == 0.0
    assert opt.dropout == [0.1] and opt.kd_alpha == 0.7 and opt.kd_temperature == 1.0
    assert opt.pos_ffn_activation_fn == "lma" and opt.seed == 3
    if model == "teacher":
        size, layers = {"multi30k": (256, 3)}.get(corpus, (512, 6))
    else:
        size, layers = int(model[len("student"):]), 3
    assert (opt.hidden_size, opt.word_vec_size, opt.enc_layers, opt.dec_layers) == (size, size, layers, layers)
    assert opt.save_model == str((tmp_path / "run").resolve() / "model")


def test_a_stale_key_in_a_recipe_fails(corpus_dir, tmp_path):
    config = recipes.compose("ope", "student64", corpus_dir, tmp_path / "run", [("transformer_fff", 2048)])
    recipes.write_config(config, tmp_path / "config.yaml")
    with pytest.raises(SystemExit):
        train_cli.get_parser().parse_args(["-config", str(tmp_path / "config.yaml")])


def test_composition_errors(corpus_dir, tmp_path):
    with pytest.raises(recipes.RecipeError, match="unknown corpus 'iwslt'"):
        recipes.compose("iwslt", "teacher", corpus_dir, tmp_path)
    with pytest.raises(recipes.RecipeError, match="unknown model 'student32'"):
        recipes.compose("ope", "student32", corpus_dir, tmp_path)
    with pytest.raises(recipes.RecipeError, match="data.yaml does not exist: prepare the corpus first"):
        recipes.compose("ope", "teacher", tmp_path, tmp_path)
    with pytest.raises(recipes.RecipeError, match="expected KEY=VALUE"):
        recipes.parse_setting("seed")


def test_a_run_being_trained_cannot_be_trained_twice(corpus_dir, tmp_path):
    with recipes.run_lock(tmp_path):
        with pytest.raises(recipes.RecipeError, match="is being trained by another process"):
            recipes.train("multi30k", "student64", corpus_dir, tmp_path, [("train_steps", 1)])
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.integration
def test_training_runs_resume_and_are_never_overwritten(corpus_dir, tmp_path, capsys):
    settings = list(TINY_SETTINGS.items()) + [("train_steps", 4), ("save_checkpoint_steps", 2),
                                              ("valid_steps", 4), ("pos_ffn_activation_fn", "lma")]
    run_dir = tmp_path / "student"
    final = recipes.train("multi30k", "student64", corpus_dir, run_dir, settings)
    assert final == run_dir / "model_step_4.pt" and (run_dir / "DONE").read_text().strip() == final.name
    mtime = final.stat().st_mtime_ns
    assert recipes.train("multi30k", "student64", corpus_dir, run_dir, settings) == final
    assert "finished already" in capsys.readouterr().err and final.stat().st_mtime_ns == mtime
    # an interrupted run (killed after step 2) resumes from its latest checkpoint
    (run_dir / "DONE").unlink()
    final.unlink()
    recipes.train("multi30k", "student64", corpus_dir, run_dir, settings)
    assert "resuming from model_step_2.pt" in capsys.readouterr().err
    assert "resuming from model_step_2.pt" in (run_dir / "train.log").read_text()  # logged as OpenNMT-py logs
    assert load(final)["optim"]["training_step"] == 5
    (run_dir / "DONE").unlink()
    with pytest.raises(recipes.RecipeError, match="composed with other settings"):
        recipes.train("multi30k", "student64", corpus_dir, run_dir, settings + [("seed", 9)])


@pytest.fixture(scope="module")
def evaluated(corpus_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evalrun") / "student64_lma_seed1"
    settings = list(TINY_SETTINGS.items()) + [("train_steps", 12), ("save_checkpoint_steps", 12),
                                              ("valid_steps", 12), ("pos_ffn_activation_fn", "lma"),
                                              ("dropout", 0.0), ("attention_dropout", 0.0)]
    final = recipes.train("multi30k", "student64", corpus_dir, run_dir, settings)
    result = subprocess.run(["bash", str(REPO / "scripts" / "evaluate.sh"), str(final), "multi30k"],
                            capture_output=True, text=True, env={**os.environ, "DATA_ROOT": str(corpus_dir.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BLEU" in result.stdout and "chrF" in result.stdout  # the side-by-side table
    out = run_dir / "model_step_12.pt.eval.json"
    return final, json.loads(out.read_text()), out


@pytest.mark.integration
def test_evaluation_fills_every_field(evaluated, corpus_dir):
    checkpoint, result, _ = evaluated
    assert result["corpus"] == "multi30k" and result["test_sentences"] == 60
    assert result["model"]["activation"] == "lma" and result["model"]["hidden_size"] == 32
    assert result["model"]["train_steps"] == 12
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in result["bleu"]["signature"]
    assert "tok:none" in result["bleu_tok"]["signature"]
    assert 0 <= result["bleu"]["score"] <= 100 and 0 <= result["bleu_tok"]["score"] <= 100
    assert math.isfinite(result["ppl"]) and result["ppl"] > 1
    assert result["speed"]["sentences_per_s"] > 0 and result["speed"]["target_tokens_per_s"] >= 0
    assert result["memory"]["device"] == "cpu" and result["memory"]["peak_mb"] > 0
    assert result["size_mb"] == pytest.approx(checkpoint.stat().st_size / 2**20)
    ckpt = load(checkpoint)
    expected = sum(t.numel() for t in ckpt["model"].values() if t.is_floating_point())
    expected += sum(t.numel() for t in ckpt["generator"].values())
    assert result["params"] == expected
    assert result["commit"] and result["machine"]["cpu_count"] >= 1
    # the learned LMA of each layer (1 + 1 layers here), as the checkpoint holds it
    learned = result["model"]["learned_lma"]
    assert sorted(learned) == ["decoder.transformer_layers.0.feed_forward.activation",
                               "encoder.transformer.0.feed_forward.activation"]
    for name, layer in learned.items():
        for key in ("alpha", "beta", "running_mean", "running_std"):
            stored = ckpt["model"][f"{name}.{key}"].double().flatten().tolist()
            assert stored == pytest.approx(layer[key] if isinstance(layer[key], list) else [layer[key]])


@pytest.mark.integration
def test_bleu_and_chrf_match_sacrebleu_called_directly(evaluated, corpus_dir):
    _, result, out = evaluated
    hyps = (out.parent / "model_step_12.pt.eval.hyp.detok.en").read_text().splitlines()
    refs = (corpus_dir / "test.ref.detok.en").read_text().splitlines()
    assert result["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert result["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert result["chrf"]["signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


@pytest.mark.integration
def test_any_raw_test_set_gets_the_corpus_steps_and_several_checkpoints_a_table(evaluated, corpus_dir, tmp_path):
    """-src/-ref: raw text is Moses-tokenized like the corpus the checkpoint was trained on (found from its
    vocabularies), its output detokenized and scored; two checkpoints give two JSONs and one table."""
    import shutil

    from sacremoses import MosesDetokenizer

    checkpoint, _, _ = evaluated
    tokenized = (corpus_dir / "test.de").read_text().splitlines()
    raw_src = tmp_path / "news.de"
    raw_src.write_text("\n".join(MosesDetokenizer("de").detokenize(line.split()) for line in tokenized) + "\n")
    raw_ref = corpus_dir / "test.ref.detok.en"
    other = tmp_path / "other.pt"
    shutil.copy(checkpoint, other)
    out = tmp_path / "results"
    result = run("onmt_lma_evaluate", "-model", checkpoint, other, "-src", raw_src, "-ref", raw_ref, "-out", out)
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and "chrF" in table[0] and str(other) in table[3]
    first = json.loads((out / "model_step_12.pt.news.de.eval.json").read_text())
    second = json.loads((out / "other.pt.news.de.eval.json").read_text())
    assert first["bleu"]["score"] == second["bleu"]["score"]  # the same weights
    hyps = (out / "model_step_12.pt.news.de.eval.hyp.detok.en").read_text().splitlines()
    refs = raw_ref.read_text().splitlines()
    assert first["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert first["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert first["bleu_tok"] is None  # no tokenized reference given
    assert first["test"]["src"] == os.path.relpath(raw_src) and not first["checkpoint"].startswith("/")
    assert first["inputs"]["src_sha256"] == hashlib.sha256(raw_src.read_bytes()).hexdigest()
    # what the model read: the raw source as Moses tokenizer.perl -a -l de tokenizes it (sacremoses called directly)
    from sacremoses import MosesTokenizer

    from onmt_lma import evaluate

    test = evaluate.raw_test_set(raw_src, raw_ref, None, corpus_dir, tmp_path)
    moses = MosesTokenizer("de")
    assert test.src.read_text().splitlines() == [
        " ".join(moses.tokenize(line, aggressive_dash_splits=True, escape=True, return_str=True).split())
        for line in raw_src.read_text().splitlines()]
    # with a tokenized reference: tokenized BLEU as multi-bleu.perl (sacreBLEU, tokenize none)
    run("onmt_lma_evaluate", "-model", checkpoint, "-src", raw_src, "-ref", raw_ref,
        "-ref_tok", corpus_dir / "test.ref.tok.en", "-out", tmp_path / "tok.json", "-corpus", corpus_dir)
    with_tok = json.loads((tmp_path / "tok.json").read_text())
    assert with_tok["bleu_tok"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:none")
    assert with_tok["bleu"]["score"] == pytest.approx(first["bleu"]["score"])  # the same translation


@pytest.mark.integration
@pytest.mark.parametrize("case, message", [
    ("lengths", "-ref {ref} has 3 lines, -src {src} has 60"),
    ("empty", "-src {src} is empty"),
    ("missing", "-model {missing}: no such checkpoint"),
    ("alone", "-src and -ref go together"),
])
def test_bad_evaluation_input_is_one_line_before_any_translation(evaluated, corpus_dir, tmp_path, case, message):
    checkpoint, _, _ = evaluated
    src, ref, missing = tmp_path / "src.de", tmp_path / "ref.en", tmp_path / "missing.pt"
    src.write_text("" if case == "empty" else (corpus_dir / "test.de").read_text())
    ref.write_text("a\nb\nc\n" if case == "lengths" else (corpus_dir / "test.ref.detok.en").read_text())
    args = ["-model", missing if case == "missing" else checkpoint, "-src", src, "-out", tmp_path / "r.json"]
    if case != "alone":
        args += ["-ref", ref]
    result = run("onmt_lma_evaluate", *args, expect_ok=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.format(src=src, ref=ref, missing=missing) in result.stderr
    assert "translating" not in result.stderr and not (tmp_path / "r.json").exists()


@pytest.mark.integration
def test_test_perplexity_equals_opennmt_validation_perplexity(evaluated):
    """test = valid here, no dropout and no label smoothing: both are exp(NLL per target token)."""
    checkpoint, result, _ = evaluated
    log = (checkpoint.parent / "train.log").read_text()
    validation = float(log.rsplit("Validation perplexity: ", 1)[1].split()[0])
    assert result["ppl"] == pytest.approx(validation, rel=1e-3)


def synthetic_result(corpus, size, activation, seed, bleu, ppl, run_dir, teacher=False, segments=8, hyp_len=None):
    text = f"BLEU = {bleu:.2f} 50.0/30.0/20.0/10.0 (BP = 1.000 ratio = 1.000 hyp_len = {hyp_len} ref_len = 1000)"
    return {
        "corpus": corpus, "run_dir": str(run_dir), "checkpoint": str(run_dir / "m.pt"),
        "model": {"activation": activation, "lma_segments": segments, "hidden_size": size, "enc_layers": 3,
                  "dec_layers": 3, "seed": seed, "kd_teacher": None if teacher else "t.pt"},
        "bleu": {"score": bleu, "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
                 **({"text": text} if hyp_len else {})},
        "chrf": {"score": bleu + 20, "signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"},
        "bleu_tok": {"score": bleu + 1, "signature": "tok:none"},
        "ppl": ppl, "params": 1e6, "memory": {"peak_mb": 100.0}, "speed": {"sentences_per_s": 10.0},
    }


def test_report_means_standard_deviations_and_changes(tmp_path):
    results = tmp_path / "runs"
    rows = [("relu", 1, 10.0, 30.0, 900), ("relu", 2, 11.0, 31.0, 950), ("relu", 3, 12.0, 32.0, 1000),
            ("lma", 1, 12.0, 28.0, 760), ("lma", 2, 13.0, 29.0, None), ("prelu", 1, 9.0, 33.0, None)]
    for activation, seed, bleu, ppl, hyp_len in rows:
        run_dir = results / f"student64_{activation}_seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text(
            "[x INFO] Step 100/200; acc: 1\n[x INFO] Validation perplexity: 50.0\n"
            f"[x INFO] Step 200/200; acc: 2\n[x INFO] Validation perplexity: {ppl}\n"
        )
        (run_dir / "m.pt.eval.json").write_text(
            json.dumps(synthetic_result("multi30k", 64, activation, seed, bleu, ppl, run_dir, hyp_len=hyp_len)))
    teacher_dir = results / "teacher"
    teacher_dir.mkdir()
    (teacher_dir / "m.pt.eval.json").write_text(json.dumps(synthetic_result("multi30k", 256, "relu", 1, 20.0, 10.0, teacher_dir, teacher=True)))
    _, teacher_only = write_report([teacher_dir], tmp_path / "teacher_report")
    assert "No student runs yet." in teacher_only and "| multi30k | 256-dim 3+3 | 20.00 |" in teacher_only
    path, text = write_report([results], tmp_path / "report")
    row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | BLEU |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(l for l in text.splitlines() if l.startswith("| corpus | student |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:] == ["relu", "prelu", "lma-8"]
    assert cells[3] == "11.00 ± 1.00 [n=3]"
    assert cells[4] == "9.00 (-18.2%) [n=1]"
    assert cells[5] == "12.50 ± 0.71 (+13.6%) [n=2]"
    ppl_row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | ppl |"))
    assert "28.50 ± 0.71 (-8.1%) [n=2]" in ppl_row
    # the length ratio where sacreBLEU's text gives the lengths, "—" where no run of a column does
    length_row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | length ratio |"))
    assert [c.strip() for c in length_row.strip("|").split("|")][3:] == ["0.95 ± 0.05 [n=3]", "—", "0.76 (-20.0%) [n=1]"]
    assert "| multi30k | 256-dim 3+3 | 20.00 | 40.00 | 21.00 | 10.00 | 1.0 M |" in text
    chrf_row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | chrF |"))
    assert [c.strip() for c in chrf_row.strip("|").split("|")][3] == "31.00 ± 1.00 [n=3]"
    for image in ("bleu_vs_size_multi30k.png", "valid_ppl_multi30k_64.png"):
        assert (tmp_path / "report" / image).stat().st_size > 1000
        assert f"]({image})" in text


def test_report_compares_with_relu_studies_segments_and_times_runs(tmp_path):
    """Collected results (train.log beside the JSON, run directory gone), a reading, a segment study."""
    collected = tmp_path / "collected"
    rows = [("relu", 8, 1, 10.0), ("relu", 8, 2, 12.0), ("lma", 8, 1, 13.0), ("lma", 8, 2, 15.0),
            ("lma", 4, 1, 11.0), ("lma", 16, 1, 14.0)]
    for activation, segments, seed, bleu in rows:
        name = f"student64_{activation}{'' if segments == 8 else segments}_seed{seed}"
        (collected / name).mkdir(parents=True)
        # a run stopped after 60 s at step 40 and resumed: 60 + 90 s of training
        (collected / name / "train.log").write_text(
            "[x INFO] Step 20/80; acc: 1; 30 sec;\n[x INFO] Step 40/80; acc: 1; 60 sec;\n"
            "[x INFO] Step 60/80; acc: 2; 45 sec;\n[x INFO] Validation perplexity: 20.0\n"
            "[x INFO] Step 80/80; acc: 2; 90 sec;\n[x INFO] Validation perplexity: 18.0\n"
        )
        result = synthetic_result("multi30k", 64, activation, seed, bleu, 20.0, tmp_path / "gone" / name,
                                  segments=segments)
        result.update(evaluation_seconds=120.0, commit="0123456789abcdef", evaluated_at="2026-11-24T10:00:00+00:00")
        (collected / name / f"{name}.eval.json").write_text(json.dumps(result))
    reading = tmp_path / "READING.md"
    reading.write_text("LMA-8 beats ReLU by 3 BLEU here.\n")
    _, text = write_report([collected], tmp_path / "report", reading)
    assert text.index("## Reading") < text.index("## Students") and "LMA-8 beats ReLU by 3 BLEU here." in text
    # lma-8: +3.00, standard error sqrt(2/2 + 2/2) = 1.414 -> t = +2.12
    assert "| multi30k | 64 | lma-8 | +3.00 | 13.00 to 15.00 vs 10.00 to 12.00 | +2.12 | 2 / 2 |" in text
    assert "| multi30k | 64 | lma-4 | +0.00 | 11.00 to 11.00 vs 10.00 to 12.00 | — | 1 / 2 |" in text
    segment_rows = [l for l in text.split("## LMA segment study")[1].splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [l.split("|")[1].strip() for l in segment_rows] == ["4", "8", "16"]
    assert segment_rows[1].split("|")[2].strip() == "14.00" and segment_rows[1].split("|")[-2].strip() == "2"
    assert [l.split("|")[3].strip() for l in segment_rows] == ["s1 11.00", "s1 13.00, s2 15.00", "s1 14.00"]
    assert "| student64_lma16_seed1 | lma-16 | 1 | None | 2.5 min | 2.0 min | 0123456789 |" in text
    for image in ("segments_multi30k_64.png", "valid_ppl_multi30k_64.png"):
        assert (tmp_path / "report" / image).stat().st_size > 1000


def test_learned_lma_functions_are_drawn_as_the_model_computes_them(tmp_path):
    layer = {"alpha": [0.3, -0.1, 0.0, 0.2, 0.9, 0.7, 1.1, 0.5], "beta": [0.1, 0.0, -0.2, 0.05, -0.3, 0.2, 0.0, -0.4],
             "running_mean": -0.4, "running_std": 1.3}
    xs = [-9.0, -4.3, -1.0, -0.41, -0.39, 0.0, 0.6, 1.55, 2.0, 3.5, 12.0]
    width = 6 * layer["running_std"] / 8
    expected = []
    for x in xs:  # the paper's batch segmentation and per-segment lines (Xu et al. 2020, method section), in float64
        j = min(max(math.floor((x - (layer["running_mean"] - 3 * layer["running_std"])) / width), 0), 7)
        expected.append(layer["alpha"][j] * x + layer["beta"][j])
    assert lma_curve(layer, xs) == pytest.approx(expected, abs=1e-12)

    collected = tmp_path / "collected"
    for seed in (1, 2):
        name = f"student64_lma_seed{seed}"
        (collected / name).mkdir(parents=True)
        result = synthetic_result("multi30k", 64, "lma", seed, 10.0, 20.0, tmp_path / "gone" / name)
        result["model"]["learned_lma"] = {f"encoder.transformer.{i}.feed_forward.activation": layer for i in range(3)}
        (collected / name / f"{name}.eval.json").write_text(json.dumps(result))
    _, text = write_report([collected], tmp_path / "report")
    assert "](lma_shapes_multi30k_64.png)" in text
    assert (tmp_path / "report" / "lma_shapes_multi30k_64.png").stat().st_size > 1000


def test_study_plan_lists_every_run_in_order_with_its_state(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    (results / "runs" / "teacher").mkdir(parents=True)
    (results / "runs" / "teacher" / "teacher.eval.json").write_text("{}")
    (runs / "multi30k" / "student64_relu_seed1").mkdir(parents=True)
    (runs / "multi30k" / "student64_relu_seed1" / "DONE").write_text("model_step_800.pt\n")
    (runs / "multi30k" / "student64_lma_seed1").mkdir()
    result = subprocess.run(["bash", str(REPO / "scripts" / "multi30k_study.sh"), "--plan"], capture_output=True,
                            text=True, env={**os.environ, "RUNS_ROOT": str(runs), "RESULTS": str(results)})
    assert result.returncode == 0, result.stderr
    plan = [line.split() for line in result.stdout.splitlines()]
    assert plan[:4] == [["teacher", "collected"], ["student64_relu_seed1", "trained"],
                        ["student64_lma_seed1", "started"], ["student64_aplu_seed1", "todo"]]
    names = [name for name, _ in plan]
    assert names[6:11] == [f"student64_{a}_seed2" for a in ("relu", "lma", "aplu", "prelu", "swish")]
    assert names[11:14] == ["student64_lma4_seed1", "student64_lma12_seed1", "student64_lma16_seed1"]
    assert len(names) == 1 + 5 * 3 + 3 and len(set(names)) == len(names)
    assert all(state == "todo" for _, state in plan[4:])


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train_teacher.sh", [], "expected 1 argument, got 0"),
        ("train_teacher.sh", ["iwslt"], "unknown corpus 'iwslt'"),
        ("train_student.sh", ["ope", "100", "lma", "1"], "unknown size '100' (valid: 256 128 64)"),
        ("train_student.sh", ["ope", "64", "maxout", "1"], "unknown activation 'maxout'"),
        ("train_student.sh", ["ope", "64", "lma", "first"], "SEED must be a positive integer, got 'first'"),
        ("evaluate.sh", ["missing.pt", "ope"], "no checkpoint at 'missing.pt'"),
        ("evaluate.sh", ["x.pt"], "expected 2 arguments, got 1"),
        ("report.sh", ["out"], "expected an output folder and at least one results folder"),
        ("demo.sh", ["now"], "no arguments expected"),
        ("multi30k_study.sh", ["--all"], "unknown option '--all'"),
    ],
)
def test_bad_script_arguments_fail_with_usage(script, args, message):
    result = subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: scripts/") and message in result.stderr


def test_study_commit_takes_the_results_folder_and_nothing_else(tmp_path):
    """--commit: the rebuilt report and the collected runs are committed; hand-written files and
    changes staged elsewhere in the repository are left as they were."""
    repo = tmp_path / "repo"
    results = repo / "results" / "multi30k"
    results.mkdir(parents=True)
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                              env=git_env).stdout

    git("init", "-q")
    (repo / "README.md").write_text("a\n")
    (results / "READING.md").write_text("First reading.\n")
    git("add", "-A")
    git("commit", "-q", "-m", "start")
    (results / "READING.md").write_text("A reading being edited.\n")
    (repo / "README.md").write_text("b\n")
    git("add", "README.md")

    env = {**git_env, "RUNS_ROOT": str(tmp_path / "runs"), "RESULTS": str(results)}
    plan = subprocess.run(["bash", str(REPO / "scripts" / "multi30k_study.sh"), "--plan"], capture_output=True,
                          text=True, env=env, check=True).stdout
    for seed_bleu, name in enumerate(line.split()[0] for line in plan.splitlines()):
        activation = "relu" if name == "teacher" else name.split("_")[1].rstrip("0123456789")
        segments = int(name.split("_")[1][3:] or 8) if activation == "lma" else 8
        seed = 1 if name == "teacher" else int(name[-1])
        result = synthetic_result("multi30k", 256 if name == "teacher" else 64, activation, seed, 10.0 + seed_bleu,
                                  20.0, tmp_path / "gone" / name, teacher=name == "teacher", segments=segments)
        (results / "runs" / name).mkdir(parents=True)
        (results / "runs" / name / f"{name}.eval.json").write_text(json.dumps(result))

    study = subprocess.run(["bash", str(REPO / "scripts" / "multi30k_study.sh"), "--commit"], capture_output=True,
                           text=True, env=env)
    assert study.returncode == 0, study.stderr
    assert "all runs collected" in study.stdout and "[study] committed" in study.stdout
    assert git("log", "-1", "--format=%s").strip() == "results/multi30k: every run collected"
    committed = set(git("show", "--name-only", "--format=", "HEAD").split())
    assert {"results/multi30k/report.md", "results/multi30k/runs/student64_lma16_seed1/student64_lma16_seed1.eval.json",
            "results/multi30k/segments_multi30k_64.png"} <= committed
    assert "README.md" not in committed and "results/multi30k/READING.md" not in committed
    assert git("diff", "--cached", "--name-only").split() == ["README.md"]  # still staged, not committed
    assert git("diff", "--name-only").split() == ["results/multi30k/READING.md"]
    assert "A reading being edited." in (results / "report.md").read_text()


@pytest.mark.integration
def test_a_kept_result_is_redone_when_its_checkpoint_changed(evaluated, corpus_dir, tmp_path):
    import shutil

    checkpoint, result, out = evaluated
    assert result["inputs"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    copy = tmp_path / "model.pt"
    shutil.copy(checkpoint, copy)
    shutil.copy(out, tmp_path / "model.pt.eval.json")
    evaluate_cmd = [sys.executable, "-m", "onmt_lma.evaluate", "-model", str(copy), "-corpus", str(corpus_dir)]
    kept = subprocess.run(evaluate_cmd, capture_output=True, text=True)
    assert kept.returncode == 0 and "made from these inputs: kept" in kept.stderr
    from onmt_lma.average import average, save

    save(average([checkpoint], float16=True), copy)  # another checkpoint under the same name
    redone = subprocess.run(evaluate_cmd, capture_output=True, text=True)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "checkpoint_sha256 changed): evaluating again" in redone.stderr
    new = json.loads((tmp_path / "model.pt.eval.json").read_text())
    assert new["inputs"]["checkpoint_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()

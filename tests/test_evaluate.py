"""Evaluation: onmt_lma_evaluate and scripts/evaluate.sh on tiny trained checkpoints."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import sacrebleu

from onmt_lma.study import recipes

from conftest import REPO, TINY_SETTINGS, load, run


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
def test_an_int8_evaluation_quantizes_beside_the_checkpoint_and_says_so(evaluated, corpus_dir):
    checkpoint, result, _ = evaluated
    run("onmt_lma_evaluate", "-model", checkpoint, "-corpus", corpus_dir, "-int8")
    int8 = checkpoint.with_suffix(".int8.pt")
    quantized = json.loads(int8.with_name(int8.name + ".eval.json").read_text())
    assert quantized["model"]["quantized"] == "int8" and result["model"]["quantized"] is None
    assert quantized["params"] == result["params"]  # the same model, counted as loaded
    assert quantized["size_mb"] < result["size_mb"] / 2 and quantized["test_sentences"] == 60
    assert 0 <= quantized["bleu"]["score"] <= 100 and math.isfinite(quantized["ppl"])


@pytest.mark.integration
def test_an_export_evaluation_scores_what_the_checkpoint_scores(evaluated, corpus_dir):
    """-engine onnx exports the checkpoint once beside it (CK.onnx/) and evaluates its graphs on ONNX Runtime:
    the same beam-5 translations and, from the decoder step's log-probabilities of the gold tokens, the same
    perplexity as OpenNMT-py's teacher-forced scoring; -int8 evaluates the int8 graphs of that folder;
    -engine native the same folder's weights on the compiled engine, with the same scores."""
    checkpoint, result, out = evaluated
    run("onmt_lma_evaluate", "-model", checkpoint, "-corpus", corpus_dir, "-engine", "onnx")
    folder = checkpoint.parent / f"{checkpoint.name}.onnx"
    exported = json.loads((folder / "manifest.json").read_text())
    onnx = json.loads((folder.parent / f"{folder.name}.eval.json").read_text())
    assert onnx["engine"] == "onnx" and result["engine"] == "pytorch"
    assert onnx["model"]["engine"] == "onnx" and onnx["model"]["activation"] == "lma"
    assert onnx["model"]["quantized"] is None and onnx["model"]["train_steps"] == 12
    assert (folder.parent / f"{folder.name}.eval.hyp.detok.en").read_text() == \
        (out.parent / "model_step_12.pt.eval.hyp.detok.en").read_text()
    assert onnx["bleu"] == result["bleu"] and onnx["chrf"] == result["chrf"]
    assert onnx["ppl_tokens"] == result["ppl_tokens"] and onnx["ppl"] == pytest.approx(result["ppl"], rel=1e-4)
    assert onnx["params"] == result["params"] and onnx["inputs"]["export_sha256"]
    shipped = ["encoder.onnx", "decoder_step.onnx", "src.vocab.json", "tgt.vocab.json", "manifest.json"]
    assert onnx["size_mb"] == pytest.approx(sum((folder / n).stat().st_size for n in shipped) / 2**20)
    assert onnx["memory"]["peak_mb"] > 0 and onnx["speed"]["sentences_per_s"] > 0

    run("onmt_lma_evaluate", "-model", folder, "-corpus", corpus_dir, "-engine", "onnx", "-int8")
    assert json.loads((folder / "manifest.json").read_text()) == exported  # a folder is used as it is
    int8 = json.loads((folder.parent / f"{folder.name}.int8.eval.json").read_text())
    assert int8["model"]["quantized"] == "int8 (ONNX Runtime dynamic)" and int8["engine"] == "onnx"
    assert int8["size_mb"] < onnx["size_mb"] and int8["ppl_tokens"] == onnx["ppl_tokens"]
    assert int8["ppl"] != onnx["ppl"] and int8["ppl"] == pytest.approx(onnx["ppl"], rel=0.1)

    run("onmt_lma_evaluate", "-model", folder, "-corpus", corpus_dir, "-engine", "native")
    native = json.loads((folder.parent / f"{folder.name}.native.eval.json").read_text())
    assert native["engine"] == "native" and native["model"]["engine"] == "native"
    assert native["bleu"] == result["bleu"] and native["chrf"] == result["chrf"]
    assert native["ppl_tokens"] == result["ppl_tokens"] and native["ppl"] == pytest.approx(result["ppl"], rel=1e-4)
    loaded = ["native.safetensors", "src.vocab.json", "tgt.vocab.json", "manifest.json"]  # float32: the runtime
    assert native["size_mb"] == pytest.approx(sum((folder / n).stat().st_size for n in loaded) / 2**20)


@pytest.mark.integration
def test_a_checkpoints_onnx_export_is_made_once_and_again_when_the_checkpoint_changed(evaluated, tmp_path):
    import shutil

    from onmt_lma.base.checkpoint import save
    from onmt_lma.training.average import average
    from onmt_lma.bin.evaluate import export_of

    checkpoint, _, _ = evaluated
    copy = tmp_path / "model.pt"
    shutil.copy(checkpoint, copy)
    folder = export_of(copy, "onnx")
    assert folder == tmp_path / "model.pt.onnx" and not (tmp_path / "model.pt.onnx.partial").exists()
    made = (folder / "manifest.json").stat().st_mtime_ns
    assert export_of(copy, "onnx") == folder and (folder / "manifest.json").stat().st_mtime_ns == made  # kept
    save(average([checkpoint], float16=True), copy)  # another checkpoint under the same name
    assert export_of(copy, "onnx") == folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.parametrize("case, message", [
    ("gpu", "-gpu 0: -engine onnx runs on the CPU"),
    ("no manifest", "a folder without manifest.json; make an export folder with onmt_lma_export"),
    ("folder for pytorch", "is a folder: an onmt_lma_export folder needs -engine native or onnx"),
])
def test_bad_onnx_evaluation_input_is_one_line(evaluated, corpus_dir, tmp_path, case, message):
    checkpoint, _, _ = evaluated
    args = {"gpu": [checkpoint, "-engine", "onnx", "-gpu", "0"], "no manifest": [tmp_path, "-engine", "onnx"],
            "folder for pytorch": [tmp_path]}[case]
    result = run("onmt_lma_evaluate", "-model", *args, "-corpus", corpus_dir, expect_ok=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "translating" not in result.stderr


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

    from onmt_lma.evaluation import test_sets as evaluate

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


@pytest.mark.integration
def test_a_kept_result_is_redone_when_its_checkpoint_changed(evaluated, corpus_dir, tmp_path):
    import shutil

    checkpoint, result, out = evaluated
    assert result["inputs"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    copy = tmp_path / "model.pt"
    shutil.copy(checkpoint, copy)
    shutil.copy(out, tmp_path / "model.pt.eval.json")
    evaluate_cmd = [sys.executable, "-m", "onmt_lma.bin.evaluate", "-model", str(copy), "-corpus", str(corpus_dir)]
    kept = subprocess.run(evaluate_cmd, capture_output=True, text=True)
    assert kept.returncode == 0 and "made from these inputs: kept" in kept.stderr
    from onmt_lma.base.checkpoint import save
    from onmt_lma.training.average import average

    save(average([checkpoint], float16=True), copy)  # another checkpoint under the same name
    redone = subprocess.run(evaluate_cmd, capture_output=True, text=True)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "checkpoint_sha256 changed): evaluating again" in redone.stderr
    new = json.loads((tmp_path / "model.pt.eval.json").read_text())
    assert new["inputs"]["checkpoint_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()

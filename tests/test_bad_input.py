"""Nothing lost, nothing silently wrong: what the commands do with bad or awkward input.

Each case ran through the real commands; each failed before its fix.
"""

import pytest
import torch

from onmt_lma.study import recipes

from conftest import run, train_args

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoint(vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_input")
    run("onmt_lma_train", *train_args(vocab, out / "lma", "-pos_ffn_activation_fn", "lma",
                                      "-train_steps", "4", "-save_checkpoint_steps", "2", "-keep_checkpoint", "-1"))
    return out / "lma_step_4.pt"


# --------------------------------------------------------------------------- #
# Abbreviated options are misspellings
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("command, args, wrong", [
    ("onmt_lma_train", ["-lma_seg", "3"], "-lma_seg"),
    ("onmt_lma_train", ["-kd_alph", "0.5"], "-kd_alph"),
    ("onmt_lma_translate", ["-model", "m.pt", "-src", "s", "-beam", "5"], "-beam"),
    ("onmt_lma_build_vocab", ["-n_samp", "-1"], "-n_samp"),
    ("onmt_lma_distill_data", ["-model", "m.pt", "-src", "s", "-output", "o", "-beam", "5"], "-beam"),
])
def test_an_abbreviated_option_is_refused(command, args, wrong, vocab):
    extra = ["-config", vocab / "config.yaml"] if command in ("onmt_lma_train", "onmt_lma_build_vocab") else []
    result = run(command, *extra, *args, expect_ok=False)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr and wrong in result.stderr


def test_an_abbreviated_key_in_a_yaml_config_is_refused(vocab, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text((vocab / "config.yaml").read_text() + "lma_seg: 3\n")
    result = run("onmt_lma_train", "-config", config, "-save_model", tmp_path / "m", expect_ok=False)
    assert result.returncode == 2 and "lma_seg" in result.stderr


# --------------------------------------------------------------------------- #
# Translation: line-aligned, never clobbered
# --------------------------------------------------------------------------- #
def test_empty_source_lines_keep_their_place(checkpoint, vocab, tmp_path):
    lines = (vocab / "test.de").read_text(encoding="utf-8").splitlines()[:3]
    src = tmp_path / "s.de"
    src.write_text(f"{lines[0]}\n\n{lines[1]}\n   \n{lines[2]}\n", encoding="utf-8")
    run("onmt_lma_translate", "-model", checkpoint, "-src", src, "-output", tmp_path / "h.en", "-beam_size", "2")
    out = (tmp_path / "h.en").read_text(encoding="utf-8").split("\n")
    assert len(out) == 6 and out[-1] == ""  # five lines, each ended by a newline
    assert out[1] == "" and out[3] == "" and all(out[i] for i in (0, 2, 4))
    # the same sentences alone translate to the same lines
    alone = tmp_path / "alone.de"
    alone.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run("onmt_lma_translate", "-model", checkpoint, "-src", alone, "-output", tmp_path / "a.en", "-beam_size", "2")
    assert (tmp_path / "a.en").read_text(encoding="utf-8").splitlines() == [out[0], out[2], out[4]]


def test_n_best_keeps_the_groups_aligned(checkpoint, vocab, tmp_path):
    line = (vocab / "test.de").read_text(encoding="utf-8").splitlines()[0]
    src = tmp_path / "s.de"
    src.write_text(f"\n{line}\n", encoding="utf-8")
    run("onmt_lma_translate", "-model", checkpoint, "-src", src, "-output", tmp_path / "h.en",
        "-beam_size", "3", "-n_best", "2")
    out = (tmp_path / "h.en").read_text(encoding="utf-8").splitlines()
    assert out[:2] == ["", ""] and all(out[2:4]) and len(out) == 4


def test_a_failed_translation_leaves_an_existing_output_as_it_was(checkpoint, vocab, tmp_path):
    output = tmp_path / "h.en"
    output.write_text("earlier hypotheses\n")
    result = run("onmt_lma_translate", "-model", checkpoint, "-src", vocab / "test.de", "-output", output,
                 "-lma_segments", "3", expect_ok=False)
    assert result.returncode == 2 and "lma_segments" in result.stderr
    result = run("onmt_lma_translate", "-model", tmp_path / "missing.pt", "-src", vocab / "test.de",
                 "-output", output, expect_ok=False)
    assert result.returncode != 0
    assert output.read_text() == "earlier hypotheses\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.en"]  # no temporary left behind


def test_output_equal_to_the_source_is_refused_and_the_source_kept(checkpoint, vocab, tmp_path):
    src = tmp_path / "s.de"
    src.write_text((vocab / "test.de").read_text(encoding="utf-8"), encoding="utf-8")
    before = src.read_bytes()
    result = run("onmt_lma_translate", "-model", checkpoint, "-src", src, "-output", src, expect_ok=False)
    assert result.returncode == 2 and "is the -src " in result.stderr and "it would be overwritten" in result.stderr
    assert src.read_bytes() == before


def test_missing_source_and_output_folder_are_one_line_errors(checkpoint, tmp_path):
    result = run("onmt_lma_translate", "-model", checkpoint, "-src", tmp_path / "none.de", "-output",
                 tmp_path / "h.en", expect_ok=False)
    assert result.returncode == 2 and "none.de: no such file" in result.stderr and "Traceback" not in result.stderr
    src = tmp_path / "s.de"
    src.write_text("ein Hund\n")
    result = run("onmt_lma_translate", "-model", checkpoint, "-src", src, "-output", tmp_path / "no" / "h.en",
                 expect_ok=False)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- #
# Checkpoints: saved atomically, a truncated one is skipped on resumption
# --------------------------------------------------------------------------- #
def test_checkpoints_are_renamed_into_place_and_a_truncated_one_is_skipped(checkpoint, tmp_path):
    folder = checkpoint.parent
    assert not [p.name for p in folder.iterdir() if "partial" in p.name]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for step in (2, 4):
        (run_dir / f"model_step_{step}.pt").write_bytes((folder / f"lma_step_{step}.pt").read_bytes())
    data = (run_dir / "model_step_4.pt").read_bytes()
    (run_dir / "model_step_4.pt").write_bytes(data[: len(data) // 2])  # a kill during a save, before the fix
    assert recipes.latest_readable_checkpoint(run_dir) == run_dir / "model_step_2.pt"


# --------------------------------------------------------------------------- #
# Non-finite training stops, naming the step, and saves nothing
# --------------------------------------------------------------------------- #
def test_a_non_finite_loss_stops_training_before_any_checkpoint(vocab, tmp_path):
    from onmt_lma.training.distill import check_finite_loss, NonFiniteTrainingError

    with pytest.raises(NonFiniteTrainingError, match="not finite at step 7 .*NLL nan"):
        check_finite_loss(torch.tensor(float("nan")), 7, {"NLL": float("nan")})
    check_finite_loss(torch.tensor(3.0), 7, {"NLL": 3.0})  # a finite loss passes
    # a learning rate of 1e30 turns the weights to inf/NaN within a few steps
    result = run("onmt_lma_train", *train_args(vocab, tmp_path / "m", "-learning_rate", "1e30",
                                               "-train_steps", "6", "-save_checkpoint_steps", "2"),
                 expect_ok=False)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("onmt_lma_train: error: ") and ("not finite at step" in last or "inf or NaN" in last)
    assert not list(tmp_path.glob("m_step_*.pt"))


# --------------------------------------------------------------------------- #
# Evaluation refuses a checkpoint that does not fit the corpus
# --------------------------------------------------------------------------- #
def test_evaluation_refuses_a_checkpoint_of_another_corpus(checkpoint, vocab, tmp_path):
    import shutil
    import subprocess
    import sys

    from onmt_lma.evaluation import test_sets as evaluate

    corpus = tmp_path / "pieces"
    corpus.mkdir()
    for name in ("test.en", "test.ref.tok.en", "test.ref.detok.en"):
        shutil.copy(vocab / "test.en", corpus / name)
    (corpus / "manifest.json").write_text('{"corpus": "pieces", "options": {"subword": "sentencepiece"}}')
    # the same sentences as SentencePiece would cut them: almost no piece is a word of the model
    words = (vocab / "test.de").read_text(encoding="utf-8").split("\n")
    (corpus / "test.de").write_text("\n".join(" ".join("▁" + w[:3] for w in line.split()) for line in words),
                                    encoding="utf-8")
    with pytest.raises(evaluate.CorpusMismatchError, match="tokens of its source are not in its source vocabulary"):
        evaluate.check_vocabulary(checkpoint, evaluate.prepared_test_set(corpus))
    own = tmp_path / "own"
    own.mkdir()
    for name in ("test.de", "test.en", "test.ref.tok.en", "test.ref.detok.en"):
        shutil.copy(vocab / name.replace(".ref.tok", "").replace(".ref.detok", ""), own / name)
    (own / "manifest.json").write_text('{"corpus": "tiny", "options": {"subword": "none"}}')
    evaluate.check_vocabulary(checkpoint, evaluate.prepared_test_set(own))  # its own corpus passes
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, "-m", "onmt_lma.bin.evaluate", "-model", str(checkpoint), "-corpus",
                             str(corpus), "-out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and "does not fit test set" in result.stderr and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["-beam_size", "0"], "-beam_size 0: expected an integer >= 1"),
    (["-beam_size", "2", "-n_best", "3"], "-n_best 3: expected an integer from 1 to -beam_size 2"),
])
def test_impossible_beams_are_one_line_errors(checkpoint, vocab, tmp_path, args, message):
    result = run("onmt_lma_translate", "-model", checkpoint, "-src", vocab / "test.de", "-output", tmp_path / "h",
                 *args, expect_ok=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_source_that_is_not_utf8_names_the_file_and_line(checkpoint, tmp_path):
    src = tmp_path / "s.de"
    src.write_bytes(b"ein Hund\n\xff\xfe kaputt\n")
    result = run("onmt_lma_translate", "-model", checkpoint, "-src", src, "-output", tmp_path / "h",
                 expect_ok=False)
    assert result.returncode == 2 and "s.de, line 2: not UTF-8" in result.stderr and "Traceback" not in result.stderr


def test_a_teacher_folder_is_named_as_a_folder(vocab, tmp_path):
    result = run("onmt_lma_train", *train_args(vocab, tmp_path / "m", "-kd_teacher", tmp_path), expect_ok=False)
    assert result.returncode == 2 and "is a folder; give its model_step_N.pt file" in result.stderr


def test_build_vocab_refuses_an_existing_vocabulary_before_counting(tmp_path):
    (tmp_path / "t.de").write_text("ein Hund\n")
    (tmp_path / "t.en").write_text("a dog\n")
    (tmp_path / "v.de").write_text("kept\t1\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"save_data: {tmp_path}/run\nsrc_vocab: {tmp_path}/v.de\ntgt_vocab: {tmp_path}/v.en\n"
                      f"data:\n  corpus_1: {{path_src: {tmp_path}/t.de, path_tgt: {tmp_path}/t.en}}\n")
    result = run("onmt_lma_build_vocab", "-config", config, "-n_sample", "-1", expect_ok=False)
    assert result.returncode == 2 and "v.de exists: remove it, or give -overwrite" in result.stderr
    assert "Traceback" not in result.stderr and (tmp_path / "v.de").read_text() == "kept\t1\n"
    run("onmt_lma_build_vocab", "-config", config, "-n_sample", "-1", "-overwrite")
    assert "Hund" in (tmp_path / "v.de").read_text()


def test_an_empty_source_gives_an_empty_output_and_still_checks_the_model(checkpoint, tmp_path):
    src = tmp_path / "empty.de"
    src.write_text("")
    run("onmt_lma_translate", "-model", checkpoint, "-src", src, "-output", tmp_path / "h")
    assert (tmp_path / "h").read_text() == ""
    result = run("onmt_lma_translate", "-model", tmp_path / "none.pt", "-src", src, "-output", tmp_path / "h2",
                 expect_ok=False)
    assert result.returncode == 2 and "none.pt" in result.stderr and not (tmp_path / "h2").exists()

"""Distillation end to end on real German-English data: tiny teachers, a few steps."""

import os
import signal
import subprocess
import time

import pytest

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.bin import train as train_cli

from conftest import BIN, NO_DROPOUT, activation_state, load, record_losses, run, train_args

pytestmark = pytest.mark.integration

def train_in_process(*args):
    train_cli.main(list(map(str, args)))


def test_lma_student_distils_from_the_teacher_and_translates(vocab, teacher, tmp_path):
    log = tmp_path / "student.log"
    run("onmt_lma_train", *train_args(
        vocab, tmp_path / "student", "-pos_ffn_activation_fn", "lma", "-kd_teacher", teacher,
        "-train_steps", "10", "-save_checkpoint_steps", "10", "-valid_steps", "10",
        "-report_every", "5", "-log_file", log))
    text = log.read_text()
    assert "Distilling from teacher" in text
    step_lines = [line for line in text.splitlines() if "Step 10/" in line]
    assert step_lines and "kd_kl:" in step_lines[0] and "xent:" in step_lines[0]
    assert "Validation perplexity" in text
    checkpoint = load(tmp_path / "student_step_10.pt")
    assert checkpoint["opt"].kd_teacher == str(teacher) and checkpoint["opt"].kd_alpha == 0.7
    assert len(activation_state(checkpoint)) == 12
    output = tmp_path / "hyp.en"
    run("onmt_lma_translate", "-model", tmp_path / "student_step_10.pt", "-src", vocab / "test.de",
        "-output", output, "-beam_size", "5", "-max_length", "30")
    assert len(output.read_text().splitlines()) == 12


def test_alpha_zero_trains_exactly_like_no_teacher(vocab, teacher, tmp_path, monkeypatch):
    records = record_losses(monkeypatch)
    common = ("-pos_ffn_activation_fn", "lma", "-train_steps", "6", "-save_checkpoint_steps", "6")
    train_in_process(*train_args(vocab, tmp_path / "plain", *common))
    plain = [loss for loss, _, _ in records]
    records.clear()
    train_in_process(*train_args(vocab, tmp_path / "alpha0", *common, "-kd_teacher", teacher,
                                 "-kd_alpha", "0"))
    with_teacher = [loss for loss, _, _ in records]
    assert all(kd is not None and kd > 0 for _, kd, _ in records)  # the teacher did run
    assert len(plain) == 6 and with_teacher == plain


def test_a_teacher_identical_to_the_student_has_no_kd_part(vocab, teacher, tmp_path, monkeypatch):
    records = record_losses(monkeypatch)
    train_in_process(*train_args(vocab, tmp_path / "same", "-train_from", teacher, "-kd_teacher",
                                 teacher, "-train_steps", "12", "-save_checkpoint_steps", "12",
                                 *NO_DROPOUT))
    _, first_kd, first_words = records[0]
    assert abs(first_kd) / first_words < 1e-6
    assert records[-1][1] / records[-1][2] > 1e-6  # the student then moves away


def test_teacher_with_other_vocabularies_is_refused_before_training(vocab, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text((vocab / "config.yaml").read_text().replace(
        f"src_vocab: {vocab}/vocab.de", f"src_vocab: {tmp_path}/small.de").replace(
        f"tgt_vocab: {vocab}/vocab.en", f"tgt_vocab: {tmp_path}/small.en"))
    run("onmt_lma_build_vocab", "-config", other, "-n_sample", "50")
    run("onmt_lma_train", "-config", other, *train_args(vocab, tmp_path / "small")[2:],
        "-train_steps", "2", "-save_checkpoint_steps", "2")
    result = run("onmt_lma_train", *train_args(vocab, tmp_path / "student", "-kd_teacher",
                                               tmp_path / "small_step_2.pt", "-train_steps", "2"),
                 expect_ok=False)
    assert result.returncode == 2
    assert "its source vocabulary (" in result.stderr and "differs from the student's (" in result.stderr
    assert "Traceback" not in result.stderr and " Step " not in result.stderr
    assert not list(tmp_path.glob("student_step_*.pt"))


def test_a_teacher_that_is_not_a_checkpoint_is_refused(vocab, tmp_path):
    fake = tmp_path / "teacher.pt"
    fake.write_text("not a checkpoint")
    result = run("onmt_lma_train", *train_args(vocab, tmp_path / "student", "-kd_teacher", fake,
                                               "-train_steps", "2"), expect_ok=False)
    assert result.returncode == 2
    assert "teacher.pt' is not a readable OpenNMT-py checkpoint" in result.stderr


def test_sequence_level_data_resumes_after_a_kill(vocab, teacher, tmp_path):
    source = tmp_path / "source.de"  # 160 lines: killed after 40, the rest resumed
    source.write_text("".join(line + "\n" for line in (vocab / "train.de").read_text().splitlines()[:160]))
    n_lines = 160
    reference = tmp_path / "reference.en"
    args = ["-model", teacher, "-src", source, "-max_length", "30", "-beam_size", "5"]
    run("onmt_lma_distill_data", *args, "-output", reference, "-chunk_lines", "4")
    assert len(reference.read_text().splitlines()) == n_lines

    output = tmp_path / "distilled.en"
    partial = tmp_path / "distilled.en.partial"
    process = subprocess.Popen(
        [str(BIN / "onmt_lma_distill_data"), *map(str, args), "-output", str(output),
         "-chunk_lines", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if partial.exists() and len(partial.read_bytes().splitlines()) >= 40:
            break
        time.sleep(0.02)
    assert process.poll() is None, "finished before it could be killed: make the run longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()
    finished = len(partial.read_bytes().split(b"\n")) - 1
    assert 40 <= finished < n_lines

    result = run("onmt_lma_distill_data", *args, "-output", output, "-chunk_lines", "4")
    assert f"({n_lines - finished} lines translated by this run)" in result.stderr
    assert output.read_text() == reference.read_text()
    assert not partial.exists()
    # a rerun with another beam (or source, or teacher) does not call the output complete
    other = [*args[:-1], "4"]
    result = run("onmt_lma_distill_data", *other, "-output", output, expect_ok=False)
    assert result.returncode == 2 and "was made from other inputs" in result.stderr and "beam_size" in result.stderr

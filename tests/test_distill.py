"""Knowledge distillation: the loss as a pure function, options, statistics, sequence-level files."""

import json
import math

import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.bin import train as train_cli
from onmt_lma.training.distill import distillation_loss, DistillationStatistics
from onmt_lma.training.seqkd import distill_corpus, DistillDataError

from conftest import TINY_MODEL_ARGS

PAD = 1


def direct_kd_loss(student, teacher, target, alpha, temperature, smoothing):
    """The formula token by token in float64: (1-A) NLL_ls + A T^2 KL(p_t || p_s) at temperature T."""
    nll = kl = 0.0
    vocab = student.size(1)
    for s, t, y in zip(student.double().tolist(), teacher.double().tolist(), target.tolist()):
        if y == PAD:
            continue
        log_z = math.log(sum(math.exp(v) for v in s))
        log_p = [v - log_z for v in s]
        nll += -(1 - smoothing) * log_p[y] - smoothing / vocab * sum(log_p)
        zs = math.log(sum(math.exp(v / temperature) for v in s))
        zt = math.log(sum(math.exp(v / temperature) for v in t))
        for sv, tv in zip(s, t):
            log_ps, log_pt = sv / temperature - zs, tv / temperature - zt
            kl += math.exp(log_pt) * (log_pt - log_ps)
    return (1 - alpha) * nll + alpha * temperature**2 * kl, nll, kl


@pytest.mark.parametrize("alpha, temperature, smoothing",
                         [(0.7, 1.0, 0.0), (0.5, 1.0, 0.1), (0.3, 2.0, 0.1), (1.0, 0.5, 0.0)])
def test_loss_matches_a_direct_computation_with_padding(alpha, temperature, smoothing):
    torch.manual_seed(0)
    student = torch.randn(9, 7, dtype=torch.double) * 2
    teacher = torch.randn(9, 7, dtype=torch.double) * 2
    target = torch.tensor([3, 0, PAD, 6, 2, PAD, PAD, 4, 5])
    loss, nll, kl = distillation_loss(student, teacher, target, PAD, alpha, temperature, smoothing)
    expected = direct_kd_loss(student, teacher, target, alpha, temperature, smoothing)
    for got, want in zip((loss, nll, kl), expected):
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_gradient_matches_the_direct_formula():
    torch.manual_seed(1)
    student = (torch.randn(5, 6, dtype=torch.double)).requires_grad_()
    teacher = torch.randn(5, 6, dtype=torch.double)
    target = torch.tensor([0, 2, 3, 4, 5])
    target[1] = PAD
    loss, _, _ = distillation_loss(student, teacher, target, PAD, 0.7, 2.0)
    (grad,) = torch.autograd.grad(loss, student)
    # d/ds of (1-A) CE + A T^2 KL(p_t || softmax(s/T)) = (1-A)(p - onehot) + A T (p_s^T - p_t^T)
    p = torch.softmax(student.detach(), -1)
    onehot = torch.nn.functional.one_hot(target, 6).double()
    expected = 0.3 * (p - onehot) + 0.7 * 2.0 * (
        torch.softmax(student.detach() / 2, -1) - torch.softmax(teacher / 2, -1)
    )
    expected[1] = 0  # padding
    torch.testing.assert_close(grad, expected)


def test_alpha_zero_is_the_plain_nll_and_a_copy_of_the_student_has_no_kd():
    torch.manual_seed(2)
    student = torch.randn(6, 10)
    target = torch.tensor([2, 3, PAD, 4, 5, 9])
    loss, nll, kl = distillation_loss(student, torch.randn(6, 10), target, PAD, 0.0, 1.0, 0.1)
    plain = torch.nn.functional.cross_entropy(
        student, target, ignore_index=PAD, reduction="sum", label_smoothing=0.1
    )
    assert loss.item() == plain.item() == nll.item()
    _, _, kl_same = distillation_loss(student, student.clone(), target, PAD, 0.7, 1.0)
    assert abs(kl_same.item()) < 1e-5


def test_statistics_sum_and_report_the_kd_part(caplog):
    total = DistillationStatistics()
    total.update(DistillationStatistics(loss=4.0, n_batchs=1, n_sents=2, n_words=8, n_correct=3, kd_loss=2.0))
    total.update(DistillationStatistics(loss=2.0, n_batchs=1, n_sents=2, n_words=4, n_correct=1, kd_loss=1.0))
    assert total.kd_loss == 3.0 and total.kd_kl() == 0.25 and total.xent() == 0.5
    import logging

    from onmt.utils.logging import logger

    logger.propagate = True
    with caplog.at_level(logging.INFO):
        total.output(10, 100, 0.001, total.start_time)
    assert "xent: 0.5" in caplog.text and "kd_kl: 0.25" in caplog.text
    assert total.computed_metrics == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["-kd_alpha", "1.5"], "kd_alpha: expected a number in [0, 1], got '1.5'"),
        (["-kd_alpha", "-0.1"], "kd_alpha: expected a number in [0, 1], got '-0.1'"),
        (["-kd_temperature", "0"], "kd_temperature: expected a number in (0, 1000], got '0'"),
        (["-kd_temperature", "-2"], "kd_temperature: expected a number in (0, 1000], got '-2'"),
        (["-kd_temperature", "1e30"], "kd_temperature: expected a number in (0, 1000], got '1e30'"),
        (["-kd_teacher", "no/such/teacher.pt"], "teacher checkpoint 'no/such/teacher.pt' does not exist"),
    ],
)
def test_bad_distillation_options_fail_at_parse_time(args, message, tiny_corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(
            ["-config", str(tiny_corpus / "config.yaml"), "-save_model", "unused", *TINY_MODEL_ARGS, *args]
        )
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# Sequence-level KD files
# --------------------------------------------------------------------------- #
class FakeTeacher:
    """Upper-cases lines; raises KeyboardInterrupt (a kill) when its budget of calls is spent."""

    def __init__(self, calls_before_kill=None):
        self.calls_before_kill = calls_before_kill
        self.seen = []

    def __call__(self, lines):
        if self.calls_before_kill is not None:
            if self.calls_before_kill == 0:
                raise KeyboardInterrupt
            self.calls_before_kill -= 1
        self.seen.extend(lines)
        return [line.upper() for line in lines]


def test_one_line_per_input_line_empty_lines_included(tmp_path):
    src = tmp_path / "train.de"
    src.write_text("ein haus\n\nzwei\n  \ndrei häuser\n", encoding="utf-8")
    out = tmp_path / "train.distilled.en"
    teacher = FakeTeacher()
    assert distill_corpus(str(src), str(out), teacher, chunk_lines=2, progress=False) == 5
    assert out.read_text(encoding="utf-8").split("\n") == ["EIN HAUS", "", "ZWEI", "", "DREI HÄUSER", ""]
    assert teacher.seen == ["ein haus", "zwei", "drei häuser"]  # empty lines are not sent
    assert not (tmp_path / "train.distilled.en.partial").exists()
    assert distill_corpus(str(src), str(out), FakeTeacher(0), progress=False) == 0  # complete: no work


def test_resumes_after_an_interruption_without_redoing_lines(tmp_path):
    src = tmp_path / "train.de"
    lines = [f"satz {i}" for i in range(23)]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "distilled.en"
    with pytest.raises(KeyboardInterrupt):
        distill_corpus(str(src), str(out), FakeTeacher(calls_before_kill=2), chunk_lines=5, progress=False)
    partial = tmp_path / "distilled.en.partial"
    assert not out.exists()
    assert partial.read_text().splitlines() == [line.upper() for line in lines[:10]]
    with open(partial, "a") as handle:  # a write torn by the kill
        handle.write("SATZ 10 (torn")
    resumed = FakeTeacher()
    assert distill_corpus(str(src), str(out), resumed, chunk_lines=5, progress=False) == 13
    assert resumed.seen == lines[10:]
    assert out.read_text().splitlines() == [line.upper() for line in lines]
    assert not partial.exists()


def test_bad_inputs_are_clear_errors(tmp_path):
    src = tmp_path / "src.de"
    src.write_text("a\nb\nc\n")
    out = tmp_path / "out.en"
    out.write_text("A\n")
    with pytest.raises(DistillDataError, match=r"out\.en exists with 1 lines but .*src\.de has 3"):
        distill_corpus(str(src), str(out), FakeTeacher(), progress=False)
    out.unlink()
    (tmp_path / "out.en.partial").write_text("A\nB\nC\nD\n")
    with pytest.raises(DistillDataError, match=r"holds 4 lines but .* has only 3"):
        distill_corpus(str(src), str(out), FakeTeacher(), progress=False)
    bad = tmp_path / "bad.de"
    bad.write_bytes(b"gut\n\xff\xfe kaputt\n")
    with pytest.raises(DistillDataError, match=r"bad\.de, line 2: not UTF-8"):
        distill_corpus(str(bad), str(tmp_path / "x.en"), FakeTeacher(), progress=False)
    with pytest.raises(DistillDataError, match="returned 0 lines for 3"):
        distill_corpus(str(src), str(tmp_path / "y.en"), lambda lines: [], progress=False)


def test_a_partial_or_finished_output_of_other_inputs_is_refused(tmp_path):
    src = tmp_path / "src.de"
    src.write_text("a\nb\nc\nd\n")
    out = tmp_path / "out.en"
    with pytest.raises(KeyboardInterrupt):
        distill_corpus(str(src), str(out), FakeTeacher(calls_before_kill=1), chunk_lines=2, progress=False,
                       made_from={"models_sha256": ["m1"]})
    assert (tmp_path / "out.en.partial").read_text() == "A\nB\n"
    other = tmp_path / "other.de"
    other.write_text("w\nx\ny\nz\n")  # same length, other content
    with pytest.raises(DistillDataError, match=r"out\.en\.partial was made from other inputs \(src_sha256"):
        distill_corpus(str(other), str(out), FakeTeacher(), progress=False, made_from={"models_sha256": ["m1"]})
    with pytest.raises(DistillDataError, match=r"models_sha256 \['m1'\] then, \['m2'\] now"):
        distill_corpus(str(src), str(out), FakeTeacher(), progress=False, made_from={"models_sha256": ["m2"]})
    # the same inputs resume, and the record moves beside the finished file
    assert distill_corpus(str(src), str(out), FakeTeacher(), progress=False, made_from={"models_sha256": ["m1"]}) == 2
    assert json.loads((tmp_path / "out.en.json").read_text())["models_sha256"] == ["m1"]
    with pytest.raises(DistillDataError, match=r"out\.en was made from other inputs"):
        distill_corpus(str(other), str(out), FakeTeacher(), progress=False, made_from={"models_sha256": ["m1"]})
    with pytest.raises(DistillDataError, match="is the -src file"):
        distill_corpus(str(src), str(src), FakeTeacher(), progress=False)

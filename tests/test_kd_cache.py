"""Distillation from a stored top-K teacher cache: the loss over a support, keys, building, bad input."""

import json
import math
import os

import numpy as np
import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.training import kd_cache, kd_cache_build
from onmt_lma.bin import teacher_cache as cache_cli
from onmt_lma.bin import train as train_cli
from onmt_lma.training.distill import distillation_loss

from conftest import NO_DROPOUT, load, record_losses, run, train_args

PAD = 1


# --------------------------------------------------------------------------- #
# The loss over a top-K support
# --------------------------------------------------------------------------- #
def direct_top_k_loss(student, teacher, ids, target, alpha, temperature):
    """float64, token by token: teacher renormalized over its K ids, the student's full log-probs there."""
    nll = kl = 0.0
    for s, t, support, y in zip(student.double().tolist(), teacher.double().tolist(), ids.tolist(), target.tolist()):
        if y == PAD:
            continue
        nll -= s[y] - math.log(sum(math.exp(v) for v in s))
        z_s = math.log(sum(math.exp(v / temperature) for v in s))
        z_t = math.log(sum(math.exp(v / temperature) for v in t))
        for value, token in zip(t, support):
            log_pt = value / temperature - z_t
            kl += math.exp(log_pt) * (log_pt - (s[token] / temperature - z_s))
    return (1 - alpha) * nll + alpha * temperature**2 * kl, nll, kl


@pytest.mark.parametrize("alpha, temperature", [(0.7, 1.0), (0.4, 2.0)])
def test_top_k_loss_matches_a_direct_computation(alpha, temperature):
    torch.manual_seed(0)
    student = torch.randn(7, 11, dtype=torch.double) * 2
    teacher_full = torch.log_softmax(torch.randn(7, 11, dtype=torch.double) * 2, -1)
    teacher, ids = teacher_full.topk(4, dim=-1)
    target = torch.tensor([3, PAD, 0, 6, 2, PAD, 9])
    got = distillation_loss(student, teacher, target, PAD, alpha, temperature, teacher_ids=ids)
    want = direct_top_k_loss(student, teacher, ids, target, alpha, temperature)
    for value, expected in zip(got, want):
        assert value.item() == pytest.approx(expected, rel=1e-6)  # the loss computes in float32


def test_the_whole_vocabulary_as_support_is_the_online_loss_and_gradient():
    torch.manual_seed(1)
    student = torch.randn(6, 9, dtype=torch.double, requires_grad=True)
    teacher_logits = torch.randn(6, 9, dtype=torch.double) * 3
    target = torch.tensor([2, 4, PAD, 0, 8, 5])
    online, _, _ = distillation_loss(student, teacher_logits, target, PAD, 0.7, 2.0, 0.1)
    log_probs, ids = torch.log_softmax(teacher_logits, -1).topk(9, dim=-1)  # every id, in another order
    cached, _, _ = distillation_loss(student, log_probs, target, PAD, 0.7, 2.0, 0.1, teacher_ids=ids)
    (g_online,) = torch.autograd.grad(online, student)
    (g_cached,) = torch.autograd.grad(cached, student)
    assert cached.item() == pytest.approx(online.item(), rel=1e-6)
    torch.testing.assert_close(g_cached, g_online, rtol=1e-5, atol=1e-6)


def test_top_k_loss_gradient_is_the_formula():
    """d/ds of (1-A) CE + A T^2 sum_K p_t (log p_t - log q(s/T)) = (1-A)(p - onehot) + A T (q_T - p_t scattered)."""
    torch.manual_seed(2)
    student = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    values, ids = torch.log_softmax(torch.randn(4, 6, dtype=torch.double), -1).topk(3, dim=-1)
    target = torch.tensor([2, PAD, 5, 3])
    loss, _, _ = distillation_loss(student, values, target, PAD, 0.6, 1.5, teacher_ids=ids)
    (grad,) = torch.autograd.grad(loss, student)
    s = student.detach()
    teacher = torch.zeros_like(s).scatter(-1, ids, torch.softmax(values / 1.5, -1))
    expected = 0.4 * (torch.softmax(s, -1) - torch.nn.functional.one_hot(target, 6).double()) + 0.6 * 1.5 * (
        torch.softmax(s / 1.5, -1) - teacher)
    expected[1] = 0  # padding
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# Keys: OpenNMT-py's line numbers back to file lines
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_reported_line_numbers_map_back_to_file_lines(tmp_path, stride):
    """Against OpenNMT-py's own reader: every line read once, each key pointing at its own text."""
    from onmt.inputters.text_corpus import ParallelCorpus, ParallelCorpusIterator
    from onmt.transforms import TransformPipe

    lines = [f"w{i} x" for i in range(40)]
    for side in ("src", "tgt"):
        (tmp_path / side).write_text("\n".join(lines) + "\n")
    corpus = ParallelCorpus("c", str(tmp_path / "src"), str(tmp_path / "tgt"))
    seen = []
    for offset in range(stride):
        reader = ParallelCorpusIterator(corpus, TransformPipe.build_from([]), stride=stride, offset=offset)
        for example, _, _ in reader:
            line = kd_cache.real_line(example["cid_line_number"], stride)
            assert example["src"] == lines[line].split(" ")
            seen.append(line)
    assert sorted(seen) == list(range(len(lines)))


# --------------------------------------------------------------------------- #
# Building and training, on real text
# --------------------------------------------------------------------------- #
def target_vocab_size(checkpoint):
    return len(load(checkpoint)["vocab"]["tgt"])


def build(corpus, teacher, out, *extra):
    cache_cli.main(["-config", str(corpus / "config.yaml"), "-model", str(teacher), "-out", str(out),
                    *map(str, extra)])
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def full_cache(vocab, teacher, tmp_path_factory):
    """K = the whole target vocabulary, float32: the cache must then be the online teacher."""
    size = target_vocab_size(teacher)
    out = tmp_path_factory.mktemp("full_cache")
    manifest = build(vocab, teacher, out, "-topk", size, "-cache_dtype", "float32", "-shard_lines", 300)
    assert manifest["complete"] and manifest["vocab_size"] == size
    return out


def student_steps(vocab, save, *extra):
    train_cli.main([str(a) for a in train_args(vocab, save, "-pos_ffn_activation_fn", "lma", "-train_steps", "6",
                                                "-save_checkpoint_steps", "6", *NO_DROPOUT, *extra)])


@pytest.mark.integration
def test_a_full_vocabulary_cache_trains_exactly_like_the_online_teacher(vocab, teacher, full_cache, tmp_path,
                                                                         monkeypatch):
    records = record_losses(monkeypatch)
    student_steps(vocab, tmp_path / "online", "-kd_teacher", teacher)
    online = list(records)
    records.clear()
    student_steps(vocab, tmp_path / "cached", "-kd_cache", full_cache)
    cached = list(records)
    assert len(online) == len(cached) == 6
    for (loss_o, kd_o, _), (loss_c, kd_c, _) in zip(online, cached):
        assert loss_c == pytest.approx(loss_o, rel=1e-4) and kd_c == pytest.approx(kd_o, rel=1e-3)
    weights_o, weights_c = load(tmp_path / "online_step_6.pt")["model"], load(tmp_path / "cached_step_6.pt")["model"]
    for name, value in weights_o.items():
        torch.testing.assert_close(weights_c[name], value, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.integration
def test_a_top_8_float16_cache_is_close_and_data_loader_workers_find_their_lines(vocab, teacher, tmp_path,
                                                                                 monkeypatch):
    manifest = build(vocab, teacher, tmp_path / "top8", "-topk", 8)
    assert manifest["dtype"] == "float16" and manifest["id_dtype"] == "uint16"
    ids = np.load(tmp_path / "top8" / "corpus_1.000000.ids.npy")
    assert ids.dtype == np.uint16 and ids.shape[1] == 8
    records = record_losses(monkeypatch)
    # two data-loader workers: lines come numbered with stride 2, every one must find its own entry
    student_steps(vocab, tmp_path / "top8_student", "-kd_cache", tmp_path / "top8", "-num_workers", "2")
    assert len(records) == 6 and all(math.isfinite(loss) and kd > 0 for loss, kd, _ in records)


@pytest.mark.integration
def test_an_interrupted_build_resumes_at_its_first_missing_shard(vocab, teacher, full_cache, tmp_path, monkeypatch):
    size = target_vocab_size(teacher)
    args = ["-topk", size, "-cache_dtype", "float32", "-shard_lines", 300]
    written = []
    write_shard = kd_cache_build.write_shard

    def interrupted(folder, stem, *rest):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(stem)
        return write_shard(folder, stem, *rest)

    monkeypatch.setattr(kd_cache_build, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(vocab, teacher, tmp_path / "cache", *args)
    assert not (tmp_path / "cache").exists()  # nothing half-built looks like a cache: it is in cache.partial
    manifest = json.loads((tmp_path / "cache.partial" / "manifest.json").read_text())
    assert not manifest["complete"] and sorted(manifest["shards"]["corpus_1"]) == ["0", "1"]
    written.clear()
    monkeypatch.setattr(kd_cache_build, "write_shard", lambda *a: (written.append(a[1]), write_shard(*a))[1])
    build(vocab, teacher, tmp_path / "cache", *args)
    assert written == ["corpus_1.000002"]  # 800 lines in shards of 300: only the third was left
    assert not (tmp_path / "cache.partial").exists() and json.loads((tmp_path / "cache" / "manifest.json").read_text())[
        "complete"]
    for name in sorted(os.listdir(full_cache)):
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "cache" / name), np.load(full_cache / name))


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
def train_fails(vocab, tmp_path, *extra):
    result = run("onmt_lma_train", *train_args(vocab, tmp_path / "student", "-train_steps", "2", *extra),
                 expect_ok=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not list(tmp_path.glob("student_step_*.pt"))
    return result.stderr


@pytest.mark.integration
def test_a_cache_of_another_corpus_or_a_truncated_shard_is_refused_before_training(vocab, teacher, full_cache,
                                                                                   tmp_path):
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    for name in ("train.de", "valid.de", "valid.en"):
        shutil.copy(vocab / name, other / name)
    (other / "train.en").write_text((vocab / "train.en").read_text().replace(" the ", " a ", 1))
    config = (vocab / "config.yaml").read_text()
    for name in ("train.de", "train.en"):
        config = config.replace(f"{vocab}/{name}", f"{other}/{name}")
    (other / "config.yaml").write_text(config)
    stderr = train_fails(vocab, tmp_path, "-config", other / "config.yaml", "-kd_cache", full_cache)
    assert "train.en is not the file the cache was made from (sha256 differs)" in stderr

    broken = tmp_path / "broken"
    shutil.copytree(full_cache, broken)
    shard = broken / "corpus_1.000001.logprobs.npy"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    stderr = train_fails(vocab, tmp_path, "-kd_cache", broken)
    assert "corpus_1.000001.logprobs.npy: missing, truncated or damaged" in stderr

    stderr = train_fails(vocab, tmp_path, "-kd_cache", full_cache, "-kd_teacher", teacher)
    assert "-kd_teacher and -kd_cache both given" in stderr
    stderr = train_fails(vocab, tmp_path, "-kd_cache", tmp_path / "nothing")
    assert "no manifest.json there; build it with onmt_lma_teacher_cache" in stderr


@pytest.mark.integration
def test_bad_builds_are_clear_errors(vocab, teacher, full_cache, tmp_path):
    def fails(*args):
        result = run("onmt_lma_teacher_cache", "-config", vocab / "config.yaml", *args, expect_ok=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stderr

    assert "-topk 100000 is larger than the target vocabulary (" in fails("-model", teacher, "-out", tmp_path / "c",
                                                                          "-topk", "100000")
    # the full cache holds K = vocabulary; asking for K = 8 into it is another cache
    assert "holds a cache made from other inputs (-topk" in fails("-model", teacher, "-out", full_cache,
                                                                   "-topk", "8")
    assert "teacher checkpoint does not exist" in fails("-model", tmp_path / "none.pt", "-out", tmp_path / "c")
    assert "expected an integer >= 1, got '0'" in fails("-model", teacher, "-out", tmp_path / "c", "-topk", "0")


@pytest.mark.integration
def test_an_example_whose_tokens_changed_is_an_error_not_a_wrong_teacher(vocab, full_cache):
    cache = kd_cache.TeacherCache(str(full_cache))
    manifest = cache.manifest
    entries = cache.entries["corpus_1"]
    line = int(np.flatnonzero(entries.shard >= 0)[5])
    shard = cache.shards[("corpus_1", int(entries.shard[line]))]
    start, length = int(entries.start[line]), int(entries.length[line])
    targets = [int(t) for t in shard["targets"][start:start + length]]
    src = torch.tensor([[[5], [6], [7]]])  # not the line's source
    batch = {"tgt": torch.tensor([[2] + targets]).unsqueeze(-1), "src": src, "srclen": torch.tensor([3]),
             "cid": ["corpus_1"], "cid_line_number": [line]}
    with pytest.raises(kd_cache.TeacherCacheError, match=f"corpus 'corpus_1' line {line + 1} is not the example"):
        cache.lookup(batch, PAD)
    batch["cid_line_number"] = [manifest["corpora"]["corpus_1"]["lines"] + 5]
    with pytest.raises(kd_cache.TeacherCacheError, match="is not in the cache"):
        cache.lookup(batch, PAD)


@pytest.mark.integration
def test_students_of_a_study_build_the_cache_once_and_share_it(corpus_dir, teacher, tmp_path):
    from conftest import TINY_SETTINGS
    from onmt_lma.study import sequential

    settings = list(TINY_SETTINGS.items()) + [("train_steps", 2), ("save_checkpoint_steps", 2), ("valid_steps", 2)]
    shared_teacher = tmp_path / "teacher" / teacher.name
    shared_teacher.parent.mkdir()
    shared_teacher.write_bytes(teacher.read_bytes())
    made = []
    for activation in ("relu", "lma"):
        final = sequential.train_student("multi30k", 64, activation, 1, corpus_dir.parent, tmp_path / "runs",
                                   kd_teacher=shared_teacher, settings=settings, kd_cache_topk=4)
        config = (final.parent / "config.yaml").read_text()
        assert f"kd_cache: {shared_teacher.with_suffix('')}.top4" in config and "kd_teacher" not in config
        made.append((shared_teacher.with_suffix(".top4") / "manifest.json").stat().st_mtime_ns)
    assert made[0] == made[1]  # the second student reused the cache
    assert json.loads((tmp_path / "teacher" / "teacher_step_10.top4" / "manifest.json").read_text())["topk"] == 4


def test_the_equivalence_report_says_where_and_how_each_run_was_resumed(tmp_path):
    import importlib

    module = importlib.import_module("onmt_lma.study.probes.kd_cache_equivalence")
    log = tmp_path / "train.log"
    log.write_text("[x INFO] runs/a: training multi30k student64, 800 steps\n"
                   "[x INFO] runs/a: resuming from model_step_400.pt\n[x INFO] Step 420/ 800\n"
                   "[x INFO] runs/a: resuming from model_step_600.pt\n"
                   "[x INFO] resuming exactly: skipped the batches of the 600 steps trained (20 s) and restored ...\n")
    assert module.resumptions(log) == [(400, False), (600, True)]
    log.write_text("[x INFO] runs/a: training multi30k student64, 800 steps\n")
    assert module.resumptions(log) == []

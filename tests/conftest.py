"""Shared fixtures: the real German-English data in ../shared/data and tiny corpora cut from it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LMA_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data():
    """The real data; a test needing it fails without it, or is skipped under ``make test-fast``."""
    if not SHARED_DATA.is_dir():
        message = f"real data not found at {SHARED_DATA} (set LMA_SHARED_DATA)"
        if os.environ.get("LMA_SKIP_WITHOUT_DATA") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Ope's tokenized test split cut into train (800), valid (60) and test (12) pairs."""
    ope = shared_data() / "ope"
    de = (ope / "de-val-clean.10K.txt").read_text(encoding="utf-8").splitlines()
    en = (ope / "en-val-clean.10K.txt").read_text(encoding="utf-8").splitlines()
    assert len(de) == len(en)
    root = tmp_path_factory.mktemp("corpus")
    splits = {"train": slice(0, 800), "valid": slice(800, 860), "test": slice(860, 872)}
    for split, rows in splits.items():
        (root / f"{split}.de").write_text("\n".join(de[rows]) + "\n", encoding="utf-8")
        (root / f"{split}.en").write_text("\n".join(en[rows]) + "\n", encoding="utf-8")
    (root / "config.yaml").write_text(
        f"""# tiny data config used by the integration tests
save_data: {root}/run
src_vocab: {root}/vocab.de
tgt_vocab: {root}/vocab.en
overwrite: true
data:
  corpus_1:
    path_src: {root}/train.de
    path_tgt: {root}/train.en
  valid:
    path_src: {root}/valid.de
    path_tgt: {root}/valid.en
""",
        encoding="utf-8",
    )
    return root


#: a tiny Transformer that trains in seconds on 2 CPU cores
TINY_MODEL_ARGS = [
    "-encoder_type", "transformer", "-decoder_type", "transformer",
    "-position_encoding", "-enc_layers", "2", "-dec_layers", "1",
    "-hidden_size", "32", "-word_vec_size", "32", "-transformer_ff", "64", "-heads", "2",
    "-batch_size", "256", "-batch_type", "tokens", "-bucket_size", "1024", "-num_workers", "0",
    "-optim", "adam", "-learning_rate", "0.001", "-seed", "1",
    "-report_every", "5", "-valid_steps", "1000",
]


class CommandServer:
    """The client of tests/command_server.py: the venv's commands run in forked children of one process that
    imported torch and OpenNMT-py once (one server per test process, started at its first command)."""

    started = None  # the running server, or False when it could not start (plain subprocesses then)

    @classmethod
    def get(cls):
        if cls.started is None:
            cls.started = False
            if os.environ.get("LMA_TEST_FORK", "1") != "0":
                process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("command_server.py"))],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                if json.loads(process.stdout.readline() or "{}").get("ready"):
                    cls.started = process
                else:
                    process.kill()
        return cls.started

    @classmethod
    def run(cls, argv, timeout, cwd=None, env=None):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="command-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": argv, "cwd": str(cwd or os.getcwd()), "env": dict(env or os.environ), "out": str(out),
                       "err": str(err), "timeout": timeout}
            server = cls.get()
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            returncode = json.loads(server.stdout.readline())["returncode"]
            return subprocess.CompletedProcess(argv, returncode, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))


def run(command, *args, expect_ok=True, env=None):
    """Run one of the venv's commands (``env``: variables added to the environment); fail the test with its
    stderr if it fails."""
    argv = [str(BIN / command), *map(str, args)]
    env = {**os.environ, **(env or {})}
    if CommandServer.get():
        result = CommandServer.run(argv, timeout=600, env=env)
    else:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    if expect_ok:
        assert result.returncode == 0, f"{command} failed:\n{result.stderr[-3000:]}"
    return result


def load(path):
    """Load a checkpoint the way the plugin does (weights_only + allow-list)."""
    from onmt_lma.base.checkpoint import load as load_checkpoint

    return load_checkpoint(path)


def activation_state(checkpoint):
    return {k: v for k, v in checkpoint["model"].items() if ".feed_forward.activation." in k}


NO_DROPOUT = ["-dropout", "0", "-attention_dropout", "0"]


def record_losses(monkeypatch):
    """Record (loss, kd part, target words) of every training-loss call, with or without a teacher."""
    from onmt_lma.training.distill import DistillationLossCompute

    records = []
    forward = DistillationLossCompute.forward

    def recording(self, batch, output, attns, trunc_start=0, trunc_size=None):
        loss, stats = forward(self, batch, output, attns, trunc_start, trunc_size)
        if output.requires_grad:  # training steps, not validation
            records.append((loss.item(), getattr(stats, "kd_loss", None), stats.n_words))
        return loss, stats

    monkeypatch.setattr(DistillationLossCompute, "forward", recording)
    return records


def train_args(corpus, save_model, *extra):
    return ["-config", corpus / "config.yaml", *TINY_MODEL_ARGS, "-save_model", save_model, *extra]


@pytest.fixture(scope="session")
def vocab(tiny_corpus):
    """The tiny corpus with its vocabularies built by onmt_lma_build_vocab."""
    run("onmt_lma_build_vocab", "-config", tiny_corpus / "config.yaml", "-n_sample", "-1")
    assert (tiny_corpus / "vocab.de").stat().st_size > 0
    return tiny_corpus


@pytest.fixture(scope="session")
def teacher(vocab, tmp_path_factory):
    """A tiny ReLU teacher, 10 steps, no dropout (so a student resumed from it equals it)."""
    out = tmp_path_factory.mktemp("teacher")
    run("onmt_lma_train", *train_args(vocab, out / "teacher", "-train_steps", "10",
                                      "-save_checkpoint_steps", "10", *NO_DROPOUT))
    return out / "teacher_step_10.pt"


@pytest.fixture(scope="session")
def lma_student(vocab, tmp_path_factory):
    """A tiny LMA model with biases in every linear layer (as the recipes), 30 steps."""
    out = tmp_path_factory.mktemp("lma_student")
    run("onmt_lma_train", *train_args(vocab, out / "lma", "-pos_ffn_activation_fn", "lma", "-train_steps", "30",
                                      "-save_checkpoint_steps", "30", "-add_qkvbias", "-add_ffnbias"))
    return out / "lma_step_30.pt"


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

"""Shared fixtures: the real German-English data in ../shared/data and tiny corpora cut from it."""

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


def run(command, *args, expect_ok=True):
    """Run one of the venv's commands; fail the test with its stderr if it fails."""
    result = subprocess.run(
        [str(BIN / command), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if expect_ok:
        assert result.returncode == 0, f"{command} failed:\n{result.stderr[-3000:]}"
    return result


def load(path):
    """Load a checkpoint the way the plugin does (weights_only + allow-list)."""
    from onmt_lma.checkpoint import checkpoint_loading

    with checkpoint_loading(str(path)):
        return torch.load(path, map_location="cpu")


def activation_state(checkpoint):
    return {k: v for k, v in checkpoint["model"].items() if ".feed_forward.activation." in k}


def train_args(corpus, save_model, *extra):
    return ["-config", corpus / "config.yaml", *TINY_MODEL_ARGS, "-save_model", save_model, *extra]


@pytest.fixture(scope="session")
def vocab(tiny_corpus):
    """The tiny corpus with its vocabularies built by onmt_lma_build_vocab."""
    run("onmt_lma_build_vocab", "-config", tiny_corpus / "config.yaml", "-n_sample", "-1")
    assert (tiny_corpus / "vocab.de").stat().st_size > 0
    return tiny_corpus

"""End to end on real German-English data: build vocab, train, resume, translate.

Tiny models, a few dozen steps: these check plumbing, not quality.
"""

import functools
import multiprocessing
from pathlib import Path

import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.model.lma import LMA
from onmt_lma.bin import train as train_cli
from onmt_lma.bin import translate as translate_cli

import onmt.bin.train
import onmt.model_builder
from onmt.utils.parse import ArgumentParser

from conftest import activation_state, load, run, train_args

pytestmark = pytest.mark.integration

FEED_FORWARD_BLOCKS = 3  # 2 encoder + 1 decoder layers in TINY_MODEL_ARGS


@pytest.fixture(scope="module")
def lma_checkpoint(vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("lma")
    run(
        "onmt_lma_train",
        *train_args(vocab, out / "lma", "-pos_ffn_activation_fn", "lma", "-lma_segments", "6",
                    "-train_steps", "20", "-save_checkpoint_steps", "20"),
    )
    path = out / "lma_step_20.pt"
    assert path.is_file()
    return path


def test_checkpoint_holds_every_lma_parameter_and_buffer(lma_checkpoint):
    checkpoint = load(lma_checkpoint)
    assert checkpoint["opt"].pos_ffn_activation_fn == "lma"
    assert checkpoint["opt"].lma_segments == 6 and checkpoint["opt"].lma_momentum == 0.99
    state = activation_state(checkpoint)
    assert len(state) == 4 * FEED_FORWARD_BLOCKS
    shapes = {"alpha": (6,), "beta": (6,), "running_mean": (1,), "running_std": (1,)}
    for key, tensor in state.items():
        assert tuple(tensor.shape) == shapes[key.rsplit(".", 1)[1]], key
    # trained: slopes left the ReLU pattern, statistics left their start
    alphas = [v for k, v in state.items() if k.endswith("alpha")]
    assert all(not torch.equal(a, torch.tensor([0.0, 0, 0, 1, 1, 1])) for a in alphas)
    stds = [v.item() for k, v in state.items() if k.endswith("running_std")]
    assert all(s != 1.0 for s in stds)


def test_resume_starts_from_the_saved_statistics(vocab, lma_checkpoint, tmp_path, monkeypatch):
    saved = activation_state(load(lma_checkpoint))
    saved_stats = sorted(
        (saved[f"{p}running_mean"].item(), saved[f"{p}running_std"].item())
        for p in {k.rsplit(".", 1)[0] + "." for k in saved}
    )
    first_seen = {}
    forward = LMA.forward

    def recording_forward(self, x):
        first_seen.setdefault(id(self), (self.running_mean.item(), self.running_std.item()))
        return forward(self, x)

    monkeypatch.setattr(LMA, "forward", recording_forward)
    train_cli.main(
        list(map(str, train_args(vocab, tmp_path / "resumed", "-train_from", lma_checkpoint,
                                 "-train_steps", "25", "-save_checkpoint_steps", "25")))
    )
    assert len(first_seen) == FEED_FORWARD_BLOCKS
    seen = sorted(first_seen.values())
    assert [v for pair in seen for v in pair] == pytest.approx([v for p in saved_stats for v in p])
    resumed = load(tmp_path / "resumed_step_25.pt")
    assert resumed["opt"].lma_segments == 6
    assert len(activation_state(resumed)) == 4 * FEED_FORWARD_BLOCKS


def test_a_run_resumed_from_its_own_checkpoint_goes_on_as_if_never_stopped(vocab, tmp_path):
    """Same batches and dropout as the uninterrupted run: equal weights at the end (onmt_lma.training.resume)."""
    common = ["-pos_ffn_activation_fn", "lma", "-lma_segments", "6", "-save_checkpoint_steps", "4",
              "-dropout", "0.3", "-batch_size", "128"]  # dropout: the random state matters

    def train(folder, steps, *extra):
        train_cli.main(list(map(str, train_args(vocab, tmp_path / folder / "model", *common, "-train_steps", steps,
                                                *extra))))
        return tmp_path / folder / f"model_step_{steps}.pt"

    whole = load(train(Path("whole"), 8))
    train(Path("cut"), 4)
    resumed = load(train(Path("cut"), 8, "-train_from", tmp_path / "cut" / "model_step_4.pt"))
    assert resumed["optim"]["onmt_lma_resume"]["data_steps"] == 8
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert torch.equal(whole["generator"]["weight"], resumed["generator"]["weight"])
    # a checkpoint without the resume state resumes as OpenNMT-py does: other batches, other weights
    old = load(tmp_path / "cut" / "model_step_4.pt")
    del old["optim"]["onmt_lma_resume"]
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "model_step_4.pt")
    plain = load(train(Path("old"), 8, "-train_from", tmp_path / "old" / "model_step_4.pt"))
    assert not all(torch.equal(tensor, plain["model"][name]) for name, tensor in whole["model"].items())
    # fine-tuning from another run's checkpoint starts at the data's first batch, whatever that run drew
    tuned = load(train(Path("tuned"), 12, "-train_from", tmp_path / "whole" / "model_step_8.pt"))
    assert tuned["optim"]["onmt_lma_resume"]["data_steps"] == 4


def test_translation_rebuilds_the_trained_model_in_evaluation_mode(vocab, lma_checkpoint, tmp_path):
    opt = translate_cli.get_parser().parse_args(
        ["-model", str(lma_checkpoint), "-src", str(vocab / "test.de")]
    )
    ArgumentParser.validate_translate_opts(opt)
    _, model, model_opt = onmt.model_builder.load_test_model(opt)
    activations = [m for m in model.modules() if isinstance(m, LMA)]
    assert len(activations) == FEED_FORWARD_BLOCKS
    assert all(a.segments == 6 and not a.training for a in activations)
    saved = activation_state(load(lma_checkpoint))
    stds = sorted(a.running_std.item() for a in activations)
    assert stds == sorted(v.item() for k, v in saved.items() if k.endswith("running_std"))


def test_translate_with_beam_5_writes_one_line_per_source_line(vocab, lma_checkpoint, tmp_path):
    output = tmp_path / "hyp.en"
    run("onmt_lma_translate", "-model", lma_checkpoint, "-src", vocab / "test.de",
        "-output", output, "-beam_size", "5", "-max_length", "30")
    sources = (vocab / "test.de").read_text().splitlines()
    hypotheses = output.read_text().splitlines()
    assert len(hypotheses) == len(sources) == 12


def test_translate_refuses_a_segment_count_other_than_the_trained_one(vocab, lma_checkpoint, tmp_path):
    result = run("onmt_lma_translate", "-model", lma_checkpoint, "-src", vocab / "test.de",
                 "-output", tmp_path / "hyp.en", "-lma_segments", "8", expect_ok=False)
    assert result.returncode == 2
    assert "-lma_segments 8 does not match checkpoint" in result.stderr
    assert "trained with -lma_segments 6" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_without_a_seed_says_it_cannot_be_repeated(vocab, tmp_path):
    """OpenNMT-py's default -seed -1 seeds nothing (each process draws other weights, batches and dropout): said
    once at the start; a seeded run and a run resuming its own checkpoint (random state restored) stay quiet."""
    from argparse import Namespace

    unseeded = run("onmt_lma_train", *train_args(vocab, tmp_path / "unseeded", "-seed", "-1", "-train_steps", "2"))
    assert unseeded.stderr.count("-seed -1 seeds nothing: this run draws its own initial weights") == 1
    assert plugin.unseeded_warning(Namespace(seed=1, train_from=None, save_model="m")) is None
    own = Namespace(seed=-1, train_from=str(tmp_path / "m_step_4.pt"), save_model=str(tmp_path / "m"))
    assert plugin.unseeded_warning(own) is None
    other = Namespace(seed=-1, train_from=str(tmp_path / "other" / "m_step_4.pt"), save_model=str(tmp_path / "m"))
    assert "give -seed N" in plugin.unseeded_warning(other)


def test_missing_train_from_checkpoint_is_a_clear_error(vocab, tmp_path):
    result = run("onmt_lma_train", *train_args(vocab, tmp_path / "m", "-train_from",
                                               tmp_path / "nope.pt", "-train_steps", "1"),
                 expect_ok=False)
    assert result.returncode == 2
    assert "nope.pt' does not exist" in result.stderr


def test_plain_opennmt_relu_checkpoint_trains_and_translates(vocab, tmp_path):
    run("onmt_train", *train_args(vocab, tmp_path / "plain", "-train_steps", "10",
                                  "-save_checkpoint_steps", "10"))
    run("onmt_lma_train", *train_args(vocab, tmp_path / "plain", "-train_from",
                                      tmp_path / "plain_step_10.pt", "-train_steps", "15",
                                      "-save_checkpoint_steps", "15"))
    checkpoint = load(tmp_path / "plain_step_15.pt")
    assert checkpoint["opt"].pos_ffn_activation_fn == "relu"
    assert not activation_state(checkpoint)
    output = tmp_path / "hyp.en"
    run("onmt_lma_translate", "-model", tmp_path / "plain_step_15.pt", "-src", vocab / "test.de",
        "-output", output, "-beam_size", "5", "-max_length", "30")
    assert len(output.read_text().splitlines()) == 12


def test_spawned_training_worker_has_the_plugin(vocab, tmp_path):
    """OpenNMT-py hands ``partial(single_main)`` to workers started with spawn."""
    opt = train_cli.get_parser().parse_args(list(map(str, train_args(
        vocab, tmp_path / "spawned", "-pos_ffn_activation_fn", "lma", "-lma_segments", "4",
        "-train_steps", "2", "-save_checkpoint_steps", "2"))))
    ArgumentParser.validate_train_opts(opt)
    ArgumentParser.update_model_opts(opt)
    ArgumentParser.validate_model_opts(opt)
    worker = multiprocessing.get_context("spawn").Process(
        target=functools.partial(onmt.bin.train.single_main), args=(opt,),
        kwargs={"device_id": -1},
    )
    worker.start()
    worker.join(timeout=300)
    assert worker.exitcode == 0
    state = activation_state(load(tmp_path / "spawned_step_2.pt"))
    assert sum(k.endswith(".alpha") for k in state) == FEED_FORWARD_BLOCKS
    assert all(v.shape == (4,) for k, v in state.items() if k.endswith(".alpha"))

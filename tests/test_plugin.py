"""The OpenNMT-py integration, in process and without training: options, model building, checkpoints."""

import argparse

import pytest
import torch

from onmt_lma.base import onmt_import
from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.model.activations import APLU, PReLU, Swish
from onmt_lma.model.lma import LMA
from onmt_lma.bin import train as train_cli
from onmt_lma.bin import translate as translate_cli
from onmt_lma.base.checkpoint import CHECKPOINT_SAFE_GLOBALS, CheckpointError

import onmt.model_builder
import onmt.models.model_saver
from onmt.inputters.inputter import dict_to_vocabs
from onmt.modules.position_ffn import ACTIVATION_FUNCTIONS, PositionwiseFeedForward
from onmt.utils.parse import ArgumentParser

from conftest import TINY_MODEL_ARGS
from conftest import load as load_checkpoint_file

SPECIALS = ["<unk>", "<blank>", "<s>", "</s>"]


def tiny_vocabs():
    words = [f"w{i}" for i in range(30)]
    return dict_to_vocabs({"data_task": "seq2seq", "src": SPECIALS + words, "tgt": SPECIALS + words})


@pytest.fixture
def data_args(tiny_corpus):
    return ["-config", str(tiny_corpus / "config.yaml"), "-save_model", "unused"] + TINY_MODEL_ARGS


@pytest.fixture
def train_opt(data_args):
    def parse(*args):
        opt = train_cli.get_parser().parse_args(data_args + list(args))
        ArgumentParser.update_model_opts(opt)
        ArgumentParser.validate_model_opts(opt)
        return opt

    return parse


def feed_forward_blocks(model):
    return [m for m in model.modules() if isinstance(m, PositionwiseFeedForward)]


def test_install_is_idempotent_and_adds_the_activation_choices():
    before = dict(plugin._ORIGINAL)
    plugin.install()
    plugin.install()
    assert plugin._ORIGINAL == before
    assert onmt.model_builder.build_base_model is plugin.build_base_model
    assert onmt.models.model_saver.load_checkpoint is plugin.load_checkpoint
    assert {"relu", "gelu", "silu", "gated-gelu", "lma", "prelu", "swish", "aplu"} <= set(
        ACTIVATION_FUNCTIONS
    )


class ScaledLeakyReLU(torch.nn.Module):
    """An activation of a user's own, with a parameter, to register in a test."""

    def __init__(self, units):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(units))

    def forward(self, x):
        return self.scale * torch.nn.functional.leaky_relu(x, 0.1)


@pytest.mark.integration
def test_an_activation_registered_after_install_trains_through_onmt_lma_train(vocab, tmp_path):
    """The registry is the only list: a name registered now is a -pos_ffn_activation_fn choice at once,
    built per feed-forward block, trained and saved."""
    from onmt_lma.model.activations import register_activation
    from onmt_lma.model.activations import registered_activations

    built = []

    def factory(units, segments, momentum):
        built.append(units)
        return ScaledLeakyReLU(units)

    name = "scaled_leaky_test"
    if name not in registered_activations():  # one registration per test session
        register_activation(name)(factory)
    assert name in ACTIVATION_FUNCTIONS and name in registered_activations()
    save = tmp_path / "leaky"
    train_cli.main(["-config", str(vocab / "config.yaml"), *TINY_MODEL_ARGS, "-save_model", str(save),
                    "-pos_ffn_activation_fn", name, "-train_steps", "1", "-save_checkpoint_steps", "1"])
    checkpoint = load_checkpoint_file(tmp_path / "leaky_step_1.pt")
    scales = [k for k in checkpoint["model"] if k.endswith(".feed_forward.activation.scale")]
    assert len(scales) == 3 and built == [64, 64, 64]  # 2 encoder + 1 decoder blocks, each its own module
    assert checkpoint["opt"].pos_ffn_activation_fn == name
    assert not all(torch.equal(checkpoint["model"][k], torch.ones(64)) for k in scales)  # it trained


@pytest.mark.parametrize(
    "name, cls", [("lma", LMA), ("prelu", PReLU), ("swish", Swish), ("aplu", APLU)]
)
def test_every_feed_forward_block_owns_its_activation(name, cls, train_opt):
    opt = train_opt("-pos_ffn_activation_fn", name, "-lma_segments", "6", "-lma_momentum", "0.9")
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    blocks = feed_forward_blocks(model)
    assert len(blocks) == 3  # 2 encoder + 1 decoder layers
    activations = [block.activation for block in blocks]
    assert all(isinstance(a, cls) for a in activations)
    assert len({id(a) for a in activations}) == len(activations)
    assert all(block.w_3 is None for block in blocks)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    if cls is LMA:
        assert all(a.segments == 6 and a.momentum == 0.9 for a in activations)
        assert sum(n.endswith("feed_forward.activation.running_std") for n in names) == 3
    if cls is APLU:
        assert all(a.hinge_slope.shape == (4, 64) for a in activations)
    assert sum(".feed_forward.activation." in n for n in names) >= 3


def test_param_init_does_not_overwrite_the_documented_start(train_opt):
    """OpenNMT-py's -param_init draws every parameter uniformly; LMA must still start as ReLU."""
    opt = train_opt("-pos_ffn_activation_fn", "lma", "-param_init", "0.1")
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    for block in feed_forward_blocks(model):
        assert block.activation.alpha.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert block.activation.beta.abs().sum() == 0
    # ...while the rest of the model was initialized by OpenNMT-py
    assert 0 < model.encoder.transformer[0].feed_forward.w_1.weight.abs().max() <= 0.1
    opt = train_opt("-pos_ffn_activation_fn", "prelu", "-param_init", "0.1")
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    assert all(torch.all(b.activation.weight == 0.25) for b in feed_forward_blocks(model))


def test_relu_models_are_plain_opennmt_models(train_opt):
    opt = train_opt()
    assert opt.pos_ffn_activation_fn == "relu"
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    assert all(b.activation is torch.nn.functional.relu for b in feed_forward_blocks(model))
    assert not any("activation" in name for name in model.state_dict())


def test_options_have_defaults_in_checkpoint_model_opts():
    """Plain OpenNMT-py checkpoints lack the plugin's options: defaults fill them."""
    model_opt = ArgumentParser.ckpt_model_opts(argparse.Namespace(pos_ffn_activation_fn="relu"))
    assert model_opt.lma_segments == 8 and model_opt.lma_momentum == 0.99


@pytest.mark.parametrize(
    "args, message",
    [
        (["-lma_segmnts", "3"], "unrecognized arguments: -lma_segmnts"),
        (["-lma_segments", "1"], "lma_segments: expected an integer >= 2, got '1'"),
        (["-lma_segments", "two"], "lma_segments: expected an integer >= 2, got 'two'"),
        (["-lma_momentum", "1"], "lma_momentum: expected a number in [0, 1), got '1'"),
        (["-lma_momentum", "-0.5"], "lma_momentum: expected a number in [0, 1), got '-0.5'"),
        (["-pos_ffn_activation_fn", "lmaa"], "invalid choice: 'lmaa'"),
    ],
)
def test_bad_training_options_fail_with_clear_messages(args, message, data_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(data_args + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_key_in_a_yaml_config_is_an_error(tiny_corpus, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    good = (tiny_corpus / "config.yaml").read_text()
    config.write_text(good + "save_model: unused\npos_ffn_activation_fn: lma\nlma_segmnts: 4\n")
    with pytest.raises(SystemExit):
        train_cli.main(["-config", str(config)])
    assert f"unknown option 'lma_segmnts' in {config}; did you mean 'lma_segments'?" in capsys.readouterr().err


def test_translate_accepts_the_plugin_options_only_as_checks():
    opt = translate_cli.get_parser().parse_args(["-model", "m.pt", "-src", "s.txt"])
    assert opt.lma_segments is None and opt.lma_momentum is None
    assert opt.pos_ffn_activation_fn is None
    trained = argparse.Namespace(pos_ffn_activation_fn="lma", lma_segments=6, lma_momentum=0.99)
    plugin.check_translation_opts(opt, trained, "m.pt")  # nothing given: fine
    opt.lma_segments = 6
    plugin.check_translation_opts(opt, trained, "m.pt")  # same value: fine
    opt.lma_segments = 8
    with pytest.raises(ValueError, match="-lma_segments 8 does not match checkpoint m.pt, trained with -lma_segments 6"):
        plugin.check_translation_opts(opt, trained, "m.pt")


class NotAllowed:
    pass


def test_checkpoints_outside_the_allow_list_are_refused(tmp_path):
    assert argparse.Namespace in CHECKPOINT_SAFE_GLOBALS
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "opt": argparse.Namespace(), "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load OpenNMT-py checkpoint .*evil\.pt.*: it holds test_plugin\.NotAllowed") as refused:
        onmt.models.model_saver.load_checkpoint(str(path))
    # the message never suggests turning the safe loader off
    assert "do not use it" in str(refused.value) and "weights_only" not in str(refused.value)
    ok = tmp_path / "ok.pt"
    torch.save({"opt": argparse.Namespace(a=1, b=[1, 2], c={"x"}), "model": {"w": torch.ones(2)}}, ok)
    loaded = onmt.model_builder.load_checkpoint(str(ok))
    assert loaded["opt"].a == 1 and loaded["model"]["w"].tolist() == [1.0, 1.0]


def test_missing_or_broken_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        onmt.models.model_saver.load_checkpoint(str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt.* is not a readable OpenNMT-py checkpoint"):
        onmt.models.model_saver.load_checkpoint(str(garbage))


def test_a_deferred_module_imports_itself_on_first_use(monkeypatch):
    """spaCy's stand-in (the same class) stays unimported through ``inspect``'s probe, then becomes the real module."""
    import inspect
    import sys

    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    onmt_import.DeferredModule.install("colorsys")
    deferred = sys.modules["colorsys"]
    assert isinstance(deferred, onmt_import.DeferredModule) and not hasattr(deferred, "__file__")
    inspect.getmodule(test_a_deferred_module_imports_itself_on_first_use)  # walks sys.modules
    assert sys.modules["colorsys"] is deferred
    assert deferred.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # first use: the real function
    real = sys.modules["colorsys"]
    assert not isinstance(real, onmt_import.DeferredModule) and deferred.__file__ == real.__file__
    assert not hasattr(deferred, "no_such_name") and sys.modules["colorsys"] is real  # not imported a second time
    onmt_import.DeferredModule.install("colorsys")  # already imported: left alone
    assert sys.modules["colorsys"] is real
    onmt_import.DeferredModule.install("no_such_module_anywhere")
    assert "no_such_module_anywhere" not in sys.modules


def test_spacy_is_imported_only_when_the_terminology_transform_needs_it():
    import subprocess
    import sys

    code = ("import sys, onmt_lma.training.plugin, onmt.transforms.terminology as t; assert 'spacy.cli' not in sys.modules; "
            "assert callable(t.spacy.load) and 'spacy.cli' in sys.modules; import spacy; print(spacy.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()[0].isdigit()

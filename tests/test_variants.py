"""The converged study's options and tools: continuous LMA, -lma_lr_scale, averaging, the pilot's rule."""

import hashlib
import importlib
import math

import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.model.activations import build_activation
from onmt_lma.model.lma import continuous_intercepts, LMA
from onmt_lma.bin.average_models import main as average_main
from onmt_lma.training.average import average, AverageError, checkpoint_steps
from onmt_lma.bin import train as train_cli

import onmt.model_builder
from onmt.utils.optimizers import Optimizer
from onmt.utils.parse import ArgumentParser

from conftest import REPO, TINY_MODEL_ARGS, load, run, train_args
from test_plugin import feed_forward_blocks, tiny_vocabs


def reference_continuous(x, alpha, mean, std):
    """Float64, written from the definition: the piecewise-linear function through its knots.

    The first line passes through the origin with slope alpha[0]; at each cut
    point the function keeps its value and takes the next slope.
    """
    k = len(alpha)
    width = 6 * std / k
    cuts = [mean - 3 * std + j * width for j in range(1, k)]
    out = []
    for value in x:
        y = alpha[0] * value
        segment = min(max(math.floor((value - (mean - 3 * std)) / width), 0), k - 1)
        # value of the function = sum of slope changes times the distance past each cut
        y = alpha[0] * value + sum((alpha[j] - alpha[j - 1]) * (value - cuts[j - 1])
                                   for j in range(1, segment + 1))
        out.append(y)
    return out


@pytest.mark.parametrize("segments", [2, 5, 8])
def test_continuous_lma_equals_the_piecewise_linear_reference(segments):
    torch.manual_seed(segments)
    lma = LMA(segments, continuous=True).double().eval()
    with torch.no_grad():
        lma.alpha.normal_()
        lma.running_mean.fill_(0.3)
        lma.running_std.fill_(1.7)
    x = torch.linspace(-9, 9, 1001, dtype=torch.float64)
    expected = reference_continuous(x.tolist(), lma.alpha.tolist(), 0.3, 1.7)
    assert torch.allclose(lma(x), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_continuous_lma_has_no_jump_at_any_cut_point_and_starts_as_shifted_relu():
    lma = LMA(8, continuous=True).double()
    x = torch.randn(4000, dtype=torch.float64) * 2 + 0.5
    mean, std = x.mean(), x.std(correction=0)
    assert torch.allclose(lma(x), torch.relu(x - mean), atol=1e-12)  # slopes 0 then 1, knot at the mean
    with torch.no_grad():
        lma.alpha.normal_()
    beta = continuous_intercepts(lma.alpha, mean, std)
    for j in range(1, 8):
        cut = mean - 3 * std + j * 6 * std / 8
        left, right = lma.alpha[j - 1] * cut + beta[j - 1], lma.alpha[j] * cut + beta[j]
        assert torch.isclose(left, right, atol=1e-12)
    assert "beta" not in dict(lma.named_parameters())  # only the slopes learn


def test_continuous_lma_gradients_match_finite_differences():
    lma = LMA(6, continuous=True).double().eval()
    with torch.no_grad():
        lma.alpha.normal_()
        lma.running_std.fill_(1.3)
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: torch.func.functional_call(lma, {"alpha": a}, (x,)),
                                    (x, lma.alpha.detach().clone().requires_grad_()))


def test_continuous_is_an_lma_option_only():
    assert build_activation("lma", continuous=True).continuous
    with pytest.raises(ValueError, match="continuous applies to lma only"):
        build_activation("prelu", units=4, continuous=True)


@pytest.fixture
def train_opt(tiny_corpus):
    def parse(*args):
        opt = train_cli.get_parser().parse_args(
            ["-config", str(tiny_corpus / "config.yaml"), "-save_model", "unused"] + TINY_MODEL_ARGS + list(args))
        ArgumentParser.update_model_opts(opt)
        ArgumentParser.validate_model_opts(opt)
        return opt

    return parse


def test_continuous_lma_is_built_into_every_feed_forward_block(train_opt):
    opt = train_opt("-pos_ffn_activation_fn", "lma", "-lma_continuous")
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    assert all(b.activation.continuous for b in feed_forward_blocks(model))


def test_lr_scale_gives_the_activations_a_scaled_parameter_group(train_opt):
    opt = train_opt("-pos_ffn_activation_fn", "lma", "-lma_lr_scale", "0.1", "-decay_method", "noam",
                    "-warmup_steps", "4", "-learning_rate", "2.0")
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    optim = Optimizer.from_opt(model, opt)
    groups = optim._optimizer.param_groups
    activation_ids = {id(p) for b in feed_forward_blocks(model) for p in b.activation.parameters()}
    assert [group.get("lr_scale", 1.0) for group in groups] == [1.0, 0.1]
    assert {id(p) for p in groups[1]["params"]} == activation_ids
    assert not activation_ids & {id(p) for p in groups[0]["params"]}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    schedule_lr = optim.learning_rate()  # noam's learning rate of the coming step
    optim.step()
    assert groups[0]["lr"] == pytest.approx(schedule_lr)
    assert groups[1]["lr"] == pytest.approx(0.1 * schedule_lr)
    # Adam's first step moves every parameter by lr (the gradient's sign): 10x less for alpha/beta
    alpha = "encoder.transformer.0.feed_forward.activation.alpha"
    weight = "encoder.transformer.0.feed_forward.w_1.weight"
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved[alpha] == pytest.approx(0.1 * moved[weight], rel=1e-3)


def test_lr_scale_zero_freezes_the_activations(train_opt):
    opt = train_opt("-pos_ffn_activation_fn", "lma", "-lma_lr_scale", "0")
    model = onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1)
    optim = Optimizer.from_opt(model, opt)
    assert len(optim._optimizer.param_groups) == 1
    frozen = [p for b in feed_forward_blocks(model) for p in b.activation.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    in_optimizer = {id(p) for p in optim._optimizer.param_groups[0]["params"]}
    assert not in_optimizer & {id(p) for p in frozen}


@pytest.mark.parametrize("value", ["-1", "x", "inf"])
def test_bad_lr_scale_fails_at_parse_time(value, train_opt, capsys):
    with pytest.raises(SystemExit):
        train_opt("-lma_lr_scale", value)
    assert "-lma_lr_scale: expected a number >= 0" in capsys.readouterr().err


def test_the_same_seed_gives_relu_and_lma_the_same_initial_weights(train_opt):
    """With the recipes' Glorot initialization (-param_init 0), which draws for weight matrices only.

    (OpenNMT-py's -param_init > 0 draws for every parameter in order, LMA's too,
    so every weight after the first LMA would differ.)"""
    models = {}
    for name in ("relu", "lma"):
        opt = train_opt("-pos_ffn_activation_fn", name, "-seed", "7", "-param_init", "0", "-param_init_glorot")
        torch.manual_seed(7)
        models[name] = dict(onmt.model_builder.build_model(opt, opt, tiny_vocabs(), None, -1).named_parameters())
    shared = [n for n in models["relu"]]
    assert shared and all(torch.equal(models["relu"][n], models["lma"][n]) for n in shared)
    assert set(models["lma"]) - set(models["relu"])  # LMA adds only its own parameters


# --------------------------------------------------------------------------- #
# Averaging
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def lma_checkpoints(vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("avg")
    run("onmt_lma_train", *train_args(vocab, out / "lma", "-pos_ffn_activation_fn", "lma", "-train_steps", "12",
                                      "-save_checkpoint_steps", "4", "-keep_checkpoint", "-1"))
    return [out / f"lma_step_{s}.pt" for s in (4, 8, 12)]


@pytest.mark.integration
def test_average_is_the_mean_of_every_tensor_running_statistics_included(lma_checkpoints):
    loaded = [load(p) for p in lma_checkpoints]
    result = average(lma_checkpoints)
    for key in ("model", "generator"):
        for name, tensor in result[key].items():
            expected = sum(c[key][name].double() for c in loaded) / 3
            assert torch.allclose(tensor.double(), expected, atol=1e-6), name
    stats = [c["model"]["encoder.transformer.0.feed_forward.activation.running_std"] for c in loaded]
    assert len({s.item() for s in stats}) == 3  # they differ, so the mean is a real check
    assert result["optim"] is None and checkpoint_steps(result) == [4, 8, 12]


@pytest.mark.integration
def test_an_averaged_float16_lma_checkpoint_translates(lma_checkpoints, vocab, tmp_path):
    out = tmp_path / "avg.pt"
    average_main(["-models", *map(str, lma_checkpoints), "-output", str(out), "-float16"])
    checkpoint = load(out)
    assert all(t.dtype == torch.float16 for t in checkpoint["model"].values() if t.is_floating_point())
    src = vocab / "test.de"
    run("onmt_lma_translate", "-model", out, "-src", src, "-output", tmp_path / "hyp", "-beam_size", "5")
    assert len((tmp_path / "hyp").read_text().splitlines()) == len(src.read_text().splitlines())


@pytest.mark.integration
def test_average_refuses_mismatched_checkpoints_and_overwriting_an_input(lma_checkpoints, vocab, tmp_path):
    run("onmt_lma_train", *train_args(vocab, tmp_path / "relu", "-train_steps", "2", "-save_checkpoint_steps", "2"))
    with pytest.raises(AverageError, match="relu_step_2.pt"):
        average([lma_checkpoints[0], tmp_path / "relu_step_2.pt"])
    result = run("onmt_lma_average_models", "-models", lma_checkpoints[0], "-output", lma_checkpoints[0],
                 expect_ok=False)
    assert "is the -models " in result.stderr and "it would be overwritten" in result.stderr


# --------------------------------------------------------------------------- #
# Released models
# --------------------------------------------------------------------------- #
@pytest.mark.integration
def test_release_drops_absolute_paths_from_the_options(lma_checkpoints, tmp_path):
    out = tmp_path / "released.pt"
    average_main(["-models", str(lma_checkpoints[-1]), "-output", str(out), "-release"])
    released = load(out)
    assert not [k for k, v in vars(released["opt"]).items() if isinstance(v, str) and v.startswith("/")]
    assert "/" + str(tmp_path).strip("/").split("/")[0] not in repr(vars(released["opt"]))
    assert all(t.dtype == torch.float16 for t in released["model"].values() if t.is_floating_point())


def released_module():
    """onmt_lma/study/probes/released_models.py imported as a module."""
    module = importlib.import_module("onmt_lma.study.probes.released_models")
    return module


def test_the_released_models_match_their_sha256_and_load_safely():
    module = released_module()
    models = module.verified_models(REPO / "results" / "multi30k_converged" / "models")
    assert models[0][0] == "teacher"
    for _, path in models:
        checkpoint = load(path)  # weights_only with the allow-list
        assert checkpoint["optim"] is None
        assert all(t.dtype == torch.float16 for t in checkpoint["model"].values() if t.is_floating_point())
        assert not [v for v in vars(checkpoint["opt"]).values() if isinstance(v, str) and v.startswith("/")]
    assert sum(p.stat().st_size for _, p in models) < 130 * 2**20


@pytest.mark.parametrize("name", ["student64_lma_seed1", "student64_relu_seed2"])
def test_a_released_student_translates_as_its_collected_evaluation_did(name, tmp_path):
    """The released float16 file is the model that was evaluated: on this CPU (weights rounded to float16,
    LMA's averaged running statistics included) it translates the first test sentences as the collected
    evaluation did (float32 on the H200), up to a sentence that rounding may turn."""
    import gzip

    from conftest import shared_data
    from data_prep.text import moses_tokenize, normalize_whitespace
    from onmt_lma.evaluation.scoring import postprocess

    lines = 8
    with gzip.open(shared_data() / "multi30k" / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as source:
        german = [normalize_whitespace(next(source)) for _ in range(lines)]
    (tmp_path / "test.de").write_text("\n".join(moses_tokenize(german, "de", "test")) + "\n", encoding="utf-8")
    model = REPO / "results" / "multi30k_converged" / "models" / f"{name}.pt"
    run("onmt_lma_translate", "-model", model, "-src", tmp_path / "test.de", "-output", tmp_path / "hyp.en",
        "-beam_size", "5")
    _, ours = postprocess((tmp_path / "hyp.en").read_text(encoding="utf-8").splitlines(), tmp_path)
    collected = REPO / "results" / "multi30k_converged" / "runs" / name / "model_avg_2000-2750.eval.hyp.detok.en"
    theirs = collected.read_text(encoding="utf-8").splitlines()[:lines]
    assert len(ours) == lines
    assert sum(a == b for a, b in zip(ours, theirs)) >= lines - 1, list(zip(ours, theirs))


def test_a_changed_or_unlisted_released_model_is_refused(tmp_path):
    module = released_module()
    (tmp_path / "a.pt").write_bytes(b"model")
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(b'model').hexdigest()}  a.pt\n")
    assert [name for name, _ in module.verified_models(tmp_path)] == ["a"]
    (tmp_path / "a.pt").write_bytes(b"changed")
    with pytest.raises(module.ReleaseError, match="a.pt: sha256"):
        module.verified_models(tmp_path)
    (tmp_path / "a.pt").write_bytes(b"model")
    (tmp_path / "b.pt").write_bytes(b"other")
    with pytest.raises(module.ReleaseError, match="SHA256SUMS lists"):
        module.verified_models(tmp_path)
    (tmp_path / "SHA256SUMS").unlink()
    with pytest.raises(module.ReleaseError, match="SHA256SUMS is missing"):
        module.verified_models(tmp_path)

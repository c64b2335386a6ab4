"""LMA against an independent float64 re-implementation of the LMA definition of Xu et al. 2020, method section."""

import io
import math
import os

import pytest
import torch

from onmt_lma.model import kernels
from onmt_lma.model.lma import LMA


@pytest.fixture(autouse=True, params=["torch", "cpu"])
def implementation(request):
    """Every test runs on the pure-PyTorch path and on the fused CPU kernel."""
    with kernels.forced(request.param):
        yield request.param


def reference_lma(x, alpha, beta, mean, std, segments):
    """The paper's formula, literally, in float64 (differentiable in x, alpha, beta).

    b_0 = mu - 3 sigma; width = 6 sigma / k; j = clamp(floor((x - b_0) / width), 0, k - 1);
    h(x) = alpha_j x + beta_j.  Also returns the unclamped position (x - b_0) / width.
    """
    x, alpha, beta = x.double(), alpha.double(), beta.double()
    mean, std = float(mean), float(std)
    b0 = mean - 3 * std
    width = 6 * std / segments
    position = (x.detach() - b0) / width
    j = position.floor().clamp(0, segments - 1).long()
    return alpha[j] * x + beta[j], position


def away_from_cuts(position, margin=1e-4):
    """Elements not within ``margin`` of an inner cut point, where float32 rounding may
    pick the neighbouring segment (positions below 1 or above k - 1 are clamped anyway)."""
    nearest = position.round()
    inner = (nearest >= 1) & (nearest <= position.max().ceil() - 1)
    return ~(inner & ((position - nearest).abs() <= margin))


def input_away_from_cuts(shape, segments, dtype, scale=1.3, margin=1e-5):
    """Random input whose elements are all further than ``margin`` (in segment widths) from
    the cut points of its own batch statistics: nudges the few near a cut, then re-checks."""
    x = torch.randn(*shape, dtype=torch.float64) * scale
    for _ in range(10):
        mean, std = population_stats(x)
        position = (x - (mean - 3 * std)) / (6 * std / segments)
        near = ~away_from_cuts(position, 10 * margin)
        if not near.any():
            return x.to(dtype)
        x[near] += 100 * margin * 6 * std / segments
    raise AssertionError("could not move the input away from the cut points")


def random_lma(segments, seed=0, momentum=0.99):
    torch.manual_seed(seed)
    module = LMA(segments, momentum)
    with torch.no_grad():
        module.alpha.normal_()
        module.beta.normal_()
    return module


def population_stats(x):
    x = x.double()
    mean = x.mean().item()
    return mean, math.sqrt(((x - mean) ** 2).mean().item())


@pytest.mark.parametrize("segments", [2, 3, 8, 16])
def test_training_mode_matches_reference_and_updates_running_stats(segments):
    module = random_lma(segments, momentum=0.9)
    x = torch.randn(7, 5, 33) * 2.5 + 0.7
    out = module(x)
    mean, std = population_stats(x)
    expected, position = reference_lma(x, module.alpha, module.beta, mean, std, segments)
    keep = away_from_cuts(position)
    assert keep.float().mean() > 0.99
    torch.testing.assert_close(out.double()[keep], expected[keep].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.running_mean.double(), torch.tensor([0.1 * mean], dtype=torch.double))
    torch.testing.assert_close(
        module.running_std.double(), torch.tensor([0.9 + 0.1 * std], dtype=torch.double)
    )
    # a second batch: running = momentum * running + (1 - momentum) * batch
    x2 = torch.randn(3, 11) - 1.0
    module(x2)
    mean2, std2 = population_stats(x2)
    torch.testing.assert_close(
        module.running_mean.double(),
        torch.tensor([0.9 * 0.1 * mean + 0.1 * mean2], dtype=torch.double),
    )
    torch.testing.assert_close(
        module.running_std.double(),
        torch.tensor([0.9 * (0.9 + 0.1 * std) + 0.1 * std2], dtype=torch.double),
    )


@pytest.mark.parametrize("segments", [2, 5, 8])
def test_evaluation_mode_uses_running_stats_and_leaves_them(segments):
    module = random_lma(segments, seed=1)
    with torch.no_grad():
        module.running_mean.fill_(0.3)
        module.running_std.fill_(1.7)
    module.eval()
    x = torch.randn(4, 9, 21) * 3
    out = module(x)
    expected, position = reference_lma(x, module.alpha, module.beta, 0.3, 1.7, segments)
    keep = away_from_cuts(position)
    torch.testing.assert_close(out.double()[keep], expected[keep].detach(), rtol=1e-5, atol=1e-5)
    assert module.running_mean.item() == pytest.approx(0.3)
    assert module.running_std.item() == pytest.approx(1.7)


def test_gradcheck_in_evaluation_mode_float64():
    module = random_lma(8, seed=2).double().eval()
    with torch.no_grad():
        module.running_mean.fill_(0.1)
        module.running_std.fill_(0.9)
    torch.manual_seed(3)
    x = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)
    _, position = reference_lma(x, module.alpha, module.beta, 0.1, 0.9, 8)
    assert away_from_cuts(position, 1e-3).all(), "pick a seed with no input on a cut point"

    def f(x, alpha, beta):
        module.alpha.data, module.beta.data = alpha.data, beta.data
        from onmt_lma.model.lma import lma

        return lma(x, alpha, beta, module.running_mean, module.running_std)

    alpha = module.alpha.detach().clone().requires_grad_()
    beta = module.beta.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (x, alpha, beta), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("segments", [2, 5, 8, 12, 16, 17, 24])
def test_training_mode_gradients_match_reference_autograd(dtype, segments):
    """Segment counts on both sides of the kernel's vector limits (8, 16); sizes with
    several blocks, several chunks and ragged tails."""
    module = random_lma(segments, seed=5).to(dtype)
    x = input_away_from_cuts((9, 41, 61), segments, dtype).requires_grad_()
    grad_out = torch.randn_like(x)
    module(x).backward(grad_out)

    mean, std = population_stats(x.detach())
    x_ref = x.detach().double().requires_grad_()
    alpha = module.alpha.detach().double().requires_grad_()
    beta = module.beta.detach().double().requires_grad_()
    expected, position = reference_lma(x_ref, alpha, beta, mean, std, segments)
    assert away_from_cuts(position, 1e-5).all(), "pick a seed with no input on a cut point"
    expected.backward(grad_out.double())
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, **tol)
    torch.testing.assert_close(module.alpha.grad.double(), alpha.grad, **tol)
    torch.testing.assert_close(module.beta.grad.double(), beta.grad, **tol)


def test_starts_as_relu():
    for segments in (2, 4, 8, 16):
        module = LMA(segments)
        assert module.alpha.tolist() == [0.0] * (segments // 2) + [1.0] * (segments - segments // 2)
        assert module.beta.tolist() == [0.0] * segments
        assert module.running_mean.shape == (1,) and module.running_mean.item() == 0
        assert module.running_std.shape == (1,) and module.running_std.item() == 1
        x = torch.randn(50, 40) * 4
        torch.testing.assert_close(module.eval()(x), torch.relu(x))  # cut at mu = 0
    assert LMA(5).alpha.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("value", [7.25, 0.0, -3.0])
def test_constant_input_gives_finite_outputs_and_gradients(value):
    module = random_lma(8, seed=5, momentum=0.0)  # momentum 0: running std becomes exactly 0
    x = torch.full((4, 6), value, requires_grad=True)
    out = module(x)
    out.sum().backward()
    for t in (out, x.grad, module.alpha.grad, module.beta.grad):
        assert torch.isfinite(t).all()
    assert module.running_std.item() == 0.0
    # zero spread: the input sits in the middle segment (k/2), as the formula's limit
    torch.testing.assert_close(out, module.alpha[4] * x.detach() + module.beta[4])
    # evaluation with a zero running std and another value: finite, outermost segment
    module.eval()
    y = module(torch.tensor([value - 1.0, value, value + 1.0]))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0], module.alpha[0] * (value - 1.0) + module.beta[0])
    torch.testing.assert_close(y[2], module.alpha[7] * (value + 1.0) + module.beta[7])


def test_state_dict_round_trip_through_a_weights_only_file():
    module = random_lma(6, seed=6)
    module(torch.randn(100))
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"alpha", "beta", "running_mean", "running_std"}
    assert state["running_mean"].shape == (1,) and state["alpha"].shape == (6,)
    restored = LMA(6)
    restored.load_state_dict(state)
    x = torch.randn(5, 7)
    torch.testing.assert_close(restored.eval()(x), module.eval()(x))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"segments": 1}, "segments"),
        ({"segments": 0}, "segments"),
        ({"segments": 2.5}, "segments"),
        ({"segments": True}, "segments"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LMA(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_follows_input(dtype):
    module = LMA().to(dtype)
    x = torch.randn(3, 8, dtype=dtype, requires_grad=True)
    out = module(x)
    out.sum().backward()
    assert out.dtype == dtype and x.grad.dtype == dtype and module.alpha.grad.dtype == dtype


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_under_autocast(half):
    torch.manual_seed(7)
    linear = torch.nn.Linear(16, 32)
    module = random_lma(8, seed=7)
    x = torch.randn(4, 5, 16)
    with torch.autocast("cpu", dtype=half):
        hidden = linear(x)
        out = module(hidden)
    assert hidden.dtype == half and out.dtype == half
    out.float().sum().backward()
    for t in (module.alpha.grad, module.beta.grad, linear.weight.grad):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    mean, std = population_stats(hidden.float())
    expected, position = reference_lma(hidden.float(), module.alpha, module.beta, mean, std, 8)
    keep = away_from_cuts(position, 1e-2)
    torch.testing.assert_close(out.double()[keep], expected[keep].detach(), rtol=1e-2, atol=1e-2)


def test_empty_and_non_contiguous_inputs():
    module = random_lma(8, seed=8)
    empty = torch.randn(0, 4, requires_grad=True)
    out = module(empty)
    out.sum().backward()
    assert out.shape == (0, 4)
    assert module.running_mean.item() == 0 and module.running_std.item() == 1  # untouched

    base = torch.randn(12, 10) * 2
    x = base.t()  # non-contiguous
    assert not x.is_contiguous()
    out = module(x)
    mean, std = population_stats(x)
    expected, position = reference_lma(x, module.alpha, module.beta, mean, std, 8)
    keep = away_from_cuts(position)
    torch.testing.assert_close(out.double()[keep], expected[keep].detach(), rtol=1e-5, atol=1e-5)


def test_large_magnitude_input():
    module = random_lma(8, seed=9)
    x = torch.randn(64, 64) * 1e4 + 5e4
    out = module(x)
    mean, std = population_stats(x)
    expected, position = reference_lma(x, module.alpha, module.beta, mean, std, 8)
    keep = away_from_cuts(position, 1e-3)
    torch.testing.assert_close(out.double()[keep], expected[keep].detach(), rtol=1e-5, atol=1e-1)


def test_backward_keeps_no_more_than_the_input_and_a_quarter():
    """Guard the memory advantage: no full-size gathered alpha/beta kept for backward."""
    module = LMA(8)
    x = torch.randn(64, 512, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    distinct = {t.data_ptr(): t for t in saved if t.numel() > 16}
    kept = sum(t.numel() * t.element_size() for t in distinct.values())
    assert kept <= 1.25 * x.numel() * x.element_size()
    out.sum().backward()


def test_fused_kernel_equals_the_pytorch_path(implementation):
    torch.manual_seed(10)
    module = random_lma(8, seed=10)
    x = (torch.randn(33, 70) * 2).requires_grad_()
    grad = torch.randn(33, 70)
    results = {}
    for choice in ("torch", "cpu"):
        with kernels.forced(choice):
            m = LMA(8)
            m.load_state_dict(module.state_dict())
            xi = x.detach().clone().requires_grad_()
            out = m(xi)
            out.backward(grad)
            results[choice] = (out.detach(), xi.grad, m.alpha.grad, m.beta.grad, m.running_std.clone())
    for a, b in zip(results["torch"], results["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_automatic_choice_falls_back_when_the_kernel_cannot_be_built(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("no C++ compiler")

    def not_installed():
        raise ImportError("no onmt_lma._lma_cpu")

    monkeypatch.setattr(kernels, "_installed_kernel", not_installed)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(kernels, "_state", {"cpu": None, "tried": False, "origin": None})
    with kernels.forced("auto"), pytest.warns(UserWarning, match="fused CPU kernel unavailable"):
        assert kernels.cpu_kernel() is None
    with kernels.forced("auto"):
        module = random_lma(8, seed=11)
        x = torch.randn(50, 20)
        mean, std = population_stats(x)
        expected, position = reference_lma(x, module.alpha, module.beta, mean, std, 8)
        keep = away_from_cuts(position)
        torch.testing.assert_close(module(x).double()[keep], expected[keep].detach(), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(kernels, "_state", {"cpu": None, "tried": False, "origin": None})
    with kernels.forced("cpu"), pytest.raises(RuntimeError, match="ONMT_LMA_KERNEL=cpu but the CPU kernel cannot be built"):
        kernels.cpu_kernel()
    with pytest.raises(ValueError, match="expected auto, torch or cpu"):
        with kernels.forced("gpu"):
            pass


NO_COMPILER_SCRIPT = """
import sys, warnings
sys.modules["onmt_lma._lma_cpu"] = None  # as if installed without building the kernel
import torch
from onmt_lma.model import kernels
from onmt_lma.model.lma import LMA
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = LMA(8).train()(torch.linspace(-3, 3, 1000))
assert kernels.cpu_kernel() is None and kernels.kernel_origin() is None
assert any("fused CPU kernel unavailable" in str(w.message) for w in caught), [str(w.message) for w in caught]
print("fallback ok", float(y.sum()))
"""


def test_a_user_without_a_compiler_gets_the_pytorch_path(tmp_path, implementation):
    """A real attempt to compile with a C++ compiler that does not exist, in a fresh process."""
    if implementation == "torch":
        pytest.skip("about the automatic choice")
    import os
    import subprocess
    import sys

    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "ONMT_LMA_KERNEL": "auto"}
    result = subprocess.run([sys.executable, "-c", NO_COMPILER_SCRIPT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    relu_sum = torch.linspace(-3, 3, 1000).relu().sum().item()  # LMA starts as ReLU
    assert float(result.stdout.split()[-1]) == pytest.approx(relu_sum, rel=1e-5)


def test_the_install_without_a_compiler_says_so_in_one_line(tmp_path, implementation):
    """setup.py's torch kernels are optional (no compiler: a warning each); the runtime is not: the build
    stops with one line saying what to install."""
    if implementation == "torch":
        pytest.skip("about the install")
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    runtime = [str(p.relative_to(REPO)) for p in (REPO / "onmt_lma" / "csrc" / "runtime").iterdir()]
    for name in ("setup.py", "pyproject.toml", "README.md", "onmt_lma/csrc/lma_cpu.cpp", "onmt_lma/csrc/engine_cpu.cpp",
                 "onmt_lma/csrc/search.h", "onmt_lma/csrc/compile_flags.json", *runtime):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "onmt_lma" / "__init__.py").touch()
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "CC": str(tmp_path / "no-such-cc")}
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path,
                            capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "the CPU kernel onmt_lma._lma_cpu was not built" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("onmt-lma: the native runtime cannot be built (") and "install a C++17 compiler" in last
    assert not [p for p in (tmp_path / "onmt_lma").iterdir() if p.suffix == ".so"]


def test_an_installed_kernel_of_another_source_is_not_used(monkeypatch, tmp_path):
    other = tmp_path / "lma_cpu.cpp"
    other.write_text("// another version\n")
    monkeypatch.setattr(kernels, "_SOURCE", other)
    with pytest.raises(ImportError, match="was built from another lma_cpu.cpp"):
        kernels._installed_kernel()


def test_the_vector_paths_are_taken_where_the_processor_has_avx2(implementation):
    if implementation == "torch":
        pytest.skip("about the kernel")
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    kernel = kernels.cpu_kernel()
    has_vector_units = "avx2" in flags and "fma" in flags
    assert [kernel.vectorized(k) for k in (2, 8, 16, 17)] == [has_vector_units] * 3 + [False]


def test_inference_without_autograd_equals_the_autograd_path():
    module = random_lma(8, seed=12)
    with torch.no_grad():
        module.running_mean.fill_(0.2)
        module.running_std.fill_(1.3)
    module.eval()
    x = torch.randn(6, 40) * 2
    with_autograd = module(x)  # alpha requires grad: the autograd Function
    assert with_autograd.grad_fn is not None
    with torch.no_grad():
        without = module(x)
    assert without.grad_fn is None
    torch.testing.assert_close(without, with_autograd.detach())
    expected, position = reference_lma(x, module.alpha, module.beta, 0.2, 1.3, 8)
    keep = away_from_cuts(position)
    torch.testing.assert_close(without.double()[keep], expected[keep].detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a lent GPU machine)")
@pytest.mark.parametrize("segments", [2, 8, 16])
def test_on_cuda_training_and_evaluation_match_the_float64_definition(segments, implementation):
    """The PyTorch path on a GPU (the fused kernel is CPU-only): forward, the gradients of x, alpha and beta,
    the running statistics, evaluation mode, and finite results under fp16/bf16 autocast."""
    if implementation == "cpu":
        pytest.skip("about the GPU")
    module = random_lma(segments, seed=segments, momentum=0.9).cuda()
    x = (torch.randn(64, 7, 2048) * 2.5 + 0.7).cuda().requires_grad_()
    out = module(x)
    mean, std = population_stats(x.detach().cpu())
    alpha, beta = (p.detach().cpu().double().requires_grad_() for p in (module.alpha, module.beta))
    x64 = x.detach().cpu().double().requires_grad_()
    expected, position = reference_lma(x64, alpha, beta, mean, std, segments)
    keep = away_from_cuts(position)
    grad = torch.randn_like(expected) * keep  # an element at a cut point may take either line: left out
    out.backward(grad.float().cuda())
    expected.backward(grad)
    torch.testing.assert_close(out.detach().cpu().double()[keep], expected.detach()[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.alpha.grad.cpu().double(), alpha.grad, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(module.beta.grad.cpu().double(), beta.grad, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(module.running_mean.cpu().double(), torch.tensor([0.1 * mean], dtype=torch.double))
    torch.testing.assert_close(module.running_std.cpu().double(), torch.tensor([0.9 + 0.1 * std], dtype=torch.double))
    module.eval()
    with torch.no_grad():
        evaluated = module(x.detach()).cpu().double()
    expected, position = reference_lma(x.detach().cpu(), module.alpha.cpu(), module.beta.cpu(),
                                       module.running_mean.item(), module.running_std.item(), segments)
    keep = away_from_cuts(position)
    torch.testing.assert_close(evaluated[keep], expected.detach()[keep], rtol=1e-5, atol=1e-5)
    module.train()
    for half in (torch.float16, torch.bfloat16):
        module.alpha.grad = None
        with torch.autocast("cuda", dtype=half):
            hidden = module(torch.nn.Linear(2048, 2048).cuda()(x.detach()))
        hidden.float().sum().backward()
        assert hidden.dtype == half and torch.isfinite(hidden).all() and torch.isfinite(module.alpha.grad).all()

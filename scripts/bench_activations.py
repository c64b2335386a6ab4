#!/usr/bin/env python
"""Operation-level cost of the feed-forward activations, as ratios to ReLU, measured side by side.

For each activation at feed-forward shapes of the recipes (a training batch of
3192 tokens x 2048 units; one beam-5 decoding step, 5 x 2048), in one process:
  * inference forward (evaluation mode, no autograd), median of repeats;
  * training forward + backward (training mode; LMA computes its batch statistics);
  * bytes autograd keeps for backward (distinct tensors saved by the activation).
Implementations: relu, prelu, swish, aplu-8, "lma-naive" (segment ids as int64 and
alpha / beta gathered into full-size tensors, plain autograd: the straightforward
implementation), the same math under torch.compile (fixed shapes; compiled before
timing), and onmt_lma.LMA on its PyTorch path and on its fused CPU kernel.
Writes results/bench/activations.{json,md}.

    python scripts/bench_activations.py [--repeats 20] [--threads N] [--no-compile]
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from onmt_lma.model import kernels
from onmt_lma.model.activations import build_activation
from onmt_lma.model.lma import DEFAULT_MOMENTUM, DEFAULT_SEGMENTS

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"train batch 3192x2048": (3192, 2048), "decode step 5x2048": (5, 2048)}


class NaiveLMA(nn.Module):
    """LMA as first written: int64 segment ids, alpha / beta gathered to full size, autograd."""

    def __init__(self, segments=DEFAULT_SEGMENTS, momentum=DEFAULT_MOMENTUM):
        super().__init__()
        self.k, self.momentum = segments, momentum
        self.alpha = nn.Parameter(torch.cat([torch.zeros(segments // 2), torch.ones(segments - segments // 2)]))
        self.beta = nn.Parameter(torch.zeros(segments))
        self.register_buffer("running_mean", torch.zeros(1))
        self.register_buffer("running_std", torch.ones(1))

    def forward(self, x):
        if self.training:
            std, mean = torch.std_mean(x.detach(), correction=0)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.running_std.mul_(self.momentum).add_((1 - self.momentum) * std)
        else:
            mean, std = self.running_mean, self.running_std
        j = ((x.detach() - (mean - 3 * std)) / (6 * std / self.k)).floor().clamp(0, self.k - 1).long()
        return self.alpha[j] * x + self.beta[j]


class CompiledLMA(NaiveLMA):
    """NaiveLMA's math compiled by torch.compile (inductor, fixed shapes)."""

    def __init__(self, segments=DEFAULT_SEGMENTS):
        super().__init__(segments)
        self.compiled = torch.compile(NaiveLMA.forward, dynamic=False)

    def forward(self, x):
        return self.compiled(self, x)


def implementations(units, compile_too=True):
    compiled = {"lma-naive, torch.compile": CompiledLMA(8)} if compile_too else {}
    return {
        "relu": build_activation("relu"),
        "prelu": build_activation("prelu", units=units),
        "swish": build_activation("swish", units=units),
        "aplu-8": build_activation("aplu", units=units, segments=8),
        "lma-naive": NaiveLMA(8),
        **compiled,
        "lma, PyTorch path": build_activation("lma", segments=8),
        "lma, fused CPU kernel": build_activation("lma", segments=8),
    }


#: implementation name -> ONMT_LMA_KERNEL while it is measured
KERNEL_CHOICE = {"lma, PyTorch path": "torch", "lma, fused CPU kernel": "cpu"}


def median_seconds(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_bytes(module, x):
    """Bytes of the distinct tensors autograd saves for the backward of ``module(x)``."""
    saved = {}

    def pack(tensor):
        saved[(tensor.data_ptr(), tensor.numel(), tensor.dtype)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    input_key = (x.data_ptr(), x.numel(), x.dtype)
    # the input itself is held by the layer before too; count it like any other saved tensor
    return sum(saved.values()), input_key in saved


def measure_one(module, shape, repeats):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 1.5
    x_train = x.clone().requires_grad_()
    grad = torch.randn(*shape)

    def infer():
        with torch.no_grad():
            module.eval()(x)

    def train():
        x_train.grad = None
        module.train()(x_train).backward(grad)

    bytes_kept, _ = saved_bytes(module.train(), x_train)
    return {
        "inference_forward_s": median_seconds(infer, repeats),
        "train_forward_backward_s": median_seconds(train, repeats),
        "bytes_kept_for_backward": bytes_kept,
    }


def measure(shape, repeats, compile_too=True):
    rows = {}
    for name, module in implementations(shape[1], compile_too).items():
        with kernels.forced(KERNEL_CHOICE.get(name, "auto")):
            rows[name] = measure_one(module, shape, repeats)
    relu = rows["relu"]
    for row in rows.values():
        row["inference_ratio"] = row["inference_forward_s"] / relu["inference_forward_s"]
        row["train_ratio"] = row["train_forward_backward_s"] / relu["train_forward_backward_s"]
        row["bytes_ratio"] = row["bytes_kept_for_backward"] / relu["bytes_kept_for_backward"]
    return rows


def markdown(results, args):
    lines = [
        "# Activation cost, ratios to ReLU",
        "",
        f"`python scripts/bench_activations.py --repeats {args.repeats}` — median of {args.repeats} repeats, "
        f"float32, {torch.get_num_threads()} threads, measured side by side in one process. "
        "Goals (issue: fast LMA): inference ≤ 2x, training forward + backward ≤ 2x, bytes kept ≤ 1.25x.",
        "",
    ]
    for shape, rows in results.items():
        lines += [f"## {shape}", "", "| activation | inference fwd | ratio | train fwd+bwd | ratio | bytes kept | ratio |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {r['inference_forward_s'] * 1e3:.3f} ms | {r['inference_ratio']:.2f} | "
                f"{r['train_forward_backward_s'] * 1e3:.3f} ms | {r['train_ratio']:.2f} | "
                f"{r['bytes_kept_for_backward'] / 2**20:.2f} MiB | {r['bytes_ratio']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to compile)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: measure(shape, args.repeats, not args.no_compile) for name, shape in SHAPES.items()}
    text = markdown(results, args)
    print(text)
    kernel = kernels.cpu_kernel()
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "lma_kernel": kernels.kernel_origin(), "lma_kernel_avx2_path": bool(kernel and kernel.vectorized(8))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "activations.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    (args.out / "activations.md").write_text(text + f"\nMachine: {machine}\n")
    print(f"wrote {args.out / 'activations.json'} and .md")


if __name__ == "__main__":
    main()

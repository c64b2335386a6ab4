#!/usr/bin/env python
"""An LMA-8 model made from a trained ReLU model, for deployment benchmarks of sizes no LMA student has yet.

Every ReLU of the feed-forward blocks becomes an LMA (Xu et al. 2020, method section) whose k lines follow
ReLU as closely as k segments can: slope 0 and 1 on the segments wholly left and right of 0, and on the
segment holding 0 the chord from ``(b_j, 0)`` to ``(b_{j+1}, b_{j+1})``; the running statistics are the
mean and standard deviation of the block's inputs to the activation over ``--sentences`` training pairs
(teacher forcing).  The result has the architecture, the parameters and the decoding cost of a trained LMA
student of that size, and translates nearly as the ReLU model does; it is not one (its lines were never
trained): use it for speed and engine agreement, not for what LMA learns.

    python -m onmt_lma.study.probes.relu_to_lma RELU.pt OUT.pt [--data data/multi30k] [--sentences 500] [--segments 8]
"""

import argparse
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]


def chord_lines(mean, std, segments):
    """(slopes, intercepts) of the k segments of ``mean - 3 std .. mean + 3 std`` nearest to ReLU: 0 and
    identity on the segments wholly left and right of 0, the chord of ReLU on the one holding 0."""
    width = 6.0 * std / segments
    slopes, intercepts = [], []
    for j in range(segments):
        left, right = mean - 3.0 * std + j * width, mean - 3.0 * std + (j + 1) * width
        if right <= 0:
            slopes.append(0.0), intercepts.append(0.0)
        elif left >= 0:
            slopes.append(1.0), intercepts.append(0.0)
        else:
            slope = right / (right - left)
            slopes.append(slope), intercepts.append(-slope * left)
    return torch.tensor(slopes), torch.tensor(intercepts)


def activation_statistics(model, data, sentences, batch=50):
    """Mean and population std of every feed-forward block's activation input, over ``sentences`` pairs."""
    from onmt.modules.position_ffn import PositionwiseFeedForward

    totals = {}

    def hook(name):
        def record(module, inputs, output):
            x = output.detach().double()
            total = totals.setdefault(name, [0.0, 0.0, 0])
            total[0] += x.sum().item()
            total[1] += (x * x).sum().item()
            total[2] += x.numel()
        return record

    handles = [block.w_1.register_forward_hook(hook(name)) for name, block in model.named_modules()
               if isinstance(block, PositionwiseFeedForward)]
    vocabs = model.vocabs
    src_lines = (Path(data) / "train.de").read_text(encoding="utf-8").splitlines()[:sentences]
    tgt_lines = (Path(data) / "train.en").read_text(encoding="utf-8").splitlines()[:sentences]
    with torch.no_grad():
        for start in range(0, len(src_lines), batch):
            src = [vocabs["src"](line.split()) for line in src_lines[start:start + batch]]
            tgt = [vocabs["tgt"](["<s>"] + line.split() + ["</s>"]) for line in tgt_lines[start:start + batch]]
            src_len = torch.tensor([len(s) for s in src])
            src_ids = torch.full((len(src), int(src_len.max())), vocabs["src"]["<blank>"])
            tgt_ids = torch.full((len(tgt), max(len(t) for t in tgt)), vocabs["tgt"]["<blank>"])
            for i, (s, t) in enumerate(zip(src, tgt)):
                src_ids[i, : len(s)], tgt_ids[i, : len(t)] = torch.tensor(s), torch.tensor(t)
            model(src_ids.unsqueeze(-1), tgt_ids.unsqueeze(-1), src_len, with_align=False)
    for handle in handles:
        handle.remove()
    stats = {}
    for name, (total, squares, count) in totals.items():
        mean = total / count
        stats[name] = (mean, max(squares / count - mean * mean, 0.0) ** 0.5)
    return stats


def convert(relu_checkpoint, out, data, sentences=500, segments=8):
    from onmt_lma.deploy import export
    from onmt_lma.base.checkpoint import load as load_checkpoint

    vocabs, model, model_opt = export.load_model(relu_checkpoint)
    if model_opt.pos_ffn_activation_fn != "relu":
        raise SystemExit(f"{relu_checkpoint}: a {model_opt.pos_ffn_activation_fn} model, expected relu")
    model.vocabs = vocabs
    stats = activation_statistics(model, data, sentences)
    checkpoint = load_checkpoint(relu_checkpoint)
    for name, (mean, std) in stats.items():
        slopes, intercepts = chord_lines(mean, std, segments)
        prefix = f"{name}.activation."
        checkpoint["model"][prefix + "alpha"] = slopes
        checkpoint["model"][prefix + "beta"] = intercepts
        checkpoint["model"][prefix + "running_mean"] = torch.tensor([mean], dtype=torch.float32)
        checkpoint["model"][prefix + "running_std"] = torch.tensor([std], dtype=torch.float32)
    checkpoint["opt"].pos_ffn_activation_fn = "lma"
    checkpoint["opt"].lma_segments = segments
    checkpoint["optim"] = None
    torch.save(checkpoint, out)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("relu_checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=500, help="training pairs for the statistics")
    parser.add_argument("--segments", type=int, default=8)
    args = parser.parse_args(argv)
    for name, (mean, std) in convert(args.relu_checkpoint, args.out, args.data, args.sentences,
                                     args.segments).items():
        print(f"{name}: mean {mean:+.3f}, std {std:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

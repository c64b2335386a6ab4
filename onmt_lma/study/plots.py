"""Figures of a report (:mod:`onmt_lma.study.report`): BLEU against student size, validation perplexity over
training steps, the LMA segment study, and the function each LMA layer learned."""

import statistics
from collections import defaultdict
from pathlib import Path

from onmt_lma.study.results import (
    activation_columns,
    activation_label,
    group,
    is_teacher,
    mean_std,
    seed,
    segment_groups,
    train_log,
    validation_curve,
)


def _finish(fig, ax, path, title, xlabel, ylabel):
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plots(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = group(results)
    by_corpus = defaultdict(dict)
    for (corpus, size), cells in groups.items():
        by_corpus[corpus][size] = cells
    for corpus, sizes in by_corpus.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        columns = activation_columns(groups)
        for i, activation in enumerate(columns):
            xs = [size for size in sorted(sizes) if activation in sizes[size]]
            if not xs:
                continue
            # side by side around each size (the x axis is log2), so that error bars do not overlap
            dodge = 2 ** (0.08 * (i - (len(columns) - 1) / 2))
            scores = [[r["bleu"]["score"] for r in sizes[size][activation]] for size in xs]
            stats = [mean_std(values) for values in scores]
            ax.errorbar([size * dodge for size in xs], [mean for mean, _ in stats],
                        yerr=[std or 0 for _, std in stats], marker="o", capsize=3, color=f"C{i}", label=activation)
            for size, values in zip(xs, scores):  # every seed's score
                ax.plot([size * dodge] * len(values), values, "x", color=f"C{i}", alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
        ax.minorticks_off()
        written.append(_finish(
            fig, ax, Path(out_dir) / f"bleu_vs_size_{corpus}.png",
            f"{corpus}: BLEU against student size (mean ± std; x: each seed)",
            "student size (embedding / hidden dimension)", "sacreBLEU (test)",
        ))
        for size, cells in sizes.items():
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = False
            seeds = sorted({seed(r) for runs in cells.values() for r in runs})
            line_styles = dict(zip(seeds, ["-", "--", ":", "-."] * len(seeds)))  # one per seed
            for activation, runs in sorted(cells.items()):
                for i, r in enumerate(runs):
                    log = train_log(r)
                    curve = validation_curve(log) if log else []
                    if curve:
                        ax.plot(*zip(*curve), marker=".", alpha=0.8, color=f"C{activation_columns(groups).index(activation)}",
                                linestyle=line_styles[seed(r)],
                                label=activation if i == 0 else None)
                        drawn = True
            if not drawn:
                plt.close(fig)
                continue
            if len(seeds) > 1:  # legend entries for the line styles
                for number, style in line_styles.items():
                    ax.plot([], [], color="grey", linestyle=style, label=f"seed {number}")
            ax.set_yscale("log")  # early steps are ~20x the late ones; the differences are late
            written.append(_finish(
                fig, ax, Path(out_dir) / f"valid_ppl_{corpus}_{size}.png",
                f"{corpus}, {size}-dim students: validation perplexity",
                # OpenNMT-py validates with the training criterion, label smoothing included:
                # these values sit above the plain test perplexity of the evaluation.
                "training step", "validation perplexity (training log, label-smoothed)",
            ))
    for (corpus, size), cells in sorted(segment_groups(results).items()):
        counts = sorted(cells)
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, runs in enumerate(cells[c] for c in counts):
            ax.plot([counts[i]] * len(runs), [r["bleu"]["score"] for r in runs], "o", color="C4", alpha=0.5)
        ax.plot(counts, [statistics.fmean(r["bleu"]["score"] for r in cells[c]) for c in counts], "-", color="C4",
                label="LMA (mean over seeds)")
        relu = group(results)[(corpus, size)].get("relu")
        if relu:
            ax.axhline(statistics.fmean(r["bleu"]["score"] for r in relu), color="C0", linestyle="--",
                       label="ReLU (mean over seeds)")
        ax.set_xticks(counts)
        written.append(_finish(
            fig, ax, Path(out_dir) / f"segments_{corpus}_{size}.png",
            f"{corpus}, {size}-dim LMA students: segments", "segments k", "sacreBLEU (test)",
        ))
    written += lma_shape_plots(results, out_dir)
    return written


def lma_curve(layer, xs):
    """``h(x)`` of a learned LMA layer (an entry of ``model.learned_lma`` in an
    evaluation), computed by the package's own LMA in evaluation mode."""
    import torch

    from onmt_lma.model.lma import LMA

    module = LMA(len(layer["alpha"])).double().eval()
    with torch.no_grad():
        module.alpha.copy_(torch.tensor(layer["alpha"], dtype=torch.float64))
        module.beta.copy_(torch.tensor(layer["beta"], dtype=torch.float64))
        module.running_mean.fill_(layer["running_mean"])
        module.running_std.fill_(layer["running_std"])
        return module(torch.tensor(xs, dtype=torch.float64)).tolist()


def lma_shape_plots(results, out_dir):
    """``lma_shapes_<corpus>_<size>.png``: the function each LMA layer learned,
    one panel per layer, over its running mean +- 4 running standard deviations.  A result with a ``_label``
    (a study's run label) is drawn under it, else under its activation and seed."""
    import matplotlib.pyplot as plt

    found = defaultdict(list)
    for r in results:
        if not is_teacher(r) and r["model"].get("learned_lma"):
            found[(r["corpus"], r["model"]["hidden_size"])].append(r)
    written = []
    for (corpus, size), runs in sorted(found.items()):
        runs.sort(key=lambda r: (r["model"]["lma_segments"], seed(r)))
        layers = list(runs[0]["model"]["learned_lma"])
        columns = min(3, len(layers))
        rows = -(-len(layers) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
        labels = sorted({activation_label(r["model"]) for r in runs}, key=lambda a: int(a.split("-")[1]))
        run_labels = [r["_label"] for r in runs if "_label" in r]
        for ax, name in zip(axes.flat, layers):
            low = high = None
            for r in runs:
                layer = r["model"]["learned_lma"].get(name)
                if layer is None:
                    continue
                mean, std = layer["running_mean"], layer["running_std"]
                xs = [mean + std * (-4 + 8 * i / 400) for i in range(401)]
                if "_label" in r:
                    label, color = r["_label"], f"C{run_labels.index(r['_label']) % 10}"
                else:
                    label = activation_label(r["model"])
                    label, color = f"{label} seed {r['model'].get('seed')}", f"C{labels.index(label)}"
                ax.plot(xs, lma_curve(layer, xs), color=color, alpha=0.8, linewidth=1, label=label)
                low, high = min(xs[0], low if low is not None else xs[0]), max(xs[-1], high or xs[-1])
            relu_xs = sorted({low, min(max(0.0, low), high), high})
            ax.plot(relu_xs, [max(0.0, x) for x in relu_xs], "k--", linewidth=0.8, label="ReLU")
            ax.set_title(name.replace(".feed_forward.activation", "").replace("transformer_layers", "layer")
                         .replace("transformer", "layer"), fontsize=9)
            ax.set_xlabel("x")
            ax.set_ylabel("h(x)")
        for ax in list(axes.flat)[len(layers):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{corpus}, {size}-dim students: learned LMA functions (evaluation mode)")
        fig.tight_layout()
        path = Path(out_dir) / f"lma_shapes_{corpus}_{size}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

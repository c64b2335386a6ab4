#!/usr/bin/env python
"""Deployment speed: OpenNMT-py (PyTorch) against onmt-lma's ONNX Runtime engine and CTranslate2, float32 and int8.

For each checkpoint: ``onmt_lma_export -int8`` into a temporary folder, then the first ``--sentences``
lines of a prepared corpus's test set translated with beam 5, one sentence at a time and in batches of
32, by OpenNMT-py's translator (``onmt_lma_translate``'s engine), by ``OnnxTranslator`` on the float32
graphs and on the int8 graphs (with where its time goes per decoding step), and (ReLU/GELU/SiLU
checkpoints) by CTranslate2 float32 and int8 (``onmt_lma_convert_ct2``; beam 5, its default length
normalization).  Every configuration of every checkpoint is timed in turn, each in a fresh process (after
loading and a warm-up; in one process, the worker threads an engine leaves spinning slowed the next one by
up to 1.8x), repeat after repeat (``--repeats``, the median kept), so that ratios across checkpoints are
measured side by side; sacreBLEU of each against the detokenized references; sizes on disk (the checkpoint
as model + options in float32, the graphs); each configuration's peak memory.  Writes
``results/bench/deploy.{json,md}``.

    python scripts/bench_deploy.py CHECKPOINT [CHECKPOINT ...] [--data data/multi30k] [--sentences 200]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.deploy import ct2, export
from onmt_lma.base.checkpoint import save
from onmt_lma.training import average
from onmt_lma.evaluation.scoring import postprocess
from onmt_lma.study.benchmark import (ctranslate2_translate, in_fresh_process, machine, model_names,
                                      onnx_translate, pytorch_translate, shown_path)

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)


def engine_for(name, batch, path):
    """The translate function of one configuration: ``path`` is the checkpoint (PyTorch), the export folder
    (ONNX Runtime) or the converted folder (CTranslate2)."""
    if name.startswith("OpenNMT-py"):
        return pytorch_translate(path, batch)
    if name.startswith("ONNX Runtime"):
        return onnx_translate(path, batch, name.endswith("int8"))
    return ctranslate2_translate(path, batch)


def worker(name, batch, path, sources):
    """Run in a fresh process: load one configuration, translate 5 lines to warm up, then time ``sources``.
    Returns sent/s, the translations, the ONNX engine's profile of the timed run, and the peak resident
    memory (MiB) of loading and translating, above what the process held with every library imported."""
    import ctranslate2  # noqa: F401  (imported before the measure: the libraries are not the model's memory)
    import onnxruntime  # noqa: F401
    from onmt.inference_engine import InferenceEnginePY  # noqa: F401

    from onmt_lma.evaluation.measure import _reset_peak_rss, _status_mb

    before = _status_mb("VmRSS")
    _reset_peak_rss()
    translate = engine_for(name, batch, path)
    translate(sources[:5])
    profile = getattr(translate, "profile", None)
    for key in profile or {}:  # the profile counts the timed run only
        profile[key] = 0
    start = time.perf_counter()
    outputs = translate(sources)
    speed = len(sources) / (time.perf_counter() - start)
    return {"sent_per_s": speed, "outputs": outputs, "profile": profile, "memory_mb": _status_mb("VmHWM") - before}


def measured(name, batch, path, args):
    """:func:`worker` in its own process (:func:`in_fresh_process`)."""
    return in_fresh_process(__file__, ["--worker", name, batch, path, "--data", args.data, "--sentences",
                                       args.sentences], f"{name}, batch {batch} ({path})")


def goal_lines(rows):
    """#21's goals, per model and batch size: a student CTranslate2 cannot run, on the ONNX engine, at least as
    fast as CTranslate2 float32 on a ReLU student of the same size, BLEU within 0.1 of OpenNMT-py's; int8 faster
    than float32."""
    def find(**wanted):
        return next((r for r in rows if all(r[k] == v for k, v in wanted.items())), None)

    lines = []
    for row in rows:
        if not row["engine"].startswith("ONNX Runtime"):
            continue
        pytorch = find(model=row["model"], batch=row["batch"], engine="OpenNMT-py (PyTorch)")
        verdict = [f"BLEU {row['bleu'] - pytorch['bleu']:+.2f} vs OpenNMT-py"]
        if row["activation"] not in ct2.CT2_ACTIVATIONS:
            reference = find(batch=row["batch"], engine="CTranslate2 float32", hidden_size=row["hidden_size"])
            verdict.append(f"{row['sentences_per_s'] / reference['sentences_per_s']:.2f}x CTranslate2 float32 on "
                           f"{reference['model']}" if reference else "no same-size CTranslate2 row to compare")
        if row["engine"].endswith("int8"):
            fp32 = find(model=row["model"], batch=row["batch"], engine="ONNX Runtime float32")
            verdict.append(f"{row['sentences_per_s'] / fp32['sentences_per_s']:.2f}x its float32")
        lines.append(f"- {row['model']}, {row['engine']}, batch {row['batch']}: " + "; ".join(verdict))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="*")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "BATCH", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sources = (args.data / "test.de").read_text(encoding="utf-8").splitlines()[: args.sentences]
    if args.worker:
        name, batch, path = args.worker
        print(json.dumps(worker(name, int(batch), path, sources)))
        return
    if not args.checkpoints:
        parser.error("at least one CHECKPOINT")
    references = (args.data / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()[: args.sentences]
    rows, sizes, models = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (checkpoint, name) in enumerate(zip(args.checkpoints, model_names(args.checkpoints))):
            work = Path(tmp) / str(number)
            work.mkdir()
            folder = work / checkpoint.stem
            manifest = export.export(checkpoint, folder, int8=True)
            stripped = work / f"{checkpoint.stem}.fp32.pt"
            save(average.average([checkpoint]), stripped)
            graphs = {"onnx float32": sum((folder / n).stat().st_size for n in manifest["files"]
                                          if n.endswith(".onnx") and not n.endswith(".int8.onnx")),
                      "onnx int8": sum((folder / n).stat().st_size for n in manifest["files"]
                                       if n.endswith(".int8.onnx"))}
            sizes[name] = {"checkpoint float32 (model + options)": stripped.stat().st_size, **graphs}
            label = f"{name} ({manifest['activation']}, {manifest['hidden_size']}-dim)"
            paths = {}
            convertible = manifest["activation"] in ct2.CT2_ACTIVATIONS
            if convertible:  # CTranslate2's runtime, for the activations it has
                for quantization in (None, "int8"):
                    ct2.convert(checkpoint, work / f"{checkpoint.stem}.ct2.{quantization}", quantization)
                sizes[name].update({
                    f"CTranslate2 {q or 'float32'}": (work / f"{checkpoint.stem}.ct2.{q}" / "model.bin").stat().st_size
                    for q in (None, "int8")})
            for batch in BATCHES:
                paths[("OpenNMT-py (PyTorch)", batch)] = checkpoint
                paths[("ONNX Runtime float32", batch)] = paths[("ONNX Runtime int8", batch)] = folder
                if convertible:
                    for quantization in (None, "int8"):
                        paths[(f"CTranslate2 {quantization or 'float32'}", batch)] = (
                            work / f"{checkpoint.stem}.ct2.{quantization}")
            models.append((label, manifest, paths))
        # every configuration of every model in turn, each in a fresh process, repeat after repeat: ratios
        # across models (an LMA student against CTranslate2 on a ReLU one) are measured side by side
        runs = {(label, key): [] for label, _, paths in models for key in paths}
        for repeat in range(args.repeats):
            for label, _, paths in models:
                for key, path in paths.items():
                    print(f"== {label}: {key[0]}, batch {key[1]}, run {repeat + 1}/{args.repeats}", flush=True)
                    runs[(label, key)].append(measured(key[0], key[1], path, args))
        for label, manifest, paths in models:
            for key in paths:
                last = runs[(label, key)][-1]
                outputs = last["outputs"]
                _, detok = postprocess(outputs, args.data)
                profile = last["profile"]
                speeds = [run["sent_per_s"] for run in runs[(label, key)]]
                speed = statistics.median(speeds)
                rows.append({"model": label, "activation": manifest["activation"],
                             "hidden_size": manifest["hidden_size"], "engine": key[0], "batch": key[1],
                             "memory_mb": statistics.median(run["memory_mb"] for run in runs[(label, key)]),
                             "profile": profile and {
                                 "encoder_ms_per_sentence": 1000 * profile["encoder_s"] / profile["sentences"],
                                 "decoder_ms_per_step": 1000 * profile["decoder_s"] / profile["steps"],
                                 "search_ms_per_step": 1000 * profile["search_s"] / profile["steps"],
                                 "decoder_calls_per_sentence": profile["steps"] / profile["sentences"]},
                             "sentences_per_s": speed, "runs": speeds,
                             "target_tokens_per_s": speed * sum(len(o.split()) for o in outputs) / len(sources),
                             "bleu": sacrebleu.corpus_bleu(detok, [references]).score,
                             "same_as_pytorch": sum(a == b for a, b in zip(
                                 outputs, runs[(label, ("OpenNMT-py (PyTorch)", key[1]))][-1]["outputs"]))})
    table = ("| model | engine | batch | sent/s | vs PyTorch | target tok/s | BLEU | lines as PyTorch | memory |\n"
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"]
                    and r["engine"].startswith("OpenNMT-py"))
        table += (f"| {row['model']} | {row['engine']} | {row['batch']} | {row['sentences_per_s']:.1f} | "
                  f"{row['sentences_per_s'] / base['sentences_per_s']:.2f}x | {row['target_tokens_per_s']:.0f} | "
                  f"{row['bleu']:.2f} | {row['same_as_pytorch']}/{len(sources)} | {row['memory_mb']:.0f} MB |\n")
    table += ("\nWhere the ONNX Runtime engine's time goes (the last timed run): the encoder per "
              "sentence; per decoding step (one call of the decoder-step graph for the whole batch) the graph "
              "and the beam search around it (NumPy: scores, top-k, reordering the key/value caches).\n\n"
              "| model | engine | batch | encoder ms/sentence | decoder graph ms/step | beam search ms/step | "
              "decoder calls/sentence |\n| --- | --- | --- | --- | --- | --- | --- |\n")
    for row in rows:
        if row["profile"]:
            p = row["profile"]
            table += (f"| {row['model']} | {row['engine']} | {row['batch']} | {p['encoder_ms_per_sentence']:.2f} | "
                      f"{p['decoder_ms_per_step']:.2f} | {p['search_ms_per_step']:.2f} | "
                      f"{p['decoder_calls_per_sentence']:.1f} |\n")
    columns = list(dict.fromkeys(column for entry in sizes.values() for column in entry))
    table += "\n| model | " + " | ".join(columns) + " |\n|" + " --- |" * (1 + len(columns)) + "\n"
    for name, entry in sizes.items():  # "-": CTranslate2 has no such activation
        table += f"| {name} | " + " | ".join(f"{entry[c] / 1e6:.2f} MB" if c in entry else "-" for c in columns) + " |\n"
    result = {"sentences": len(sources), "beam": 5, "repeats": args.repeats, "rows": rows, "sizes_bytes": sizes,
              "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "deploy.md").write_text(
        "# Deployment: OpenNMT-py against onmt-lma's ONNX Runtime engine\n\n"
        f"`python scripts/bench_deploy.py {' '.join(shown_path(c, REPO) for c in args.checkpoints)} --sentences {len(sources)} "
        f"--repeats {args.repeats}`: the first {len(sources)} sentences of {args.data.name}'s test set, beam 5, "
        "every configuration of every model timed in turn, each in a fresh process (after loading and 5 "
        f"sentences of warm-up), repeat after repeat (median of {args.repeats}); sacreBLEU against the detokenized "
        "references of those sentences; 'lines as PyTorch': translations identical to OpenNMT-py's at the same "
        "batch size; memory: peak resident memory of loading the configuration and translating those "
        "sentences, above what the process held with every library imported (median).  Threads as each engine "
        "takes them by default: one per core.\n\n" + table
        + "\nGoals (an LMA student on the ONNX engine at least as fast as CTranslate2 float32 on the same-size ReLU "
        "student, BLEU within 0.1 of OpenNMT-py's; int8 faster than float32):\n\n" + "\n".join(goal_lines(rows))
        + "\n" + f"\nMachine: {result['machine']}\n")
    print(table)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""#21's speed goal, one sentence at a time, measured in pairs: an LMA student on the ONNX engine against
CTranslate2 float32 on a ReLU student of the same size, each engine with 1 and with 2 intra-op threads.

Repeat after repeat, every configuration translates the same ``--sentences`` test lines (beam 5, batch 1)
in turn, each in a fresh process of its own (timed after loading and a warm-up: in one process, the worker
threads an engine leaves spinning slow down the next one, by up to 1.8x here); each repeat gives each
configuration's sent/s and, within the repeat, its ratio to CTranslate2 on the ReLU student at the same
thread count and at CTranslate2's best count.  Ratios taken within a repeat cancel the slow swings of a
shared machine that move every configuration of that repeat alike; their median is the reading.  Writes ``results/bench/threads.{json,md}``.

    python -m onmt_lma.study.probes.bench_threads RELU_CHECKPOINT LMA_CHECKPOINT [--sentences 60] [--repeats 7]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
THREADS = (1, 2)


def prepare(relu, lma, folder):
    """The converted and exported folders: {(engine, model): folder}."""
    from onmt_lma.bin import convert_ct2 as ct2, export

    ct2.main(["-model", str(relu), "-output", str(folder / "ct2_relu")])
    for name, checkpoint in (("relu", relu), ("lma", lma)):
        export.main(["-model", str(checkpoint), "-output", str(folder / f"onnx_{name}")])
    return {("CTranslate2 float32", "relu"): folder / "ct2_relu",
            ("ONNX Runtime float32", "relu"): folder / "onnx_relu",
            ("ONNX Runtime float32", "lma"): folder / "onnx_lma"}


def worker(engine, folder, threads, source, sentences):
    """In a fresh process: load one configuration, translate 5 lines to warm up, then time ``sentences``
    lines one at a time; prints sent/s.  One configuration per process: the spinning worker threads of
    one engine's pool (OpenMP's, ONNX Runtime's) never take cycles from another's."""
    from onmt_lma.study.benchmark import ctranslate2_translate, onnx_translate

    lines = Path(source).read_text(encoding="utf-8").splitlines()[:sentences]
    engine_of = ctranslate2_translate if engine.startswith("CTranslate2") else onnx_translate
    translate = engine_of(folder, batch=1, threads=threads)
    translate(lines[:5])
    start = time.perf_counter()
    translate(lines)
    print(json.dumps({"sent_per_s": len(lines) / (time.perf_counter() - start)}))


def timed(engine, folder, threads, source, sentences):
    from onmt_lma.study.benchmark import in_fresh_process

    return in_fresh_process(__file__, ["--worker", engine, folder, threads, source, sentences],
                            f"{engine}, {threads} thread(s)")["sent_per_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("relu", type=Path, help="a ReLU student checkpoint")
    parser.add_argument("lma", type=Path, help="an LMA student checkpoint of the same size")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        engine, folder, threads, source, sentences = sys.argv[2:]
        return worker(engine, folder, int(threads), source, int(sentences))
    args = parser.parse_args(argv)
    for path in (args.relu, args.lma):
        if not path.is_file():
            parser.error(f"{path}: no such checkpoint")
    source = args.data / "test.de"
    lines = source.read_text(encoding="utf-8").splitlines()[: args.sentences]
    with tempfile.TemporaryDirectory() as tmp:
        folders = prepare(args.relu, args.lma, Path(tmp))
        rates = {(engine, model, threads): [] for threads in THREADS for engine, model in folders}
        for repeat in range(args.repeats):
            for engine, model, threads in rates:
                rates[(engine, model, threads)].append(
                    timed(engine, folders[(engine, model)], threads, source, len(lines)))
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{e.split()[0]} {m} {t}t {r[-1]:.1f}" for (e, m, t), r in rates.items()), file=sys.stderr)
    ct2 = {t: rates[("CTranslate2 float32", "relu", t)] for t in THREADS}
    best_ct2 = max(THREADS, key=lambda t: statistics.median(ct2[t]))
    rows = []
    for (engine, model, threads), values in rates.items():
        same = [v / c for v, c in zip(values, ct2[threads])]
        best = [v / c for v, c in zip(values, ct2[best_ct2])]
        rows.append({"engine": engine, "model": model, "threads": threads, "sent_per_s": values,
                     "median_sent_per_s": statistics.median(values),
                     "vs_ct2_same_threads": statistics.median(same), "vs_ct2_best": statistics.median(best)})
    from onmt_lma.study.benchmark import machine

    from onmt_lma.study.benchmark import shown_path

    relu, lma = shown_path(args.relu, REPO), shown_path(args.lma, REPO)
    result = {"relu": relu, "lma": lma, "sentences": len(lines), "repeats": args.repeats,
              "ct2_best_threads": best_ct2, "rows": rows, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps(result, indent=1) + "\n")
    command = f"python -m onmt_lma.study.probes.bench_threads {relu} {lma} --sentences {len(lines)} " \
              f"--repeats {args.repeats}"
    md = ["# One sentence at a time: the ONNX engine against CTranslate2 float32, by thread count\n",
          f"`{command}`: the first {len(lines)} test sentences, beam 5, batch 1; every configuration in turn, "
          f"each in a fresh process (timed after loading and 5 sentences of warm-up), "
          f"repeat after repeat; ratios taken within each repeat (the machine's swings cancel), medians of "
          f"{args.repeats}. CTranslate2 on the ReLU student is fastest with {best_ct2} thread(s).\n",
          "| engine | model | threads | sent/s (median) | sent/s per repeat | vs CTranslate2 ReLU, same threads "
          "| vs CTranslate2 ReLU at its best |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        md.append(f"| {row['engine']} | {row['model']} | {row['threads']} | {row['median_sent_per_s']:.1f} | "
                  f"{' '.join(f'{v:.0f}' for v in row['sent_per_s'])} | {row['vs_ct2_same_threads']:.2f}x | "
                  f"{row['vs_ct2_best']:.2f}x |")
    md.append(f"\nMachine: {result['machine']}")
    (args.out / "threads.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

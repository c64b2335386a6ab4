#!/usr/bin/env python
"""Deployment speed: OpenNMT-py (PyTorch) against onmt-lma's ONNX Runtime engine and CTranslate2, float32 and int8.

For each checkpoint: ``onmt_lma_export -int8`` into a temporary folder, then the first ``--sentences``
lines of a prepared corpus's test set translated with beam 5, one sentence at a time and in batches of
32, by OpenNMT-py's translator (``onmt_lma_translate``'s engine), by ``OnnxTranslator`` on the float32
graphs and on the int8 graphs, and (ReLU/GELU/SiLU checkpoints) by CTranslate2 float32 and int8
(``onmt_lma_convert_ct2``; beam 5, its default length normalization); every configuration loaded in this process, timed in alternation
(``--repeats``); sacreBLEU of each against the detokenized references; sizes on disk (the checkpoint
as model + options in float32, the graphs).  Writes ``results/bench/deploy.{json,md}``.

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

from onmt_lma import plugin  # noqa: F401  (installs)
from onmt_lma import average, ct2, export
from onmt_lma.evaluate import _translate_opts, postprocess
from onmt_lma.runtime import OnnxTranslator
from onmt_lma.study.benchmark import machine

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)


def pytorch_engine(checkpoint, src, batch):
    from onmt.inference_engine import InferenceEnginePY

    engine = InferenceEnginePY(_translate_opts(checkpoint, src, "/dev/null", 5, -1, batch))

    def translate(lines):
        _, predictions = engine.infer_list(lines)
        return [n_best[0] for n_best in predictions]
    return translate


def onnx_engine(folder, batch, int8):
    translator = OnnxTranslator(folder, int8=int8)

    def translate(lines):
        return [hypotheses[0][1] for hypotheses in translator.translate(lines, beam_size=5, batch_size=batch)]
    return translate


def ctranslate2_engine(folder, batch):
    import ctranslate2

    translator = ctranslate2.Translator(str(folder), device="cpu", inter_threads=1,
                                        intra_threads=torch.get_num_threads())

    def translate(lines):
        results = translator.translate_batch([line.split() for line in lines], beam_size=5, max_batch_size=batch,
                                             max_decoding_length=250)
        return [" ".join(result.hypotheses[0]) for result in results]
    return translate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args()
    sources = (args.data / "test.de").read_text(encoding="utf-8").splitlines()[: args.sentences]
    references = (args.data / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()[: args.sentences]
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoints:
            folder = Path(tmp) / checkpoint.stem
            manifest = export.export(checkpoint, folder, int8=True)
            stripped = Path(tmp) / f"{checkpoint.stem}.fp32.pt"
            average.save(average.average([checkpoint]), stripped)
            graphs = {"onnx float32": sum((folder / n).stat().st_size for n in manifest["files"]
                                          if n.endswith(".onnx") and not n.endswith(".int8.onnx")),
                      "onnx int8": sum((folder / n).stat().st_size for n in manifest["files"]
                                       if n.endswith(".int8.onnx"))}
            sizes[checkpoint.name] = {"checkpoint float32 (model + options)": stripped.stat().st_size, **graphs}
            label = f"{checkpoint.name} ({manifest['activation']}, {manifest['hidden_size']}-dim)"
            engines = {}
            convertible = manifest["activation"] in ct2.CT2_ACTIVATIONS
            if convertible:  # CTranslate2's runtime, for the activations it has
                for quantization in (None, "int8"):
                    ct2.convert(checkpoint, Path(tmp) / f"{checkpoint.stem}.ct2.{quantization}", quantization)
                sizes[checkpoint.name].update({
                    f"CTranslate2 {q or 'float32'}": (Path(tmp) / f"{checkpoint.stem}.ct2.{q}" / "model.bin").stat().st_size
                    for q in (None, "int8")})
            for batch in BATCHES:
                engines[("OpenNMT-py (PyTorch)", batch)] = pytorch_engine(checkpoint, args.data / "test.de", batch)
                engines[("ONNX Runtime float32", batch)] = onnx_engine(folder, batch, False)
                engines[("ONNX Runtime int8", batch)] = onnx_engine(folder, batch, True)
                if convertible:
                    for quantization in (None, "int8"):
                        engines[(f"CTranslate2 {quantization or 'float32'}", batch)] = ctranslate2_engine(
                            Path(tmp) / f"{checkpoint.stem}.ct2.{quantization}", batch)
            for translate in engines.values():  # warm-up
                translate(sources[:5])
            speeds, outputs = {key: [] for key in engines}, {}
            for repeat in range(args.repeats):
                for key, translate in engines.items():
                    print(f"== {label}: {key[0]}, batch {key[1]}, run {repeat + 1}/{args.repeats}", flush=True)
                    start = time.perf_counter()
                    outputs[key] = translate(sources)
                    speeds[key].append(len(sources) / (time.perf_counter() - start))
            for key in engines:
                _, detok = postprocess(outputs[key], args.data)
                rows.append({"model": label, "engine": key[0], "batch": key[1],
                             "sentences_per_s": statistics.median(speeds[key]), "runs": speeds[key],
                             "target_tokens_per_s": statistics.median(speeds[key]) * sum(
                                 len(o.split()) for o in outputs[key]) / len(sources),
                             "bleu": sacrebleu.corpus_bleu(detok, [references]).score,
                             "same_as_pytorch": sum(a == b for a, b in zip(
                                 outputs[key], outputs[("OpenNMT-py (PyTorch)", key[1])]))})
    table = ("| model | engine | batch | sent/s | vs PyTorch | target tok/s | BLEU | lines as PyTorch |\n"
             "| --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"]
                    and r["engine"].startswith("OpenNMT-py"))
        table += (f"| {row['model']} | {row['engine']} | {row['batch']} | {row['sentences_per_s']:.1f} | "
                  f"{row['sentences_per_s'] / base['sentences_per_s']:.2f}x | {row['target_tokens_per_s']:.0f} | "
                  f"{row['bleu']:.2f} | {row['same_as_pytorch']}/{len(sources)} |\n")
    table += "\n| model | " + " | ".join(next(iter(sizes.values()))) + " |\n|" + " --- |" * (
        1 + len(next(iter(sizes.values())))) + "\n"
    for name, entry in sizes.items():
        table += f"| {name} | " + " | ".join(f"{size / 1e6:.2f} MB" for size in entry.values()) + " |\n"
    result = {"sentences": len(sources), "beam": 5, "repeats": args.repeats, "rows": rows, "sizes_bytes": sizes,
              "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "deploy.md").write_text(
        "# Deployment: OpenNMT-py against onmt-lma's ONNX Runtime engine\n\n"
        f"`python scripts/bench_deploy.py {' '.join(c.name for c in args.checkpoints)} --sentences {len(sources)} "
        f"--repeats {args.repeats}`: the first {len(sources)} sentences of {args.data.name}'s test set, beam 5, "
        "every configuration loaded in one process and timed in alternation; sacreBLEU against the detokenized "
        "references of those sentences; 'lines as PyTorch': translations identical to OpenNMT-py's at the same "
        "batch size.\n\n" + table + f"\nMachine: {result['machine']}\n")
    print(table)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Deployment speed: OpenNMT-py (PyTorch) against onmt-lma's native and ONNX Runtime engines and CTranslate2.

For each checkpoint: ``onmt_lma_export -int8`` into a temporary folder (the native engine's weights, float32
and int8 graphs), then the first ``--sentences`` lines of a prepared corpus's test set translated with beam
5, one sentence at a time and in batches of 32, by every engine of :data:`ENGINES`: OpenNMT-py's translator
(``onmt_lma_translate``'s engine), the native engine (float32; int8: PyTorch's dynamically quantized Linear),
the ONNX Runtime engine on the float32 and int8 graphs (with where each engine's time goes per decoding
step), and (ReLU/GELU/SiLU checkpoints) CTranslate2 float32 and int8 (``onmt_lma_convert_ct2``; beam 5, its
default length normalization); threads as each engine takes them by default (one per core), and 1 thread
for the native engine and CTranslate2 float32.  Every configuration of every checkpoint is timed in turn,
each in a fresh process (after loading and a warm-up; in one process, the worker threads an engine leaves
spinning slowed the next one by up to 1.8x), repeat after repeat (``--repeats``, the median kept), so that
ratios across checkpoints are measured side by side; sacreBLEU of each against the detokenized references;
sizes on disk (the checkpoint as model + options in float32, what each engine loads); each configuration's
peak memory.  Then each float32 engine once more as a whole process, as a user runs it (the command from its
start to its exit: imports, loading, reading and writing the files).  Writes ``results/bench/deploy.{json,md}``.

    python scripts/bench_deploy.py CHECKPOINT [CHECKPOINT ...] [--data data/multi30k] [--sentences 200]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.deploy import ct2, export
from onmt_lma.base.checkpoint import save
from onmt_lma.training import average
from onmt_lma.evaluation.scoring import postprocess
from onmt_lma.study.benchmark import (ctranslate2_translate, in_fresh_process, machine, model_names,
                                      native_translate, onnx_translate, pytorch_translate, shown_path)

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)
PYTORCH = "OpenNMT-py (PyTorch)"
#: every configuration timed: engine name -> (engine, int8, threads; None: the engine's default, one per core)
ENGINES = {PYTORCH: ("pytorch", False, None),
           "onmt-lma native float32": ("native", False, None), "onmt-lma native int8": ("native", True, None),
           "onmt-lma native float32, 1 thread": ("native", False, 1),
           "ONNX Runtime float32": ("onnx", False, None), "ONNX Runtime int8": ("onnx", True, None),
           "CTranslate2 float32": ("ct2", False, None), "CTranslate2 int8": ("ct2", True, None),
           "CTranslate2 float32, 1 thread": ("ct2", False, 1)}
OURS = ("native", "onnx")
#: CTranslate2 as a user runs it on a tokenized file: its Python package has no command of its own
CT2_COMMAND = ("import sys, ctranslate2; ctranslate2.Translator(sys.argv[1], device='cpu').translate_file("
               "sys.argv[2], sys.argv[3], max_batch_size=int(sys.argv[4]), beam_size=5, max_decoding_length=250)")


def engine_for(name, batch, path):
    """The translate function of one configuration: ``path`` is the checkpoint (PyTorch), the export folder
    (native, ONNX Runtime) or the converted folder (CTranslate2)."""
    engine, int8, threads = ENGINES[name]
    if engine == "pytorch":
        return pytorch_translate(path, batch)
    if engine == "native":
        return native_translate(path, batch, int8, threads)
    if engine == "onnx":
        return onnx_translate(path, batch, int8, threads)
    return ctranslate2_translate(path, batch, threads)


def whole_process(engine, path, src, batch, out):
    """Seconds of one translation of ``src`` as a command, from its start to its exit."""
    if engine == "ct2":
        command = [sys.executable, "-c", CT2_COMMAND, str(path), str(src), str(out), str(batch)]
    else:
        command = [str(Path(sys.executable).parent / "onmt_lma_translate"), "-model", str(path), "-src", str(src),
                   "-output", str(out), "-beam_size", "5", "-batch_size", str(batch), "-engine", engine]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def worker(name, batch, path, sources):
    """Run in a fresh process: load one configuration, translate 5 lines to warm up, then time ``sources``.
    Returns sent/s, the translations, our engines' profile of the timed run, and the peak resident
    memory (MiB) of loading and translating, above what the process held with every library imported."""
    import ctranslate2  # noqa: F401  (imported before the measure: the libraries are not the model's memory)
    import onnxruntime  # noqa: F401
    from onmt.inference_engine import InferenceEnginePY  # noqa: F401

    from onmt_lma.evaluation.measure import _reset_peak_rss, _status_mb
    from onmt_lma.model import kernels

    kernels.engine_module()

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
    """#38's goals, per model and batch size: each of our engines at least as fast as CTranslate2 at the same
    precision and threads on the ReLU model of the same size (1.0x), for every activation; its lines
    identical to OpenNMT-py's at the same batch size (float32)."""
    def find(**wanted):
        return next((r for r in rows if all(r[k] == v for k, v in wanted.items())), None)

    lines = []
    for row in rows:
        engine, int8, threads = ENGINES[row["engine"]]
        if engine not in OURS:
            continue
        pytorch = find(model=row["model"], batch=row["batch"], engine=PYTORCH)
        verdict = [f"{row['same_as_pytorch']}/{pytorch['sentences']} lines as OpenNMT-py, "
                   f"BLEU {row['bleu'] - pytorch['bleu']:+.2f}"]
        rival = next((name for name, spec in ENGINES.items() if spec == ("ct2", int8, threads)), None)
        reference = rival and find(batch=row["batch"], engine=rival, hidden_size=row["hidden_size"])
        if reference:
            ratio = row["sentences_per_s"] / reference["sentences_per_s"]
            verdict.append(f"{ratio:.2f}x {rival} on {reference['model']}: {'met' if ratio >= 1 else 'MISSED'}")
        else:
            verdict.append("no CTranslate2 row at this precision, threads and size to compare")
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
    rows, sizes, models, processes = [], {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.de"
        src.write_text("".join(line + "\n" for line in sources), encoding="utf-8")
        for number, (checkpoint, name) in enumerate(zip(args.checkpoints, model_names(args.checkpoints))):
            work = Path(tmp) / str(number)
            work.mkdir()
            folder = work / checkpoint.stem
            manifest = export.export(checkpoint, folder, int8=True)
            stripped = work / f"{checkpoint.stem}.fp32.pt"
            save(average.average([checkpoint]), stripped)
            loaded = {"native": [n for n in manifest["files"] if n == "native.pt"],
                      "onnx float32": [n for n in manifest["files"] if n.endswith(".onnx")
                                       and not n.endswith(".int8.onnx")],
                      "onnx int8": [n for n in manifest["files"] if n.endswith(".int8.onnx")]}
            sizes[name] = {"checkpoint float32 (model + options)": stripped.stat().st_size,
                           **{key: sum((folder / n).stat().st_size for n in names) for key, names in loaded.items()}}
            label = f"{name} ({manifest['activation']}, {manifest['hidden_size']}-dim)"
            convertible = manifest["activation"] in ct2.CT2_ACTIVATIONS
            converted = {int8: work / f"{checkpoint.stem}.ct2.{'int8' if int8 else 'float32'}" for int8 in (False, True)}
            if convertible:  # CTranslate2's runtime, for the activations it has
                for int8, out in converted.items():
                    ct2.convert(checkpoint, out, "int8" if int8 else None)
                    sizes[name][f"CTranslate2 {'int8' if int8 else 'float32'}"] = (out / "model.bin").stat().st_size
            paths = {}
            for batch in BATCHES:
                for engine_name, (engine, int8, _) in ENGINES.items():
                    if engine == "ct2" and not convertible:
                        continue
                    paths[(engine_name, batch)] = {"pytorch": checkpoint, "ct2": converted[int8]}.get(engine, folder)
            models.append((label, manifest, paths))
            processes += [(label, engine, batch, {"pytorch": checkpoint, "ct2": converted[False]}.get(engine, folder))
                          for batch in BATCHES for engine in ("pytorch", *OURS, "ct2")
                          if engine != "ct2" or convertible]
        # every configuration of every model in turn, each in a fresh process, repeat after repeat: ratios
        # across models (an LMA student against CTranslate2 on a ReLU one) are measured side by side
        runs = {(label, key): [] for label, _, paths in models for key in paths}
        for repeat in range(args.repeats):
            for label, _, paths in models:
                for key, path in paths.items():
                    print(f"== {label}: {key[0]}, batch {key[1]}, run {repeat + 1}/{args.repeats}", flush=True)
                    runs[(label, key)].append(measured(key[0], key[1], path, args))
        whole = []
        for label, engine, batch, path in processes:
            print(f"== {label}: {engine} as a command, batch {batch}", flush=True)
            seconds = whole_process(engine, path, src, batch, Path(tmp) / "out")
            whole.append({"model": label, "engine": engine, "batch": batch, "seconds": seconds,
                          "sentences_per_s": len(sources) / seconds})
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
                             "sentences": len(sources),
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
                                 outputs, runs[(label, (PYTORCH, key[1]))][-1]["outputs"]))})
    table = ("| model | engine | batch | sent/s | vs PyTorch | target tok/s | BLEU | lines as PyTorch | memory |\n"
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"]
                    and r["engine"] == PYTORCH)
        table += (f"| {row['model']} | {row['engine']} | {row['batch']} | {row['sentences_per_s']:.1f} | "
                  f"{row['sentences_per_s'] / base['sentences_per_s']:.2f}x | {row['target_tokens_per_s']:.0f} | "
                  f"{row['bleu']:.2f} | {row['same_as_pytorch']}/{len(sources)} | {row['memory_mb']:.0f} MB |\n")
    table += ("\nAs a user runs it: each float32 engine once as a command on the same lines, from its start to "
              "its exit (`onmt_lma_translate -engine pytorch|native|onnx -beam_size 5 -batch_size B`; CTranslate2: "
              "`Translator.translate_file` in a `python -c` process, its package having no command), so that "
              "the start (imports, loading the model) counts.\n\n"
              "| model | engine | batch | seconds | sent/s |\n| --- | --- | --- | --- | --- |\n")
    for entry in whole:
        table += (f"| {entry['model']} | {entry['engine']} | {entry['batch']} | {entry['seconds']:.1f} | "
                  f"{entry['sentences_per_s']:.1f} |\n")
    table += ("\nWhere our engines' time goes (the last timed run): the encoder per sentence; per decoding step "
              "(one decoder step for the whole batch) the decoder and the beam search around it (native: in C++; "
              "ONNX Runtime: NumPy: scores, top-k, reordering the key/value caches).\n\n"
              "| model | engine | batch | encoder ms/sentence | decoder ms/step | beam search ms/step | "
              "decoder calls/sentence |\n| --- | --- | --- | --- | --- | --- | --- |\n")
    for row in rows:
        if row["profile"]:
            p = row["profile"]
            table += (f"| {row['model']} | {row['engine']} | {row['batch']} | {p['encoder_ms_per_sentence']:.2f} | "
                      f"{p['decoder_ms_per_step']:.2f} | {p['search_ms_per_step']:.2f} | "
                      f"{p['decoder_calls_per_sentence']:.1f} |\n")
    columns = list(dict.fromkeys(column for entry in sizes.values() for column in entry))
    table += ("\nSizes on disk of what each engine loads (besides the vocabularies and manifest; the native "
              "engine's int8 quantizes native.pt's weights as it loads them).\n\n| model | " + " | ".join(columns)
              + " |\n|" + " --- |" * (1 + len(columns)) + "\n")
    for name, entry in sizes.items():  # "-": CTranslate2 has no such activation
        table += f"| {name} | " + " | ".join(f"{entry[c] / 1e6:.2f} MB" if c in entry else "-" for c in columns) + " |\n"
    result = {"sentences": len(sources), "beam": 5, "repeats": args.repeats, "rows": rows, "whole_process": whole,
              "sizes_bytes": sizes, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "deploy.md").write_text(
        "# Deployment: OpenNMT-py against onmt-lma's native and ONNX Runtime engines and CTranslate2\n\n"
        f"`python scripts/bench_deploy.py {' '.join(shown_path(c, REPO) for c in args.checkpoints)} --sentences {len(sources)} "
        f"--repeats {args.repeats}`: the first {len(sources)} sentences of {args.data.name}'s test set, beam 5, "
        "every configuration of every model timed in turn, each in a fresh process (after loading and 5 "
        f"sentences of warm-up), repeat after repeat (median of {args.repeats}); sacreBLEU against the detokenized "
        "references of those sentences; 'lines as PyTorch': translations identical to OpenNMT-py's at the same "
        "batch size; memory: peak resident memory of loading the configuration and translating those "
        "sentences, above what the process held with every library imported (median).  Threads as each engine "
        "takes them by default (one per core) unless the engine's name says 1 thread.\n\n" + table
        + "\nGoals (#38: each of our engines, for every activation, at least as fast as CTranslate2 at the same "
        "precision and threads on the same-size ReLU student; float32 lines identical to OpenNMT-py's):\n\n"
        + "\n".join(goal_lines(rows)) + "\n" + f"\nMachine: {result['machine']}\n")
    print(table)


if __name__ == "__main__":
    main()

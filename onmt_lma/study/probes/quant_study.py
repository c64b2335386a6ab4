#!/usr/bin/env python
"""LMA with quantization: fp32, int8 post-training and quantization-aware distillation at 8, 4 and 2 bits.

For each trained student (``--student relu=CK --student lma=CK``, training checkpoints
``model_step_N.pt`` with their optimizer) on a prepared corpus (recipes/<corpus>/student64.yaml):

* ``fp32`` -- the checkpoint as trained (every configuration evaluated without optimizer state);
* ``int8 post-training`` -- ``onmt_lma_quantize -embeddings`` (int8 linear layers and embeddings);
* ``fp32 (ONNX Runtime)`` and ``int8 post-training (ONNX Runtime)`` -- the checkpoint's
  ``onmt_lma_export`` graphs, float32 and with ONNX Runtime's dynamic int8 quantization of the matrix
  products, translated by ``-engine onnx`` (the deployment route; the float32 row separates the engine's
  speed from int8's);
* ``fp32 fine-tuned`` -- the same ``--steps`` of distillation as the quantization-aware runs, without
  quantization: the control that separates "more training" from "quantized";
* ``B-bit QAT`` -- ``-train_from CK -quant_bits B`` for ``--steps`` steps, distilled from the teacher
  as in training (Polino et al. 2018, buckets of 256), exported by ``onmt_lma_quantize`` as packed
  B-bit codes, and evaluated from that export (its size on disk is the real low-bit storage).

Each configuration is evaluated by ``onmt_lma.evaluation.evaluate`` on the corpus's test set (beam 5, one
sentence at a time: sacreBLEU, tokenized BLEU, chrF, perplexity, size, speed, peak memory), one after
another in this run, configuration by configuration (both students before the next one; the cheap ones
first, then 4-bit, the control, the other bit widths), so that a stopped run has paired rows.  The table gives every student's rows and, with both ``relu`` and ``lma``, LMA's
gap to ReLU in each configuration (the paper's claim: it holds or grows under quantization).

Goals (stated before the runs): int8 post-training within 0.3 BLEU of fp32, at least 1.5x faster and
3.5x smaller; 4-bit quantization-aware within 1.5 BLEU of fp32.

    python -m onmt_lma.study.probes.quant_study run --student relu=CK --student lma=CK --teacher T [--kd-cache K]
           [--data data/multi30k] [--runs runs/quant] [--steps 300] [--bits 8 4 2] [--out results/quant]
    python -m onmt_lma.study.probes.quant_study report [--runs runs/quant] [--out results/quant]

The students' fine-tunings of a configuration train at once (one process each; ``--one-at-a-time`` not),
their evaluations one after another.  Resumable: every fine-tuning, export and evaluation is skipped once finished.  Writes
``OUT/qat.{json,md}`` with paths relative to the runs folder.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
BITS = (8, 4, 2)
STEPS = 300
GOALS = {"int8_bleu": 0.3, "int8_speedup": 1.5, "int8_smaller": 3.5, "4bit_bleu": 1.5}


class StudyInputError(ValueError):
    """A student, teacher or option that the study cannot use."""


def parse_student(text):
    label, _, path = text.partition("=")
    if not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=CHECKPOINT (e.g. relu=runs/x/model_step_2750.pt)")
    return label, Path(path)


def training_step(checkpoint):
    """(the step a training checkpoint was saved at (its optimizer's), its activation, its seed); an error for
    one without optimizer."""
    from onmt_lma.base.checkpoint import CheckpointError
    from onmt_lma.base.checkpoint import load as load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as error:
        raise StudyInputError(f"--student: {error}") from None
    if not state.get("optim"):
        raise StudyInputError(f"{checkpoint}: no optimizer state (an averaged or released model?); "
                              "fine-tuning continues a training checkpoint, model_step_N.pt")
    # OpenNMT-py's optimizer counts from 1: after N steps it holds N + 1, and training resumes at step N + 1
    return int(state["optim"]["training_step"]) - 1, state["opt"].pos_ffn_activation_fn, state["opt"].seed


ONNX_FP32, ONNX_INT8 = "fp32 (ONNX Runtime)", "int8 post-training (ONNX Runtime)"


def configurations(bits):
    """``{name: quantization-aware bits, None for float, "int8" for post-training, "onnx"/"onnx int8" for the
    export's graphs}`` in table order."""
    return {"fp32": None, "int8 post-training": "int8", ONNX_FP32: "onnx", ONNX_INT8: "onnx int8",
            "fp32 fine-tuned": 0, **{f"{b}-bit QAT": b for b in bits}}


def run_order(bits):
    """The configurations' names, cheapest and most asked-for first (the 4-bit goal before the control)."""
    names = list(configurations(bits))
    first = names[:4] + [f"{b}-bit QAT" for b in bits if b == 4] + ["fp32 fine-tuned"]
    return first + [name for name in names if name not in first]


def fine_tune(label, checkpoint, bits, args):
    """The fine-tuned (``bits`` 0: float) checkpoint of one student, trained once."""
    from onmt_lma.study import recipes

    run_dir, settings = fine_tuning(label, checkpoint, bits, args)
    return recipes.train(args.data.name, "student64", args.data, run_dir, settings)


def fine_tune_at_once(students, bits, args):
    """The students' fine-tunings of one configuration trained at once (:func:`train_at_once`);
    :func:`fine_tune` then finds them finished."""
    train_at_once([fine_tuning(label, checkpoint, bits, args) for label, checkpoint in students], args.data)


def train_at_once(runs, data):
    """``runs`` ((run folder, settings) of the student64 recipe on the corpus at ``data``) trained at once, one
    process and one thread each (1.4x the throughput of one process with every core on 2 cores:
    results/bench/parallel_training.md); finished ones (DONE) skipped."""
    import os
    import subprocess

    from onmt_lma.study.budgeted import recipe_command

    processes = []
    for run_dir, settings in runs:
        if (run_dir / "DONE").exists():
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        command = recipe_command(argparse.Namespace(corpus=data.name), "student64", run_dir,
                                 argparse.Namespace(data=data), settings)
        with open(run_dir / "stdout.log", "a") as out:
            processes.append((run_dir, subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(runs)))})))
    if processes:
        print(f"[quant] fine-tuning {', '.join(d.name for d, _ in processes)} at once", flush=True)
    failed = [str(run_dir / "stdout.log") for run_dir, process in processes if process.wait() != 0]
    if failed:
        raise RuntimeError(f"fine-tuning failed: see {', '.join(failed)}")


def fine_tuning(label, checkpoint, bits, args):
    """The run folder and settings of one student's fine-tuning (``bits`` 0: float)."""
    from onmt_lma.study import sequential

    start, activation, seed = training_step(checkpoint)
    distil = (("kd_cache", str(sequential.teacher_cache(args.data.name, args.teacher.resolve(), args.data.parent,
                                                  args.kd_cache)))
              if args.kd_cache else ("kd_teacher", str(args.teacher.resolve())))
    # the student's own seed (OpenNMT-py's default, -1, seeds nothing: every process then draws other batches
    # and dropout), so that two students of one seed fine-tune on the same batches in the same order
    settings = [("pos_ffn_activation_fn", activation), ("seed", seed if seed > 0 else 1),
                ("train_from", str(checkpoint.resolve())), distil,
                ("train_steps", start + args.steps), ("valid_steps", args.steps),
                ("save_checkpoint_steps", min(100, args.steps))]  # resumable
    if bits:
        settings.append(("quant_bits", bits))
    return args.runs / f"{label}_{f'qat{bits}' if bits else 'fp32'}_{args.steps}", settings + args.extra


def exported(checkpoint, bits):
    """The packed ``bits``-bit export of a quantization-aware checkpoint (onmt_lma_quantize)."""
    from onmt_lma.bin import quantize

    out = checkpoint.with_suffix(f".{bits}bit.pt")
    if not out.is_file():
        partial = out.with_suffix(".partial.pt")
        quantize.main(["-model", str(checkpoint), "-output", str(partial)])
        partial.replace(out)
    return out


def model_for(label, checkpoint, setting, args):
    """The checkpoint (or export folder) evaluated for one configuration (trained, quantized or exported on
    the way)."""
    from onmt_lma.bin.evaluate import export_of, int8_version

    if setting is None:  # in the runs folder, so that the evaluation's files go there
        return model_only(checkpoint, args.runs / label / checkpoint.name)
    if setting == "int8":
        return Path(int8_version(model_for(label, checkpoint, None, args)))
    if setting in ("onnx", "onnx int8"):  # LABEL/model_step_N.pt.onnx/, float32 and int8 graphs
        return export_of(model_for(label, checkpoint, None, args), "onnx")
    tuned = fine_tune(label, checkpoint, setting, args)
    return exported(tuned, setting) if setting else model_only(tuned, tuned.with_suffix(".float32.pt"))


def model_only(checkpoint, out):
    """``checkpoint`` without its optimizer state (what one deploys; sizes compare like with like)."""
    from onmt_lma.base import checkpoint as checkpoints
    from onmt_lma.training import average

    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.save(average.average([checkpoint]), out)
    return out


def run(args):
    from onmt_lma.evaluation import evaluate
    from onmt_lma.evaluation.measure import Translation

    settings = configurations(args.bits)
    for name in run_order(args.bits):
        if isinstance(settings[name], int) and args.parallel and len(args.student) > 1:
            fine_tune_at_once(args.student, settings[name], args)
        for label, checkpoint in args.student:
            setting = settings[name]
            model = model_for(label, checkpoint, setting, args)
            int8 = setting == "onnx int8"
            out = Path(f"{model}.int8.eval.json" if int8 else f"{model}.eval.json")
            if not out.is_file():
                evaluate.evaluate(model, args.data, out, Translation(
                    "onnx" if setting in ("onnx", "onnx int8") else "pytorch", int8))
            print(f"[quant] {label}, {name}: {json.loads(out.read_text())['bleu']['score']:.2f} BLEU", flush=True)


def collect(args):
    """``{label: {configuration: evaluation}}`` of what has been evaluated, paths relative to the runs folder."""
    results = {}
    for evaluation in sorted(args.runs.glob("**/*.eval.json")):
        label = evaluation.relative_to(args.runs).parts[0].split("_")[0]
        name = configuration_of(evaluation.relative_to(args.runs), args.steps)
        if name is not None:
            results.setdefault(label, {})[name] = {**json.loads(evaluation.read_text()), "evaluated": evaluation}
    return results


def configuration_of(relative, steps):
    """The configuration an evaluation file belongs to, from where :func:`run` put it (fine-tuned runs of
    ``steps`` steps only: LABEL_KIND_STEPS)."""
    folder, file = relative.parts[0], relative.name
    if "_" not in folder:  # LABEL/model_step_N.pt[.int8.pt|.onnx|.onnx.int8].eval.json
        for ending, name in ((".int8.pt.eval.json", "int8 post-training"), (".onnx.eval.json", ONNX_FP32),
                             (".onnx.int8.eval.json", ONNX_INT8)):
            if file.endswith(ending):
                return name
        return "fp32"
    _, kind, run_steps = folder.split("_")
    if run_steps != str(steps):
        return None
    if kind == "fp32":
        return "fp32 fine-tuned"
    return f"{kind[3:]}-bit QAT" if file.endswith("bit.pt.eval.json") else None


def row(evaluation, base):
    speed = evaluation["speed"]["sentences_per_s"]
    return {"bleu": evaluation["bleu"]["score"],
            "bleu_tok": evaluation["bleu_tok"]["score"] if evaluation["bleu_tok"] else None,
            "chrf": evaluation["chrf"]["score"], "ppl": evaluation["ppl"], "size_mb": evaluation["size_mb"],
            "sentences_per_s": speed, "memory_mb": evaluation["memory"]["peak_mb"],
            "bleu_vs_fp32": evaluation["bleu"]["score"] - base["bleu"]["score"],
            "speedup": speed / base["speed"]["sentences_per_s"], "smaller": base["size_mb"] / evaluation["size_mb"]}


def met(holds):
    return "met" if holds else "missed"


def report(args):
    results = collect(args)
    order = list(configurations(args.bits))
    table = {label: {name: row(by_name[name], by_name["fp32"]) for name in order if name in by_name}
             for label, by_name in results.items() if "fp32" in by_name}
    lines = ["| student | configuration | BLEU | tok. BLEU | chrF | ppl | BLEU vs fp32 | size MB | smaller | "
             "sent/s | speed vs fp32 | memory MB |", "| --- " * 12 + "|"]
    for label, rows in table.items():
        for name, r in rows.items():
            tok = "" if r["bleu_tok"] is None else f"{r['bleu_tok']:.2f}"
            lines.append(f"| {label} | {name} | {r['bleu']:.2f} | {tok} | {r['chrf']:.2f} | "
                         f"{r['ppl']:.2f} | {r['bleu_vs_fp32']:+.2f} | {r['size_mb']:.1f} | {r['smaller']:.1f}x | "
                         f"{r['sentences_per_s']:.1f} | {r['speedup']:.2f}x | {r['memory_mb']:.0f} |")
    gaps = []
    if "relu" in table and "lma" in table:
        gaps = ["", "LMA − ReLU, sacreBLEU, per configuration: " + "; ".join(
            f"{name} {table['lma'][name]['bleu'] - table['relu'][name]['bleu']:+.2f}"
            for name in order if name in table["lma"] and name in table["relu"])]
    goals = []
    for label, rows in table.items():
        for name in ("int8 post-training", ONNX_INT8):
            int8 = rows.get(name)
            if int8:
                versus_onnx = (f", {int8['sentences_per_s'] / rows[ONNX_FP32]['sentences_per_s']:.2f}x ONNX Runtime "
                               "float32" if name == ONNX_INT8 and ONNX_FP32 in rows else "")
                goals.append(
                    f"- {label}, {name}: BLEU {int8['bleu_vs_fp32']:+.2f} (goal within {GOALS['int8_bleu']}: "
                    f"{met(int8['bleu_vs_fp32'] >= -GOALS['int8_bleu'])}), speed {int8['speedup']:.2f}x PyTorch "
                    f"float32 (goal {GOALS['int8_speedup']}x: {met(int8['speedup'] >= GOALS['int8_speedup'])})"
                    f"{versus_onnx}, {int8['smaller']:.1f}x smaller (goal {GOALS['int8_smaller']}x: "
                    f"{met(int8['smaller'] >= GOALS['int8_smaller'])})")
        control = rows.get("fp32 fine-tuned")
        for bits in sorted(args.bits, reverse=True):
            qat = rows.get(f"{bits}-bit QAT")
            if not qat:
                continue
            goal = (f" (goal within {GOALS['4bit_bleu']}: {met(qat['bleu_vs_fp32'] >= -GOALS['4bit_bleu'])})"
                    if bits == 4 else "")
            against_control = (f"; {qat['bleu'] - control['bleu']:+.2f} vs fp32 fine-tuned, the same "
                               f"{args.steps} steps without quantization" if control else "")
            goals.append(f"- {label}, {bits}-bit QAT: BLEU {qat['bleu_vs_fp32']:+.2f} vs fp32{goal}{against_control}")
    sources = {label: {name: e["evaluated"].relative_to(args.runs).as_posix().removesuffix(".eval.json")
                       for name, e in by_name.items()} for label, by_name in results.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qat.json").write_text(json.dumps({"steps": args.steps, "bits": list(args.bits), "goals": GOALS,
                                                   "rows": table, "checkpoints": sources}, indent=1) + "\n")
    text = ("# Quantization of trained students: int8 post-training and quantization-aware distillation\n\n"
            f"`python -m onmt_lma.study.probes.quant_study`: each student as trained (fp32), int8 post-training "
            f"(`onmt_lma_quantize -embeddings`), its ONNX graphs float32 and int8 on ONNX Runtime "
            f"(`onmt_lma_evaluate -engine onnx [-int8]`), {args.steps} more steps of distillation without (fp32 fine-tuned, "
            "the control) and with quantization-aware training at each bit width (buckets of 256, exported as packed "
            "codes); test set, beam 5, one sentence at a time, evaluated one after another in one run "
            "(`onmt_lma.evaluation.evaluate`; memory: the translating process's peak resident memory above what it held before "
            "loading the model).\n\n" + "\n".join(lines + gaps) + "\n\n" + "\n".join(goals) + "\n")
    (args.out / "qat.md").write_text(text)
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "report"))
    parser.add_argument("--student", type=parse_student, action="append", default=[], metavar="LABEL=CHECKPOINT")
    parser.add_argument("--teacher", type=Path, help="the students' teacher (run)")
    parser.add_argument("--kd-cache", type=int, metavar="K", help="distil from the teacher's top-K cache")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="a prepared corpus")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quant")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "quant")
    parser.add_argument("--steps", type=int, default=STEPS, help="fine-tuning steps of every trained configuration")
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    parser.add_argument("--one-at-a-time", dest="parallel", action="store_false",
                        help="fine-tune the students one after another (default: at once, one process each)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every fine-tuning run")
    args = parser.parse_args(argv)
    from onmt_lma.study.recipes import parse_setting

    args.extra = [parse_setting(s) for s in args.extra]
    args.data, args.runs = args.data.resolve(), args.runs.resolve()  # one spelling in every run's config
    if any(not 2 <= b <= 8 for b in args.bits):
        parser.error(f"--bits {args.bits}: each from 2 to 8")
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: at least 1")
    if args.action == "run":
        if not args.student:
            parser.error("--student LABEL=CHECKPOINT: at least one")
        if len({label for label, _ in args.student}) != len(args.student) or any(
                "_" in label or "/" in label for label, _ in args.student):
            parser.error("--student: labels must differ and hold no '_' or '/'")
        if args.teacher is None or not args.teacher.is_file():
            parser.error(f"--teacher: a teacher checkpoint is needed, got {args.teacher}")
        if not (args.data / "data.yaml").is_file():
            parser.error(f"--data {args.data}: no prepared corpus (python -m data_prep)")
        try:
            for _, checkpoint in args.student:
                training_step(checkpoint)
            run(args)
        except StudyInputError as error:
            parser.error(str(error))
    report(args)


if __name__ == "__main__":
    sys.exit(main())

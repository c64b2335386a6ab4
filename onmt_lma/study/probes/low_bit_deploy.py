"""Low-bit students deployed: fp32, int8, post-training and quantization-aware 4- and 2-bit weights on the ONNX
and native engines.

    python -m onmt_lma.study.probes.low_bit_deploy run [--student relu=CK --student lma=CK] [--data data/multi30k]
           [--runs runs/quant_deploy]
    python -m onmt_lma.study.probes.low_bit_deploy report [--runs runs/quant_deploy] [--out results/quant]

For each student (default: the converged study's released 64-dim ReLU at twice the peak and LMA-8, seed 1):

* ``fp32`` and ``int8`` -- its ``onmt_lma_export -int8`` folder (float32 graphs; ONNX Runtime's dynamic int8);
* ``4-bit PTQ`` -- ``onmt_lma_quantize -bits 4 -embeddings`` (round to nearest, buckets of 64, no calibration;
  embeddings in symmetric 4-bit blocks of 32), then ``onmt_lma_export``: MatMulNBits and GatherBlockQuantized;
* ``2-bit PTQ`` -- the same at 2 bits (embeddings still 4-bit);
* ``4-bit QAT`` and ``2-bit QAT`` -- the student fine-tuned with ``-quant_bits B`` for 300 steps, distilled
  from the released teacher as in training (``-train_from`` the released weights; a released model has no
  optimizer state, so Adam starts afresh at the constant learning rate its Noam schedule had at its last
  averaged step), then ``onmt_lma_quantize -embeddings`` (its learned codes; embeddings 4-bit) and
  ``onmt_lma_export``;
* ``4-bit PTQ, int8 compute`` and ``4-bit QAT, int8 compute`` -- those 4-bit exports on ``-engine native
  -precision int8``: the same file, its dequantized codes as int8 rows, the products in int8 (added after the
  first runs had the float32 products of the 4-bit rows below the int8 graphs' speed in batches of 32).

Each is evaluated by ``onmt_lma_evaluate -engine onnx`` and ``-engine native`` (its int8: PyTorch's dynamic int8
Linear; a low-bit export: the checkpoint's codes, dequantized as it loads, run in float32) on the whole test
set, beam 5, one sentence at a time and in batches of 32 (sacreBLEU, chrF; sent/s; peak memory), and a low-bit
one also as its PyTorch self (the quantized checkpoint, ``-engine pytorch``, batches of 32): identical lines and
the BLEU difference.  Size: every file the engine loads (the graphs or weights it runs, vocabularies,
manifest).  Speed for the goals is measured side by side (:func:`side_by_side`): one evaluation's time of a few
seconds swings up to 1.5x between runs, more than the differences asked about.  Goals, from the issue, before
the runs: 4-bit deployed size <= 0.2x the same engine's fp32 export, speed >= the int8 graphs' (ONNX Runtime;
the median over rounds of the per-round ratio, at worst of batch 1 and 32), BLEU within 0.3 of its PyTorch
self.  Resumable: every export, evaluation and round of timings is skipped once it exists.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from onmt_lma.evaluation.facts import portable
from onmt_lma.evaluation.measure import Translation

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "results" / "multi30k_converged" / "models"
STUDENTS = {"relu": MODELS / "student64_relu_lr2x_seed1.pt", "lma": MODELS / "student64_lma_seed1.pt"}
TEACHER = MODELS / "teacher.pt"
#: a low-bit export's configuration run with ``-precision int8`` on the native engine: its dequantized codes as
#: int8 rows, products in int8 (ONNX Runtime has no int8 graphs of a low-bit export)
INT8_COMPUTE = ", int8 compute"
LOW_BIT = ("4-bit PTQ", "2-bit PTQ", "4-bit QAT", "2-bit QAT")
CONFIGURATIONS = ("fp32", "int8", *LOW_BIT, "4-bit PTQ" + INT8_COMPUTE, "4-bit QAT" + INT8_COMPUTE)
QAT_STEPS = 300
ENGINES = ("onnx", "native")
ENGINE_SLUG = {"onnx": "", "native": ".native"}  # result files: LABEL.CONFIG[.native].bB.json
GOALS = {"size_vs_fp32": 0.2, "bleu_vs_pytorch": 0.3}
#: rounds of side-by-side timings, and the rows timed: the int8 graphs the goals compare with, the native
#: engine's float32, int8 and 4-bit rows (the ONNX 4-bit rows run at a fifth of the int8 graphs' speed: one
#: evaluation's time tells that)
SPEED_ROUNDS = 4
SPEED_ROWS = (("onnx", "int8"), ("native", "fp32"), ("native", "int8"), ("native", "4-bit PTQ"),
              ("native", "4-bit QAT"), ("native", "4-bit PTQ" + INT8_COMPUTE), ("native", "4-bit QAT" + INT8_COMPUTE))


def command(*argv):
    print("+", " ".join(map(str, argv)), flush=True)
    subprocess.run([str(a) for a in argv], check=True)


def exported(name):
    """The configuration whose export ``name`` runs ('4-bit QAT, int8 compute' -> '4-bit QAT')."""
    return name.removesuffix(INT8_COMPUTE)


def slug(name):
    """A configuration's export in file names: '4-bit QAT' -> q4qat ('4-bit PTQ' -> q4, as before)."""
    if name in ("fp32", "int8"):
        return name
    bits, kind = exported(name).split("-bit ")
    return f"q{bits}" + ("qat" if kind == "QAT" else "")


def folder_of(runs, label, name):
    """A configuration's export folder (fp32 and int8 share one)."""
    return runs / (f"{label}_onnx" if name in ("fp32", "int8") else f"{label}_{slug(name)}_onnx")


def noam_rate(opt, step):
    """OpenNMT-py's Noam learning rate at ``step`` (its ``noam_decay`` times ``-learning_rate``)."""
    return opt.learning_rate * opt.hidden_size ** -0.5 * min(step ** -0.5, step * opt.warmup_steps ** -1.5)


def qat_fine_tuning(label, checkpoint, bits, runs):
    """(run folder, recipe settings) of a released student's quantization-aware fine-tuning."""

    from onmt_lma.base.checkpoint import load as load_checkpoint

    state = load_checkpoint(checkpoint)
    opt = state["opt"]
    last = (state.get("onmt_lma") or {}).get("steps", [opt.train_steps])[-1]
    rate = noam_rate(opt, last) if opt.decay_method == "noam" else opt.learning_rate
    # saved once, at the end: resuming with -reset_optim all would start the step count again
    settings = [("pos_ffn_activation_fn", opt.pos_ffn_activation_fn), ("seed", opt.seed if opt.seed > 0 else 1),
                ("train_from", str(checkpoint.resolve())), ("reset_optim", "all"), ("decay_method", "none"),
                ("learning_rate", rate), ("kd_teacher", str(TEACHER.resolve())), ("quant_bits", bits),
                ("train_steps", QAT_STEPS), ("valid_steps", QAT_STEPS), ("save_checkpoint_steps", QAT_STEPS)]
    return runs / f"{label}_qat{bits}_{QAT_STEPS}", settings


def fine_tuned(students, bits, runs, data):
    """{label: the B-bit quantization-aware checkpoint} of every student, the students trained at once."""
    from onmt_lma.study.probes.quant_study import train_at_once

    planned = {label: qat_fine_tuning(label, checkpoint, bits, runs) for label, checkpoint in students}
    train_at_once(list(planned.values()), data)
    return {label: run_dir / f"model_step_{QAT_STEPS}.pt" for label, (run_dir, _) in planned.items()}


def prepare(label, checkpoint, runs, tuned):
    """The export folder and ``-int8`` flag of each configuration (exports made once); ``tuned``: {bits: the
    quantization-aware checkpoint}."""
    folders = {}
    float_folder = folder_of(runs, label, "fp32")
    if not (float_folder / "manifest.json").is_file():
        command("onmt_lma_export", "-model", checkpoint, "-output", float_folder, "-int8")
    folders["fp32"], folders["int8"] = (float_folder, False), (float_folder, True)
    for name in LOW_BIT:
        bits = int(name[0])
        quantized, folder = runs / f"{label}.{slug(name)}.pt", folder_of(runs, label, name)
        if not quantized.is_file():
            source, how = (checkpoint, ["-bits", bits]) if name.endswith("PTQ") else (tuned[bits], [])
            command("onmt_lma_quantize", "-model", source, "-output", quantized, *how, "-embeddings")
        if not (folder / "manifest.json").is_file():
            command("onmt_lma_export", "-model", quantized, "-output", folder)
        folders[name] = (folder, False)
    for name in CONFIGURATIONS:
        if name.endswith(INT8_COMPUTE):
            folders[name] = (folders[exported(name)][0], True)
    return folders


def evaluate(model, out, data, batch, *extra):
    if not out.is_file():
        command("onmt_lma_evaluate", "-model", model, "-corpus", data, "-out", out, "-eval_batch_size", batch, *extra)
    return json.loads(out.read_text())


def loaded_bytes(folder, int8, engine):
    manifest = json.loads((folder / "manifest.json").read_text())
    if engine == "native":  # native.pt (its int8 quantized as it loads) or a low-bit export's codes
        graphs = [name for name in manifest["files"] if name.startswith("native.")]
    else:
        graphs = [name for name in manifest["files"] if name.endswith(".onnx") and name.endswith(".int8.onnx") == int8]
    return sum((folder / name).stat().st_size for name in graphs + ["src.vocab.json", "tgt.vocab.json",
                                                                     "manifest.json"])


def timed_sent_per_s(folder, engine, int8, batch, src, scratch):
    """Sentences per second of one translation of ``src`` (beam 5) in a fresh process: the worker that
    ``onmt_lma_evaluate`` runs, which times translation only."""
    argv = [sys.executable, "-m", "onmt_lma.evaluation.measure", "--worker", folder, src, scratch, "--translation",
            Translation(engine, bool(int8), batch_size=batch).to_json()]
    found = subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    seconds = json.loads(found.stdout.strip().splitlines()[-1])["seconds"]
    return len(Path(src).read_text(encoding="utf-8").splitlines()) / seconds


def speed_key(label, engine, name, batch):
    return f"{label}|{engine}|{name}|{batch}"


def side_by_side(args, folders):
    """:data:`SPEED_ROUNDS` rounds of every :data:`SPEED_ROWS` row of each student at batch 1 and 32, each
    timing a fresh process and the order rotated from round to round, so that a slow spell of the machine
    falls on every row alike; round R's sent/s in ``speed.round{R}.json`` under the runs."""
    from onmt_lma.evaluation.test_sets import prepared_test_set

    src = prepared_test_set(args.data).src
    jobs = [(label, engine, name, batch) for label in folders for engine, name in SPEED_ROWS for batch in (1, 32)]
    for round_ in range(SPEED_ROUNDS):
        out = args.runs / f"speed.round{round_}.json"
        if out.is_file():
            continue
        shift = round_ * len(jobs) // SPEED_ROUNDS
        found = {}
        for label, engine, name, batch in jobs[shift:] + jobs[:shift]:
            folder, int8 = folders[label][name]
            found[speed_key(label, engine, name, batch)] = timed_sent_per_s(folder, engine, int8, batch, src,
                                                                            args.runs / "speed.hyp.txt")
        print(f"[deploy] speed round {round_ + 1}/{SPEED_ROUNDS}: {json.dumps(found)}", flush=True)
        (args.runs / "speed.tmp").write_text(json.dumps(found, indent=1) + "\n")
        os.replace(args.runs / "speed.tmp", out)


def run(args):
    tuned = {bits: fine_tuned(args.student, bits, args.runs, args.data) for bits in (4, 2)}
    folders = {}
    for label, checkpoint in args.student:
        folders[label] = prepare(label, checkpoint, args.runs, {b: t[label] for b, t in tuned.items()})
        for name, (folder, int8) in folders[label].items():
            stem = args.runs / f"{label}.{result_slug(name)}"
            for engine in ENGINES if not name.endswith(INT8_COMPUTE) else ("native",):
                for batch in (1, 32):
                    evaluate(folder, Path(f"{stem}{ENGINE_SLUG[engine]}.b{batch}.json"), args.data,
                             batch, "-engine", engine, *["-int8"] * int8)
            if name in LOW_BIT:
                evaluate(args.runs / f"{label}.{slug(name)}.pt", Path(f"{stem}.pytorch.json"), args.data,
                         32, "-engine", "pytorch")
    side_by_side(args, folders)


def result_slug(name):
    """A configuration's name in result files: '4-bit PTQ' -> 4bit_PTQ ('4-bit PTQ, int8 compute' ->
    4bit_PTQ_int8_compute)."""
    return name.replace(",", "").replace(" ", "_").replace("-", "")


def hyps(result_json):
    return (result_json.parent / (result_json.stem + ".hyp.detok.en")).read_text(encoding="utf-8").splitlines()


def report_row(args, label, engine, name):
    """One configuration's row (None until both of its evaluations exist)."""
    stem = f"{label}.{result_slug(name)}{ENGINE_SLUG[engine]}"
    one, batched = args.runs / f"{stem}.b1.json", args.runs / f"{stem}.b32.json"
    if not (one.is_file() and batched.is_file()):
        return None
    first, second = json.loads(one.read_text()), json.loads(batched.read_text())
    folder = folder_of(args.runs, label, name)
    size, fp32_size = loaded_bytes(folder, name == "int8", engine), loaded_bytes(folder_of(args.runs, label, "fp32"), False, engine)
    row = {"student": label, "engine": engine, "configuration": name, "bleu": first["bleu"]["score"],
           "chrf": first["chrf"]["score"], "signature": first["bleu"]["signature"], "size_mb": size / 1e6,
           "size_vs_fp32": size / fp32_size, "sent_per_s_1": first["speed"]["sentences_per_s"],
           "sent_per_s_32": second["speed"]["sentences_per_s"], "memory_mb": first["memory"]["peak_mb"],
           "folder": portable(folder, REPO)}
    pytorch = args.runs / f"{label}.{result_slug(exported(name))}.pytorch.json"
    if pytorch.is_file():
        own = json.loads(pytorch.read_text())
        same = sum(a == b for a, b in zip(hyps(batched), hyps(pytorch)))
        row.update({"pytorch_bleu": own["bleu"]["score"], "bleu_vs_pytorch": second["bleu"]["score"] - own["bleu"]["score"],
                    "identical_lines": same, "lines": len(hyps(pytorch))})
    return row


def report(args):
    labels = sorted({p.name.split(".")[0] for p in args.runs.glob("*.b1.json")})
    rows = [row for label in labels for engine in ENGINES for name in CONFIGURATIONS
            if (row := report_row(args, label, engine, name)) is not None]
    speeds, rounds = side_by_side_speeds(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps({"goals": GOALS, "rows": rows, "speed_rounds": rounds, "speed": [
        {"student": k[0], "engine": k[1], "configuration": k[2], "batch": k[3], "sent_per_s": v[0],
         "vs_int8_graphs": v[1]} for k, v in speeds.items()]}, indent=1) + "\n")
    lines = ["# Low-bit students deployed on the ONNX and native engines", "",
             "`python -m onmt_lma.study.runs study studies/quant.yaml --step deploy` then `--step deploy_report` "
             "(onmt_lma/study/probes/low_bit_deploy.py): the converged study's released 64-dim students, Multi30k "
             "test_2016 (1000 sentences), beam 5; PTQ: post-training quantization (no calibration data); QAT: "
             f"{QAT_STEPS} steps of quantization-aware distillation from the released weights (the module's docstring). Size: every "
             "file the engine loads (vs fp32: the same engine's float32 export). The native engine runs int8 as "
             "PyTorch's dynamic int8 Linear (quantized as native.pt loads) and a low-bit export's codes "
             "dequantized as they load, in float32. Identical lines and BLEU vs PyTorch: the batch-32 "
             "translations against the quantized checkpoint's own (PyTorch, batches of 32). sent/s here: one "
             "evaluation each; the goals take speed from the side-by-side rounds below.", "",
             f"sacreBLEU signature: `{rows[0]['signature'] if rows else ''}`", "",
             "| student | engine | configuration | BLEU | chrF | size MB | vs fp32 | sent/s, 1 | sent/s, 32 | memory MB | "
             "identical lines vs PyTorch | BLEU vs PyTorch |", "| --- |" * 1 + " --- |" * 11]
    for r in rows:
        same = f"{r['identical_lines']}/{r['lines']}" if "lines" in r else ""
        delta = f"{r['bleu_vs_pytorch']:+.2f}" if "lines" in r else ""
        lines.append(f"| {r['student']} | {r['engine']} | {r['configuration']} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
                     f"{r['size_mb']:.1f} | {r['size_vs_fp32']:.2f}x | {r['sent_per_s_1']:.1f} | "
                     f"{r['sent_per_s_32']:.1f} | {r['memory_mb']:.0f} | {same} | {delta} |")
    lines += speed_lines(speeds, rounds)
    lines += ["", "Goals (4-bit):", ""] + [f"- {line}" for line in goal_lines(rows, speeds)]
    (args.out / "deploy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def side_by_side_speeds(runs):
    """{(student, engine, configuration, batch): (median sent/s, median of the per-round ratio to the int8
    graphs)} from the rounds of :func:`side_by_side` found under ``runs``, and how many rounds there were."""
    rounds = [json.loads(p.read_text()) for p in sorted(runs.glob("speed.round*.json"))]
    speeds = {}
    for key in (rounds[0] if rounds else {}):
        label, engine, name, batch = key.split("|")
        reference = speed_key(label, "onnx", "int8", batch)
        speeds[(label, engine, name, int(batch))] = (
            statistics.median(r[key] for r in rounds), statistics.median(r[key] / r[reference] for r in rounds))
    return speeds, len(rounds)


def speed_lines(speeds, rounds):
    if not speeds:
        return []
    lines = ["", f"Speed side by side: {rounds} rounds, each timing every row below in a fresh process (as "
             "onmt_lma_evaluate does: translation only), the order rotated each round; the median sent/s and the "
             "median of the per-round ratio against the int8 graphs.", "",
             "| student | engine | configuration | sent/s, 1 | vs int8 graphs | sent/s, 32 | vs int8 graphs |",
             "| --- |" + " --- |" * 6]
    for label, engine, name in sorted({key[:3] for key in speeds}, key=lambda k: (k[0], SPEED_ROWS.index(k[1:]))):
        one, batched = speeds[(label, engine, name, 1)], speeds[(label, engine, name, 32)]
        lines.append(f"| {label} | {engine} | {name} | {one[0]:.1f} | {one[1]:.2f}x | {batched[0]:.1f} | "
                     f"{batched[1]:.2f}x |")
    return lines


def goal_lines(rows, speeds=None):
    """Per student and engine, its 4-bit row against the goals; speed against the ONNX engine's int8 graphs,
    side by side where :func:`side_by_side_speeds` has the row, else from the single evaluations."""
    found = {(r["student"], r["engine"], r["configuration"]): r for r in rows}
    out = []
    for (student, engine, name), r in found.items():
        if exported(name) not in ("4-bit PTQ", "4-bit QAT") or (student, "onnx", "int8") not in found:
            continue
        int8 = found[(student, "onnx", "int8")]
        if speeds and (student, engine, name, 1) in speeds:
            speed, how = min(speeds[(student, engine, name, b)][1] for b in (1, 32)), "side by side"
        else:
            speed = min(r["sent_per_s_1"] / int8["sent_per_s_1"], r["sent_per_s_32"] / int8["sent_per_s_32"])
            how = "single evaluations"
        out.append(f"{student}, {engine}, {name}: size {r['size_vs_fp32']:.2f}x fp32 (goal <= {GOALS['size_vs_fp32']}: "
                   f"{'met' if r['size_vs_fp32'] <= GOALS['size_vs_fp32'] else 'missed'}), speed "
                   f"{speed:.2f}x the int8 graphs at worst of 1 and 32, {how} (goal >= 1: "
                   f"{'met' if speed >= 1 else 'missed'}), BLEU {r.get('bleu_vs_pytorch', float('nan')):+.2f} vs "
                   f"PyTorch (goal within 0.3: "
                   f"{'met' if abs(r.get('bleu_vs_pytorch', 9)) <= GOALS['bleu_vs_pytorch'] else 'missed'})")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "report"))
    parser.add_argument("--student", action="append", type=lambda t: (t.partition("=")[0], Path(t.partition("=")[2])))
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quant_deploy")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "quant")
    args = parser.parse_args(argv)
    args.student = args.student or list(STUDENTS.items())
    args.runs.mkdir(parents=True, exist_ok=True)
    (run if args.action == "run" else report)(args)


if __name__ == "__main__":
    main()

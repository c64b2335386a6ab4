"""A budgeted run once stopped at N: its BLEU curve, the average of its last checkpoints and their full
evaluations (:func:`finish_run`, in a process of its own); collecting finished runs into the results
folder with relative paths (:func:`collect`) and writing the released models (:func:`release`).
"""

import json
import shutil
from pathlib import Path

from onmt_lma.study.budgeted import checkpoint, log, REPO


def translate_bleu(path, corpus_dir, gpu, batch_size):
    """sacreBLEU of a checkpoint's beam-5 translation of the test set (batched)."""
    import sacrebleu

    from onmt_lma.deploy.pytorch import translation_opts  # installs the plugin first
    from onmt_lma.deploy.decoding import Decoding
    from onmt_lma.evaluation.scoring import postprocess
    from onmt.inference_engine import InferenceEnginePY

    hyp = Path(str(path) + ".curve.hyp")
    opt = translation_opts(path, Decoding(), gpu, batch_size, extra=["-src", corpus_dir / "test.de", "-output", hyp])
    engine = InferenceEnginePY(opt)
    engine.infer_file()
    engine.terminate()
    _, detok = postprocess(hyp.read_text(encoding="utf-8").splitlines(), corpus_dir)
    refs = (corpus_dir / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()
    return sacrebleu.corpus_bleu(detok, [refs]).score


def averaged_checkpoint(run_dir, n, every, average_last):
    """(the last ``average_last`` checkpoints up to N, the path of their average)."""
    last = [checkpoint(run_dir, s) for s in range(n - every * (average_last - 1), n + 1, every)]
    return last, Path(run_dir) / f"model_avg_{last[0].stem.split('_')[-1]}-{n}.pt"


def finish_run(study, name, n, execution):
    """BLEU curve, average and evaluations of one stopped run (called in a process of its own)."""
    from onmt_lma.evaluation import evaluate
    from onmt_lma.evaluation.measure import Translation
    from onmt_lma.base import checkpoint as checkpoints
    from onmt_lma.training import average

    run_dir, rule = execution.runs / name, study.budget
    curve_file = run_dir / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.exists() else {}
    for step in range(rule["bleu_every"], n + 1, rule["bleu_every"]):
        if str(step) not in curve:
            curve[str(step)] = translate_bleu(checkpoint(run_dir, step), execution.data, execution.gpu,
                                              execution.batch_size)
            curve_file.write_text(json.dumps(curve, indent=1) + "\n")
    last, averaged = averaged_checkpoint(run_dir, n, rule["every"], rule["average_last"])
    if not averaged.exists():
        checkpoints.save(average.average(last), averaged)
    for path in (checkpoint(run_dir, n), averaged):
        out = Path(f"{path}.eval.json")
        if not out.exists():
            evaluate.evaluate(path, execution.data, out, Translation(gpu=execution.gpu, batch_size=execution.batch_size))
    log(f"{name}: finished (curve {', '.join(f'{s}: {b:.1f}' for s, b in curve.items())})")


def relative_text(text, execution):
    for root, name in ((execution.runs.resolve(), "runs"), (execution.data.resolve(), f"data/{execution.data.name}"),
                       (REPO, ".")):
        text = text.replace(str(root), name)
    return text


def copy_relative(source, target, execution):
    target.write_text(relative_text(source.read_text(encoding="utf-8", errors="replace"), execution),
                      encoding="utf-8")


def collect(study, execution):
    out = study.results / "runs"
    out.mkdir(parents=True, exist_ok=True)
    if (execution.runs / "BUDGET.json").exists():
        shutil.copy(execution.runs / "BUDGET.json", study.results / "BUDGET.json")
    for run in study.runs:
        if run.teacher and (out / "teacher").is_dir():
            continue  # collected on the machine that trained it (its paths made relative there)
        run_dir = execution.runs / run.name
        evals = sorted(run_dir.glob("*.eval.json"))
        if not evals:
            continue
        target = out / run.name
        target.mkdir(exist_ok=True)
        for name in ("config.yaml", "train.log", "curve.json", "COMMITS"):
            if (run_dir / name).exists():
                copy_relative(run_dir / name, target / name, execution)
        for path in evals:
            copy_relative(path, target / path.name.replace(".pt.eval", ".eval"), execution)
            hyp = path.with_name(path.name.replace(".json", ".hyp.detok.en"))
            if hyp.exists():
                shutil.copy(hyp, target / hyp.name.replace(".pt.eval", ".eval"))
    log(f"collected into {study.results}")


def averaged_result(run_dir):
    """(averaged checkpoint, its evaluation) of a finished run, or (None, None)."""
    for path in sorted(Path(run_dir).glob("model_avg_*.pt.eval.json")):
        return path.with_name(path.name[: -len(".eval.json")]), json.loads(path.read_text())
    return None, None


def release(study, execution):
    """Released models: the averaged main students, the best diagnostic's, and the teacher, float16."""
    from onmt_lma.base import checkpoint as checkpoints
    from onmt_lma.training import average
    from onmt_lma.base.files import sha256_of

    chosen = {}
    for run in study.students:
        path, result = averaged_result(execution.runs / run.name)
        if path is not None:
            chosen.setdefault("main" if run.part == "main" else "variant", []).append(
                (result["bleu"]["score"], run, path))
    picks = [(run.name, path) for _, run, path in chosen.get("main", [])]
    if chosen.get("variant"):
        _, best, path = max(chosen["variant"], key=lambda item: item[0])
        picks.append((best.name, path))
    teacher_dir = execution.runs / "teacher"
    picks.append(("teacher", teacher_dir / (teacher_dir / "DONE").read_text().strip()))
    out = study.results / "models"
    out.mkdir(parents=True, exist_ok=True)
    sums = []
    for name, path in picks:
        target = out / f"{name}.pt"
        checkpoints.save(average.average([path], release=True), target)
        sums.append(f"{sha256_of(target)}  {target.name}")
        log(f"released {target.name} from {relative_text(str(path), execution)}")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")

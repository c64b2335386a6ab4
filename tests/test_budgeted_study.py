"""Budgeted studies (onmt_lma.study.budgeted): the pilot's rule, the plan file of the converged study, the
training loop (with stand-in training processes), the paired report, and the thin wrapper script."""

import concurrent.futures
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onmt_lma.bin import train as train_cli
from onmt_lma.study import budget, budgeted, finish, paired_report, runs, sequential
from onmt_lma.study import plan as study_plan

from conftest import REPO, synthetic_result

CONVERGED_PLAN = REPO / "studies" / "multi30k_converged.yaml"
RULE = {"pilot": "student64_relu_seed1", "min_steps": 4, "max_steps": 12, "window": 2, "tolerance": 0.02,
        "every": 2, "bleu_every": 4, "average_last": 2}


def write_plan(path, budget=RULE, extra="", runs_text=None):
    runs_text = runs_text or ("  - teacher\n  - {size: 64, activations: [relu, lma], seeds: [1, 2], part: main}\n"
                              "  - {size: 64, activations: [lma], seeds: [1], part: b, variant: continuous, "
                              "what: continuous, settings: {lma_continuous: true}}\n")
    budget_text = f"budget: {json.dumps(budget)}\n" if budget else ""
    path.write_text(f"corpus: multi30k\nresults: {path.parent / 'results'}\nruns_folder: study\n"
                    f"labels: {{relu: ReLU, lma: LMA-8}}\n{budget_text}{extra}runs:\n{runs_text}")
    return path


# --------------------------------------------------------------------------- #
# The pilot's rule and the plan
# --------------------------------------------------------------------------- #
def test_pilot_budget_is_the_first_step_with_less_than_2_percent_gain_over_500_steps():
    def n_of(curve):
        return budget.pilot_budget(curve, min_steps=2000, max_steps=6000, window=500, tolerance=0.02)

    falling = {s: 100 * 0.9 ** (s / 250) for s in range(250, 6001, 250)}  # 10% per 250 steps: never flat
    assert n_of(falling) == 6000  # the cap
    assert n_of({s: p for s, p in falling.items() if s <= 3000}) is None  # not decided yet
    flat_from_2500 = {s: (p if s <= 2000 else falling[2000] * (1 - 0.001 * (s - 2000) / 250))
                      for s, p in falling.items()}
    # at 2,500 the last 500 steps gained 0.2%; at 2,000 the gain was still 19%: N = 2,500
    assert n_of(flat_from_2500) == 2500
    early_flat = {s: 10.0 for s in range(250, 6001, 250)}
    assert n_of(early_flat) == 2000  # never before the minimum


def test_the_converged_study_is_a_plan_file_with_its_runs_in_launch_order():
    study = study_plan.load_plan(CONVERGED_PLAN)
    cpu = study_plan.load_plan(REPO / "studies" / "multi30k_converged_cpu.yaml")
    # the names are the run folders of runs already trained: they must not change
    assert [run.name for run in study.runs] == [
        "teacher", "student64_relu_seed1", "student64_lma_seed1", "student64_relu_seed2", "student64_lma_seed2",
        "student64_relu_seed3", "student64_lma_seed3", "student64_relu_lr2x_seed1", "student64_lma_lr2x_seed1",
        "student64_lma_continuous_seed1", "student64_lma_actlr0.1_seed1", "student64_lma_frozen_seed1",
        "student64_gelu_seed1", "student64_relu_lr2x_seed2", "student64_lma_lr2x_seed2", "student64_relu_lr2x_seed3",
        "student64_lma_lr2x_seed3"]
    assert [run.name for run in cpu.runs] == ["teacher", "student64_relu_seed1", "student64_lma_seed1"]
    assert [run.part for run in study.students] == ["main"] * 6 + ["a", "a", "b", "c", "d", "e"] + ["a"] * 4
    assert study.budget == {"pilot": "student64_relu_seed1", "min_steps": 2000, "max_steps": 6000, "window": 500,
                            "tolerance": 0.02, "every": 250, "bleu_every": 500, "average_last": 4}
    assert study.run_label(study.students[-7]) == "LMA-8, alpha/beta at 0.1x lr"
    assert dict(study.students[-8].settings) == {"learning_rate": 0.224, "lma_continuous": True}
    assert dict(study.students[-6].settings) == {"learning_rate": 0.224, "lma_lr_scale": 0.0}
    assert {dict(run.settings)["learning_rate"] for run in study.students if run.part == "a"} == {0.447}
    known = {action.dest for action in train_cli.get_parser()._actions}  # every setting is a training option
    assert all(key in known for run in study.students + cpu.students for key, _ in run.settings)
    # and the recipe's checkpoint interval is the plan's
    assert "save_checkpoint_steps: 250" in (REPO / "recipes" / "multi30k" / "student64.yaml").read_text()


@pytest.mark.parametrize("change, message", [
    (dict(budget={k: v for k, v in RULE.items() if k != "window"}), "budget needs exactly pilot"),
    (dict(budget={**RULE, "pilot": "student64_gelu_seed1"}), "the budget's pilot 'student64_gelu_seed1'"),
    (dict(budget=None), "runs_folder is for a budgeted study"),
    (dict(budget={**RULE, "pilot": "elsewhere", "fixed_by": "results/none/BUDGET.json"}),
     "fixed_by 'results/none/BUDGET.json': no such file"),
    (dict(runs_text="  - {size: 64, activations: [relu], seeds: [1], colour: red}\n"), "unknown keys"),
])
def test_a_wrong_budgeted_plan_is_refused_with_its_reason(tmp_path, change, message):
    plan = write_plan(tmp_path / "plan.yaml", **change)
    with pytest.raises(study_plan.StudyError, match=message):
        study_plan.load_plan(plan)


def test_a_study_without_budget_refuses_the_budgeted_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        runs.main(["study", str(REPO / "studies" / "multi30k.yaml"), "--parallel", "2", "--only", "x"])
    assert stop.value.code == 2
    assert "--parallel, --only only for a budgeted study" in capsys.readouterr().err


def test_a_plan_variant_trains_with_its_settings_in_a_study_without_budget(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(runs.recipes, "train", lambda corpus, model, data, run_dir, settings: trained.append(
        (Path(run_dir).name, settings)) or Path(run_dir) / "m.pt")
    path = sequential.train_student("multi30k", 64, "lma", 1, tmp_path, tmp_path, kd_teacher="none",
                              settings=[("lma_continuous", True)], variant="continuous")
    assert path.parent.name == "student64_lma_continuous_seed1_nokd"
    assert trained[0][1][-1] == ("lma_continuous", True)


# --------------------------------------------------------------------------- #
# How runs are launched and share the machine
# --------------------------------------------------------------------------- #
def test_parallel_students_on_cpu_share_the_cores_between_them(monkeypatch):
    import os

    def env(gpu, parallel):
        return budgeted.process_env(budgeted.Execution(Path("d"), Path("r"), gpu=gpu, parallel=parallel))

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert env(-1, 2)["OMP_NUM_THREADS"] == "1"
    assert env(-1, 4)["OMP_NUM_THREADS"] == "1"  # never 0
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert env(-1, 2)["OMP_NUM_THREADS"] == "8"
    assert env(-1, 1) is None  # torch's own default
    assert env(0, 12) is None  # a GPU does the work


def test_student_settings_keep_the_order_their_configs_were_composed_with(tmp_path, monkeypatch):
    study = study_plan.load_plan(CONVERGED_PLAN)
    execution = budgeted.Execution(tmp_path / "multi30k", tmp_path / "runs", settings=(("report_every", 5),))
    continuous = study.students[-8]
    assert continuous.name == "student64_lma_continuous_seed1"
    assert budgeted.student_settings(study, continuous, Path("t.pt"), execution) == [
        ("pos_ffn_activation_fn", "lma"), ("seed", 1), ("kd_teacher", "t.pt"), ("train_steps", 6000),
        ("learning_rate", 0.224), ("lma_continuous", True), ("report_every", 5)]
    monkeypatch.setattr(sequential, "teacher_cache", lambda corpus, teacher, data_root, k: Path(f"{teacher}.top{k}"))
    execution.kd_cache_topk = 8
    assert budgeted.student_settings(study, continuous, Path("t.pt"), execution)[2] == ("kd_cache", "t.pt.top8")


FAKE_TRAINING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    run_dir, ppl = Path(sys.argv[1]), {PPL}
    for step in range(2, 13, 2):  # validation and a checkpoint every 2 steps, as the plan's rule says
        time.sleep(0.05)
        with open(run_dir / "train.log", "a") as log:
            log.write(f"[x INFO] Step {step}/ 12; acc: 1\\n[x INFO] Validation perplexity: {ppl[step]}\\n")
        (run_dir / f"model_step_{step}.pt").write_bytes(b"checkpoint")
    time.sleep(60)  # never ends by itself: the loop stops it at N
""")


def test_the_loop_fixes_n_from_the_pilot_and_stops_every_student_there(tmp_path, monkeypatch):
    plan = write_plan(tmp_path / "plan.yaml")
    study = study_plan.load_plan(plan)
    execution = budgeted.Execution(tmp_path / "multi30k", tmp_path / "study", parallel=2)
    curve = {2: 100.0, 4: 50.0, 6: 30.0, 8: 29.9, 10: 29.8, 12: 29.7}  # flat from 8: N = 8
    script = tmp_path / "fake_training.py"
    script.write_text(FAKE_TRAINING.replace("{PPL}", repr(curve)))
    launched = []

    def launch(study, run, teacher, execution):
        launched.append(run.name)
        (execution.runs / run.name).mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([sys.executable, str(script), str(execution.runs / run.name)],
                                start_new_session=True)

    monkeypatch.setattr(budgeted, "launch", launch)
    monkeypatch.setattr(budgeted, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(budgeted, "SETTLE_SECONDS", 0.01)
    (execution.runs / "student64_lma_seed2").mkdir(parents=True)
    (execution.runs / "student64_lma_seed2" / "DONE").write_text("model_step_8.pt\n")  # stopped by an earlier call
    finished = []

    def finish(run, n):  # the evaluations would run here; done at once
        finished.append((run.name, n))
        future = concurrent.futures.Future()
        future.set_result(None)
        return future

    budget, futures = budgeted.train_students(study, Path("t.pt"), execution, finish)
    assert len(futures) == len(launched)
    assert budget["N"] == 8 and budget["pilot"] == "student64_relu_seed1" and not budget["capped_by_deadline"]
    assert json.loads((execution.runs / "BUDGET.json").read_text()) == budget
    assert launched == ["student64_relu_seed1", "student64_lma_seed1", "student64_relu_seed2",
                        "student64_lma_continuous_seed1"]  # in plan order, the finished one skipped
    assert sorted(finished) == sorted((name, 8) for name in launched)
    for name in launched:
        assert (execution.runs / name / "DONE").read_text() == "model_step_8.pt\n"


def test_finishes_under_way_hold_the_slots_before_new_students_start(tmp_path, monkeypatch):
    """A run stopped by an earlier call is finished first: on CPU its evaluation holds a training slot."""
    plan = write_plan(tmp_path / "plan.yaml")
    study = study_plan.load_plan(plan)
    execution = budgeted.Execution(tmp_path / "multi30k", tmp_path / "study", parallel=1)
    (execution.runs).mkdir(parents=True)
    (execution.runs / "BUDGET.json").write_text(json.dumps({"N": 8, "pilot": "student64_relu_seed1"}))
    events = []
    monkeypatch.setattr(budgeted, "POLL_SECONDS", 0.05)

    def launch(study, run, teacher, execution):
        events.append(("launched", run.name))
        (execution.runs / run.name).mkdir(parents=True, exist_ok=True)
        (execution.runs / run.name / "DONE").write_text("model_step_8.pt\n")
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(budgeted, "launch", launch)
    under_way = concurrent.futures.Future()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: (__import__("time").sleep(0.5), events.append(("finished", "earlier")),
                             under_way.set_result(None)))
        budgeted.train_students(study, Path("t.pt"), execution, lambda run, n: under_way,
                                [("earlier", under_way)])
    assert events[0] == ("finished", "earlier") and events[1][0] == "launched"


def test_finish_averages_the_last_checkpoints_and_evaluates_final_and_average(tmp_path, monkeypatch):
    study = study_plan.load_plan(write_plan(tmp_path / "plan.yaml"))
    execution = budgeted.Execution(tmp_path / "multi30k", tmp_path / "study")
    run_dir = execution.runs / "student64_lma_seed1"
    run_dir.mkdir(parents=True)
    calls = {"bleu": [], "average": [], "evaluate": []}
    monkeypatch.setattr(finish, "translate_bleu", lambda path, *a: calls["bleu"].append(path.name) or 20.0)
    from onmt_lma.base import checkpoint as checkpoints
    from onmt_lma.evaluation import evaluate
    from onmt_lma.training import average

    monkeypatch.setattr(average, "average", lambda paths: calls["average"].append([p.name for p in paths]) or {})
    monkeypatch.setattr(checkpoints, "save", lambda checkpoint, path: Path(path).write_bytes(b"avg"))
    monkeypatch.setattr(evaluate, "evaluate", lambda path, data, out, translation: calls["evaluate"].append(Path(out).name)
                        or Path(out).write_text("{}"))
    finish.finish_run(study, "student64_lma_seed1", 8, execution)
    assert calls == {"bleu": ["model_step_4.pt", "model_step_8.pt"], "average": [["model_step_6.pt", "model_step_8.pt"]],
                     "evaluate": ["model_step_8.pt.eval.json", "model_avg_6-8.pt.eval.json"]}
    assert json.loads((run_dir / "curve.json").read_text()) == {"4": 20.0, "8": 20.0}
    assert budgeted.state(study.students[1], study, execution) == "finished"
    finish.finish_run(study, "student64_lma_seed1", 8, execution)  # done: nothing again
    assert len(calls["evaluate"]) == 2


def test_a_finish_runs_on_the_pool_with_its_output_in_the_runs_finish_log(tmp_path, monkeypatch):
    """The finisher's subprocess really runs on the pool's thread and writes its log (the file must be opened
    there: one opened by the submitting thread was closed before the command ran)."""
    study = study_plan.load_plan(write_plan(tmp_path / "plan.yaml"))
    execution = budgeted.Execution(tmp_path / "multi30k", tmp_path / "study")
    run = study.students[0]
    (execution.runs / run.name).mkdir(parents=True)
    monkeypatch.setattr(budgeted.sys, "executable", sys.executable)
    script = tmp_path / "stand_in.py"
    script.write_text("import sys, time; time.sleep(0.3); print('finishing', sys.argv[-8:])\n")
    real_run = budgeted.run_logged
    monkeypatch.setattr(budgeted, "run_logged", lambda command, log, env, attempts: real_run(
        [command[0], str(script), *command[3:]], log, env, attempts))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = budgeted.finisher(tmp_path / "plan.yaml", execution, pool)(run, 8)
        assert future.result(timeout=60).returncode == 0
    log = (execution.runs / run.name / "finish.log").read_text()
    assert "finishing" in log and f"'--finish', '{run.name}', '--steps', '8'" in log
    failing = tmp_path / "failing.py"
    failing.write_text("raise SystemExit(3)\n")
    with pytest.raises(subprocess.CalledProcessError):
        real_run([sys.executable, str(failing)], tmp_path / "failing.log", None)
    # a finish that fails once (a transient CUDA error) runs again and resumes; one that keeps failing is raised
    once = tmp_path / "fails_once.py"
    once.write_text("import pathlib, sys\nmark = pathlib.Path(sys.argv[1])\n"
                    "if not mark.exists():\n    mark.touch(); raise SystemExit(5)\nprint('second try')\n")
    assert real_run([sys.executable, str(once), str(tmp_path / "mark")], tmp_path / "once.log", None,
                    attempts=budgeted.FINISH_ATTEMPTS).returncode == 0
    assert "attempt 1 of 2 failed with exit status 5" in (tmp_path / "once.log").read_text()
    assert (tmp_path / "once.log").read_text().endswith("second try\n")
    with pytest.raises(subprocess.CalledProcessError):
        real_run([sys.executable, str(failing)], tmp_path / "failing2.log", None, attempts=2)
    assert (tmp_path / "failing2.log").read_text().count("failed with exit status 3") == 1


# --------------------------------------------------------------------------- #
# Collecting and the report
# --------------------------------------------------------------------------- #
def test_paired_differences_report_mean_spread_t_and_signs():
    lines = paired_report.paired_lines([(20.0, 18.0), (21.0, 19.5), (22.0, 19.0)], "LMA − ReLU")
    assert "-2.00, -1.50, -3.00" in lines[0]
    # mean -2.1667, sample std 0.7638, t = mean / (std / sqrt(3)) = -4.91
    assert "mean -2.17, sample std 0.76, paired t -4.91 (df 2); above in 0 of 3 seeds" in lines[1]


def test_the_verdict_follows_reading_rule_3():
    seeds, flat, rising = [1, 2, 3], [0.01] * 6, [0.01] * 5 + [0.03]
    below, above = [(30.0, 29.0), (31.0, 30.5), (32.0, 31.0)], [(30.0, 30.2), (31.0, 31.5), (32.0, 33.0)]
    assert paired_report.verdict(above, rising, seeds, 0.02)[0] == "helps"  # helping needs no flat curve
    assert paired_report.verdict(below, flat, seeds, 0.02) == ("hurts", "below in each of 3 seeds, every curve "
                                                                         "flat at N")
    outcome, reason = paired_report.verdict(below, rising, seeds, 0.02)
    assert outcome == "unresolved" and "1 of 6 curves not flat" in reason
    assert paired_report.verdict(below[:1] + above[1:], flat, seeds, 0.02) == ("unresolved", "above in 2 of 3 seeds")
    assert paired_report.verdict(below[:2], flat, seeds, 0.02) == ("unresolved", "2 of 3 seeds paired")
    assert paired_report.verdict(below[:1], flat[:2], [1], 0.02) == ("unresolved", "one seed decides nothing")
    assert paired_report.verdict([(30.0, 30.0)] + below[1:], flat, seeds, 0.02)[0] == "unresolved"  # a tie
    assert paired_report.verdict(below, flat[:5] + [None], seeds, 0.02)[0] == "unresolved"  # a curve unknown
    # the fall over the last window: (10.0 - 9.0) / 10.0
    entry = {"valid": {2250: 10.0, 2500: 9.5, 2750: 9.0}}
    assert paired_report.last_window_gain(entry, 2750, 500) == pytest.approx(0.1)
    assert paired_report.last_window_gain(entry, 2750, 1000) is None and paired_report.last_window_gain(None, 8, 4) is None


def test_collect_makes_paths_relative_and_the_report_pairs_runs_by_seed(tmp_path):
    study = study_plan.load_plan(write_plan(tmp_path / "plan.yaml"))
    execution = budgeted.Execution((tmp_path / "data" / "multi30k").resolve(), (tmp_path / "study").resolve())
    scores = {"student64_relu_seed1": 30.0, "student64_lma_seed1": 29.0, "student64_relu_seed2": 31.0,
              "student64_lma_seed2": 29.5, "student64_lma_continuous_seed1": 30.5}
    for name, score in scores.items():
        run_dir = execution.runs / name
        run_dir.mkdir(parents=True)
        activation = name.split("_")[1]
        for checkpoint, bonus in (("model_step_8.pt", 0.0), ("model_avg_6-8.pt", 0.5)):
            result = synthetic_result("multi30k", 64, activation, int(name[-1]), score + bonus, 9.0, run_dir)
            (run_dir / f"{checkpoint}.eval.json").write_text(json.dumps(result))
        (run_dir / "train.log").write_text(f"Step 8/ 12;\nValidation perplexity: 9.5\ndata {execution.data}/x\n")
        (run_dir / "curve.json").write_text('{"4": 10.0, "8": 20.0}')
    (execution.runs / "BUDGET.json").write_text(json.dumps({"N": 8, "capped_by_deadline": False}))
    finish.collect(study, execution)
    collected = study.results / "runs" / "student64_lma_seed1"
    assert sorted(p.name for p in collected.iterdir()) == [
        "curve.json", "model_avg_6-8.eval.json", "model_step_8.eval.json", "train.log"]
    assert str(tmp_path) not in "".join(p.read_text() for p in collected.iterdir())
    assert "data data/multi30k/x" in (collected / "train.log").read_text()  # the corpus folder, made relative
    assert budgeted.state(study.students[1], study, execution) == "collected"
    text = paired_report.write_report(study, "make it")
    # averaged: LMA-8 − ReLU = 29.5 − 30.5 = −1.00 (seed 1), 30.0 − 31.5 = −1.50 (seed 2)
    assert "| 1 | 30.00 | 30.50 | 29.00 | 29.50 | -1.00 | – / – |" in text  # one validation: no fall known
    # ReLU final 30, 31; averaged 30.5, 31.5; LMA-8 final 29, 29.5; averaged 29.5, 30; differences -1, -1.5
    assert "| mean ± std | 30.50 ± 0.71 | 31.00 ± 0.71 | 29.25 ± 0.35 | 29.75 ± 0.35 | -1.25 ± 0.35 | |" in text
    assert "**Verdict (READING.md, rule 3): LMA-8 unresolved** against ReLU: below in each of 2 seeds, but 4 of 4" in text
    assert "LMA-8 − ReLU, averaged checkpoint: differences by seed -1.00, -1.50" in text
    assert "mean -1.25, sample std 0.35, paired t -5.00 (df 1); above in 0 of 2 seeds" in text
    # the diagnostic against ReLU and LMA-8 of its seed, averaged: 31.0 − 30.5 and 31.0 − 29.5
    assert "| b: student64_lma_continuous_seed1 | LMA-8, continuous | 30.50 | 31.00 | 0.50 | 1.50 | 9.00 | 9.50 |" in text
    assert "## Budget: N = 8 steps (the pilot's rule)" in text
    assert (study.results / "bleu_vs_steps.png").stat().st_size > 0 and (study.results / "valid_ppl.png").is_file()


def test_training_reports_read_opennmt_step_lines_with_and_without_a_teacher(tmp_path):
    from onmt_lma.study.results import training_reports, validation_curve

    log = tmp_path / "train.log"
    log.write_text(
        "[2026 INFO] Step 2720/ 6000; acc: 68.5; ppl:   4.4; xent: 1.5; lr: 0.00054; sents:    3954; "
        "bsz: 2409/2792/198; 13727/15912 tok/s;    177 sec; kd_kl: 1.01\n"
        "[2026 INFO] Validation perplexity: 8.58871\n[2026 INFO] Validation accuracy: 64.5983\n"
        "[2026 INFO] Step 3000/ 3000; acc: 86.4; ppl:   1.7; xent: 0.5; lr: 0.00040; sents: 10; bsz: 1/2/3; "
        "1/2 tok/s;  9 sec;\n")
    assert training_reports(log) == [
        {"step": 2720, "acc": 68.5, "ppl": 4.4, "xent": 1.5, "kd_kl": 1.01},
        {"step": 3000, "acc": 86.4, "ppl": 1.7, "xent": 0.5, "kd_kl": None}]
    assert validation_curve(log, 250, "accuracy") == [(2750, 64.5983)]
    assert validation_curve(log, 250) == [(2750, 8.58871)]


def test_the_fit_section_shows_training_fit_beside_validation_and_pairs_it_by_seed(tmp_path):
    study = study_plan.load_plan(write_plan(tmp_path / "plan.yaml"))
    # N = 8, window 2: the reports of steps 7 and 8 count (6 is outside, 9 after N)
    fits = {"student64_relu_seed1": (60.0, 2.0), "student64_lma_seed1": (58.0, 2.2),
            "student64_relu_seed2": (61.0, 1.9), "student64_lma_seed2": (60.0, 2.0)}
    for name, (acc, xent) in fits.items():
        folder = study.results / "runs" / name
        folder.mkdir(parents=True)
        lines = [f"Step {step}/ 12; acc: {acc + (50 if step in (6, 9) else 0) + (step == 8)}; ppl: 7.0; "
                 f"xent: {xent}; lr: 1; kd_kl: 0.5" for step in (6, 7, 8, 9)]
        lines[2] += "\nValidation perplexity: 9.5\nValidation accuracy: 55.0"
        (folder / "train.log").write_text("\n".join(lines) + "\n")
    collected = paired_report.load_collected(study.results, 2)
    text = "\n".join(paired_report.fit_lines(study, collected, {"N": 8}))
    assert "## Fit to the training data (steps 7–8) and validation at N" in text
    # seed 1: ReLU accuracy (60 + 61) / 2 = 60.5, valid 55.0, gap 5.5; LMA-8 58.5, gap 3.5
    assert "| ReLU seed 1 | 60.50 | 2.000 | 0.500 | 55.00 | 9.50 | 5.50 |" in text
    assert "| LMA-8 seed 1 | 58.50 | 2.200 | 0.500 | 55.00 | 9.50 | 3.50 |" in text
    assert "LMA-8 − ReLU, training NLL: differences by seed +0.20, +0.10" in text
    assert "LMA-8 − ReLU, training accuracy: differences by seed -2.00, -1.00" in text
    assert "student64_lma_continuous" not in text and "continuous" not in text  # no log: no row
    assert paired_report.fit_lines(study, collected, None) == []


def test_the_curves_name_every_run_and_give_each_diagnostic_a_colour_of_its_own(tmp_path, monkeypatch):
    """A diagnostic with several collected seeds names them and marks them; one with a single seed (or planned
    seeds not yet collected) does not; no diagnostic shares a main run's colour; the right panel is the second half."""
    import matplotlib.figure

    runs_text = ("  - teacher\n  - {size: 64, activations: [relu, lma], seeds: [1, 2], part: main}\n"
                 "  - {size: 64, activations: [lma], seeds: [1, 2], part: b, variant: continuous, what: continuous,"
                 " settings: {lma_continuous: true}}\n"
                 "  - {size: 64, activations: [relu], seeds: [1, 2], part: a, variant: lr2x, what: twice the peak,"
                 " settings: {learning_rate: 0.4}}\n")
    study = study_plan.load_plan(write_plan(tmp_path / "plan.yaml", runs_text=runs_text))
    collected = {run.name: {"curve": {4: 10.0, 8: 20.0}, "valid": {}} for run in study.students
                 if run.name != "student64_relu_lr2x_seed2"}  # planned, not collected yet
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.append(
        [[(line.get_label(), line.get_color(), line.get_marker()) for line in ax.get_lines()] for ax in fig.axes]))
    paired_report.report_plots(study, collected, tmp_path)
    ((whole, late),) = drawn  # no validation curves: one figure
    labels = {label: (color, marker) for label, color, marker in whole}
    assert list(labels) == ["ReLU seed 1", "LMA-8 seed 1", "ReLU seed 2", "LMA-8 seed 2",
                            "(b) LMA-8, continuous seed 1", "(b) LMA-8, continuous seed 2", "(a) ReLU, twice the peak"]
    assert labels["(b) LMA-8, continuous seed 1"][0] == labels["(b) LMA-8, continuous seed 2"][0]
    assert labels["(b) LMA-8, continuous seed 1"][1] != labels["(b) LMA-8, continuous seed 2"][1]
    main_colours = {labels["ReLU seed 1"][0], labels["LMA-8 seed 1"][0]}
    assert not main_colours & {labels["(b) LMA-8, continuous seed 1"][0], labels["(a) ReLU, twice the peak"][0]}
    assert len(late) == len(whole)  # step 8 of 8 is in the second half


def test_a_plan_lists_its_steps_and_runs_one_with_its_arguments(tmp_path, capsys):
    """A study's own scripts are steps of its plan: ``--plan`` lists them, ``--step NAME -- ARGS`` runs one
    from the repository root with the plan's arguments and those after ``--``; its exit status is the command's."""
    plan = write_plan(tmp_path / "plan.yaml", extra="steps:\n  rescore:\n    module: rescore_results\n"
                      "    args: [--data, nowhere]\n    what: chrF added\n")
    study = study_plan.load_plan(plan)
    assert study.steps["rescore"].command(["x"])[1:] == ["-m", "onmt_lma.study.probes.rescore_results", "--data",
                                                         "nowhere", "x"]
    assert runs.main(["study", str(plan), "--plan"]) == 0
    assert "step rescore" in capsys.readouterr().out
    # rescore_results refuses a missing folder: exit 2 comes back from the step
    assert runs.main(["study", str(plan), "--step", "rescore", "--", str(tmp_path / "no_runs")]) == 2
    with pytest.raises(SystemExit):  # a step the plan does not have
        runs.main(["study", str(plan), "--step", "nothing"])
    assert "has the steps rescore" in capsys.readouterr().err


def test_a_step_of_a_module_that_is_not_a_probe_is_refused(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", extra="steps:\n  x:\n    module: no_such_probe\n")
    with pytest.raises(study_plan.StudyError, match="no module onmt_lma.study.probes.no_such_probe"):
        study_plan.load_plan(plan)
    plan = write_plan(tmp_path / "plan.yaml", extra="steps:\n  x:\n    script: lr2x_rule4\n")
    with pytest.raises(study_plan.StudyError, match="step 'x': expected"):
        study_plan.load_plan(plan)


def test_every_committed_plan_loads_with_its_steps():
    plans = sorted((REPO / "studies").glob("*.yaml"))
    steps = {p.name: set(study_plan.load_plan(p).steps) for p in plans}
    assert steps["multi30k_converged.yaml"] >= {"rule4_lr2x", "recalibration", "released"}
    assert steps["multi30k_converged_cpu.yaml"] == {"jump_probe", "jump_probe_report"}
    assert steps["quant.yaml"] == {"run", "report", "deploy", "deploy_report", "matmul_nbits_kernels"} and "threads" in steps["bench.yaml"]
    probes = {p.stem for p in (REPO / "onmt_lma" / "study" / "probes").glob("*.py")} - {"__init__"}
    used = {step.module for p in plans for step in study_plan.load_plan(p).steps.values()}
    assert used == probes, f"probes that no plan runs: {probes - used}"

def test_the_cpu_part_shares_the_main_plans_settings():
    """The CPU part's seed-1 pair is trained with the same teacher, budget rule and settings as the main plan's."""
    main, cpu = study_plan.load_plan(CONVERGED_PLAN), study_plan.load_plan(REPO / "studies" / "multi30k_converged_cpu.yaml")
    assert cpu.budget == main.budget and cpu.corpus == main.corpus and cpu.labels == main.labels
    assert [(r.name, r.settings) for r in cpu.students] == [(r.name, r.settings) for r in main.students[:2]]
    assert [r.part for r in main.students if r.part != "main"] == ["a", "a", "b", "c", "d", "e", "a", "a", "a", "a"]



def test_rule_4_on_cpu_pairs_relu_at_twice_the_peak_with_relu_of_its_seed(tmp_path, monkeypatch):
    """READING's rule 4 on 2 CPU cores: seeds 2-3 of ReLU at twice the peak, each after ReLU of its seed, with
    the main plan's settings, budget rule and N (fixed_by its BUDGET.json, copied into the runs folder)."""
    main, plan = study_plan.load_plan(CONVERGED_PLAN), study_plan.load_plan(REPO / "studies" / "multi30k_converged_cpu_lr2x.yaml")
    assert [run.name for run in plan.students] == ["student64_relu_seed2", "student64_relu_lr2x_seed2",
                                                   "student64_relu_seed3", "student64_relu_lr2x_seed3"]
    by_name = {run.name: run for run in main.students}
    assert all(run.settings == by_name[run.name].settings and run.part == by_name[run.name].part
               for run in plan.students)
    assert plan.kd_cache_topk == 8 and {k: v for k, v in plan.budget.items() if k != "fixed_by"} == main.budget
    execution = budgeted.Execution(tmp_path / "multi30k", tmp_path / "multi30k_converged_cpu_lr2x")
    execution.runs.mkdir()
    monkeypatch.setattr(budgeted, "log", lambda message: None)
    budgeted.adopt_budget(plan, execution)
    assert budget.read_budget(execution.runs)["N"] == json.loads(
        (REPO / "results" / "multi30k_converged" / "BUDGET.json").read_text())["N"] == 2750
    (execution.runs / "BUDGET.json").write_text('{"N": 1000}')
    budgeted.adopt_budget(plan, execution)  # never replaces the runs folder's own
    assert budget.read_budget(execution.runs) == {"N": 1000}


def test_training_processes_run_the_studys_own_code(tmp_path, monkeypatch):
    """``python -m`` imports from its working folder first: a study started from a worktree must train with
    the worktree's code, whatever folder it was started in."""
    study = study_plan.load_plan(CONVERGED_PLAN)
    execution = budgeted.Execution((tmp_path / "multi30k").resolve(), (tmp_path / "study").resolve())
    seen = {}
    monkeypatch.setattr(budgeted, "record_commit", lambda run_dir: None)
    monkeypatch.setattr(budgeted.subprocess, "Popen", lambda command, **kwargs: seen.update(kwargs, command=command))
    monkeypatch.chdir(tmp_path)
    budgeted.launch(study, study.students[0], Path("/t.pt"), execution)
    assert seen["cwd"] == budgeted.REPO == REPO
    assert seen["command"][1:3] == ["-m", "onmt_lma.study.recipes"]
    assert all(Path(arg).is_absolute() for arg in seen["command"] if arg.startswith(("/", "."))
               and not arg.startswith("--"))

"""onmt_lma/study/probes/lr2x_rule4.py: READING's rule 4 for ReLU at twice the peak, each seed paired on its own machine."""

import importlib
import json
import statistics

import pytest

from conftest import synthetic_result

RULE = {"pilot": "student64_relu_seed1", "min_steps": 4, "max_steps": 12, "window": 2, "tolerance": 0.02,
        "every": 2, "bleu_every": 4, "average_last": 2}


def load_script():
    module = importlib.import_module("onmt_lma.study.probes.lr2x_rule4")
    return module


def machine(folder, seeds, scores):
    """A plan (ReLU and ReLU at twice the peak, ``seeds``) whose collected runs score ``scores[name]``
    (averaged; final 0.5 lower), N = 8, validation perplexity 10.0 at step 6 and 9.9 at 8 (a 1 % fall)."""
    folder.mkdir()
    plan = folder / "plan.yaml"
    plan.write_text(f"corpus: multi30k\nresults: {folder / 'results'}\nruns_folder: study\n"
                    f"budget: {json.dumps({**RULE, 'pilot': f'student64_relu_seed{seeds[0]}'})}\n"
                    f"runs:\n  - {{size: 64, activations: [relu], seeds: {list(seeds)}, part: main}}\n"
                    f"  - {{size: 64, activations: [relu], seeds: {list(seeds)}, part: a, variant: lr2x, "
                    "settings: {learning_rate: 0.447}}\n")
    (folder / "results").mkdir()
    (folder / "results" / "BUDGET.json").write_text(json.dumps({"N": 8}))
    for name, bleu in scores.items():
        run_dir = folder / "results" / "runs" / name
        run_dir.mkdir(parents=True)
        for checkpoint, shift in (("model_avg_6-8.pt", 0.0), ("model_step_8.pt", -0.5)):
            result = synthetic_result("multi30k", 64, "relu", int(name[-1]), bleu + shift, 9.0, run_dir)
            (run_dir / f"{checkpoint}.eval.json").write_text(json.dumps(result))
        (run_dir / "train.log").write_text("Step 6/ 12;\nValidation perplexity: 10.0\n"
                                           "Step 8/ 12;\nValidation perplexity: 9.9\n")
    return plan


@pytest.fixture
def two_machines(tmp_path):
    gpu = machine(tmp_path / "gpu", [1], {"student64_relu_seed1": 33.0, "student64_relu_lr2x_seed1": 35.5})
    cpu = machine(tmp_path / "cpu", [2, 3], {"student64_relu_seed2": 34.0, "student64_relu_lr2x_seed2": 35.0,
                                             "student64_relu_seed3": 34.5, "student64_relu_lr2x_seed3": 34.2})
    return ((1, gpu, "GPU"), (2, cpu, "CPU"), (3, cpu, "CPU"))


def test_each_seed_is_paired_on_its_own_machine_and_judged_by_rule_3(two_machines):
    module = load_script()
    rows = module.seed_rows(two_machines)
    assert [(r["seed"], r["machine"], r["relu_averaged"], r["relu_lr2x_averaged"]) for r in rows] == [
        (1, "GPU", 33.0, 35.5), (2, "CPU", 34.0, 35.0), (3, "CPU", 34.5, 34.2)]
    assert rows[0]["relu_final"] == 32.5 and rows[0]["relu_lr2x_chrf"] == 55.5
    assert rows[0]["relu_fall"] == pytest.approx(0.01) and rows[0]["relu_valid_at_n"] == 9.9
    outcome, reason = module.rule4(rows)
    assert outcome == "unresolved" and reason == "above in 2 of 3 seeds"  # seed 3 is below
    text = "\n".join(module.report_lines(rows, outcome, reason))
    diffs = [2.5, 1.0, -0.3]
    t = statistics.mean(diffs) / (statistics.stdev(diffs) / 3 ** 0.5)
    assert f"mean {statistics.mean(diffs):+.2f}, sample std {statistics.stdev(diffs):.2f}, paired t {t:+.2f}" in text
    assert "| 3 | CPU | 34.50 | 34.20 | -0.30 | 34.00 / 33.70 | -0.30 | 9.90 / 9.90 | 1.0 % / 1.0 % |" in text
    assert "by rule 4 the recipes keep the authors' peak" in text


def test_above_in_every_seed_helps_and_a_missing_seed_decides_nothing(two_machines, tmp_path):
    module = load_script()
    better = json.loads((tmp_path / "cpu/results/runs/student64_relu_lr2x_seed3/model_avg_6-8.pt.eval.json").read_text())
    better["bleu"]["score"] = 35.0
    (tmp_path / "cpu/results/runs/student64_relu_lr2x_seed3/model_avg_6-8.pt.eval.json").write_text(json.dumps(better))
    rows = module.seed_rows(two_machines)
    assert module.rule4(rows) == ("helps", "above in each of 3 seeds")
    assert "the recipes change to twice the authors' peak" in "\n".join(module.report_lines(rows, "helps", ""))
    for path in (tmp_path / "cpu/results/runs/student64_relu_lr2x_seed3").glob("*.eval.json"):
        path.unlink()  # seed 3's twice-the-peak run not collected yet
    rows = module.seed_rows(two_machines)
    assert [r["seed"] for r in rows] == [1, 2] and module.rule4(rows)[0] == "unresolved"


def test_the_pairs_are_the_plans_readings_rule_4_names():
    module = load_script()
    from onmt_lma.study import plan as study_plan

    for seed, plan_file, _ in module.PAIRS:
        names = {run.name for run in study_plan.load_plan(plan_file).students}
        assert {module.BASELINE.format(seed), module.VARIANT.format(seed)} <= names
    assert [seed for seed, _, _ in module.PAIRS] == [1, 2, 3]

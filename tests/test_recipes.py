"""Recipes, runs and the run scripts."""

import json
import os
import subprocess
import sys

import pytest

from onmt_lma.bin import train as train_cli
from onmt_lma.study import recipes

from conftest import REPO, TINY_SETTINGS, load, synthetic_result


@pytest.mark.parametrize("corpus", recipes.CORPORA)
@pytest.mark.parametrize("model", recipes.MODELS)
def test_every_recipe_parses_with_the_strict_option_parser(corpus, model, corpus_dir, tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    settings = [("pos_ffn_activation_fn", "lma"), ("seed", 3)]
    if model != "teacher":
        settings.append(("kd_teacher", str(teacher)))
    config = recipes.compose(corpus, model, corpus_dir, tmp_path / "run", settings)
    recipes.write_config(config, tmp_path / "config.yaml")
    opt = train_cli.get_parser().parse_args(["-config", str(tmp_path / "config.yaml")])
    # the paper's settings (Xu et al. 2020, translation experiments)
    assert (opt.heads, opt.transformer_ff, opt.optim, opt.adam_beta2) == (8, 2048, "adam", 0.998)
    assert (opt.decay_method, opt.batch_size, opt.batch_type) == ("noam", 3192, "tokens")
    # noam peaks at learning_rate * d^-0.5 * warmup^-0.5: the peak of the authors' code (learning rate 1.0
    # with warmup 8000) for every size, but twice it for the 64-dim Multi30k student, where twice the peak
    # helped in each seed (results/multi30k_converged, READING rule 4)
    authors_peak = 1.0 * 8000 ** -0.5 * (2 if (corpus, model) == ("multi30k", "student64") else 1)
    assert opt.learning_rate * opt.warmup_steps ** -0.5 == pytest.approx(authors_peak, rel=0.01)
    # the paper's models: biases in every linear layer; the authors' loss: plain NLL
    assert opt.add_qkvbias is True and opt.add_ffnbias is True and opt.label_smoothing == 0.0
    assert opt.dropout == [0.1] and opt.kd_alpha == 0.7 and opt.kd_temperature == 1.0
    assert opt.pos_ffn_activation_fn == "lma" and opt.seed == 3
    if model == "teacher":
        size, layers = {"multi30k": (256, 3)}.get(corpus, (512, 6))
    else:
        size, layers = int(model[len("student"):]), 3
    assert (opt.hidden_size, opt.word_vec_size, opt.enc_layers, opt.dec_layers) == (size, size, layers, layers)
    assert opt.save_model == str((tmp_path / "run").resolve() / "model")

#: the Multi30k study's command (studies/multi30k.yaml)
STUDY = [sys.executable, "-m", "onmt_lma.study.runs", "study", str(REPO / "studies" / "multi30k.yaml")]


def test_a_stale_key_in_a_recipe_fails(corpus_dir, tmp_path):
    config = recipes.compose("ope", "student64", corpus_dir, tmp_path / "run", [("transformer_fff", 2048)])
    recipes.write_config(config, tmp_path / "config.yaml")
    with pytest.raises(SystemExit):
        train_cli.get_parser().parse_args(["-config", str(tmp_path / "config.yaml")])


def test_composition_errors(corpus_dir, tmp_path):
    with pytest.raises(recipes.RecipeError, match="unknown corpus 'iwslt'"):
        recipes.compose("iwslt", "teacher", corpus_dir, tmp_path)
    with pytest.raises(recipes.RecipeError, match="unknown model 'student32'"):
        recipes.compose("ope", "student32", corpus_dir, tmp_path)
    with pytest.raises(recipes.RecipeError, match="data.yaml does not exist: prepare the corpus first"):
        recipes.compose("ope", "teacher", tmp_path, tmp_path)
    with pytest.raises(recipes.RecipeError, match="expected KEY=VALUE"):
        recipes.parse_setting("seed")


def test_a_run_being_trained_cannot_be_trained_twice(corpus_dir, tmp_path):
    with recipes.run_lock(tmp_path):
        with pytest.raises(recipes.RecipeError, match="is being trained by another process"):
            recipes.train("multi30k", "student64", corpus_dir, tmp_path, [("train_steps", 1)])
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.integration
def test_training_runs_resume_and_are_never_overwritten(corpus_dir, tmp_path, capsys):
    settings = list(TINY_SETTINGS.items()) + [("train_steps", 4), ("save_checkpoint_steps", 2),
                                              ("valid_steps", 4), ("pos_ffn_activation_fn", "lma")]
    run_dir = tmp_path / "student"
    final = recipes.train("multi30k", "student64", corpus_dir, run_dir, settings)
    assert final == run_dir / "model_step_4.pt" and (run_dir / "DONE").read_text().strip() == final.name
    mtime = final.stat().st_mtime_ns
    assert recipes.train("multi30k", "student64", corpus_dir, run_dir, settings) == final
    assert "finished already" in capsys.readouterr().err and final.stat().st_mtime_ns == mtime
    # an interrupted run (killed after step 2) resumes from its latest checkpoint
    (run_dir / "DONE").unlink()
    final.unlink()
    recipes.train("multi30k", "student64", corpus_dir, run_dir, settings)
    assert "resuming from model_step_2.pt" in capsys.readouterr().err
    assert "resuming from model_step_2.pt" in (run_dir / "train.log").read_text()  # logged as OpenNMT-py logs
    assert load(final)["optim"]["training_step"] == 5
    (run_dir / "DONE").unlink()
    with pytest.raises(recipes.RecipeError, match="composed with other settings"):
        recipes.train("multi30k", "student64", corpus_dir, run_dir, settings + [("seed", 9)])


def test_study_plan_lists_every_run_in_order_with_its_state(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    (results / "runs" / "teacher").mkdir(parents=True)
    (results / "runs" / "teacher" / "teacher.eval.json").write_text("{}")
    (runs / "multi30k" / "student64_relu_seed1").mkdir(parents=True)
    (runs / "multi30k" / "student64_relu_seed1" / "DONE").write_text("model_step_800.pt\n")
    (runs / "multi30k" / "student64_lma_seed1").mkdir()
    result = subprocess.run(STUDY + ["--plan"], capture_output=True,
                            text=True, env={**os.environ, "RUNS_ROOT": str(runs), "RESULTS": str(results)})
    assert result.returncode == 0, result.stderr
    plan = [line.split() for line in result.stdout.splitlines() if not line.startswith("step ")]
    assert plan[:4] == [["teacher", "collected"], ["student64_relu_seed1", "trained"],
                        ["student64_lma_seed1", "started"], ["student64_aplu_seed1", "todo"]]
    names = [name for name, _ in plan]
    assert names[6:11] == [f"student64_{a}_seed2" for a in ("relu", "lma", "aplu", "prelu", "swish")]
    assert names[11:14] == ["student64_lma4_seed1", "student64_lma12_seed1", "student64_lma16_seed1"]
    assert len(names) == 1 + 5 * 3 + 3 and len(set(names)) == len(names)
    assert all(state == "todo" for _, state in plan[4:])


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train_teacher.sh", [], "expected 1 argument, got 0"),
        ("train_teacher.sh", ["iwslt"], "unknown corpus 'iwslt'"),
        ("train_student.sh", ["ope", "100", "lma", "1"], "unknown size '100' (valid: 256 128 64)"),
        ("train_student.sh", ["ope", "64", "maxout", "1"], "unknown activation 'maxout'"),
        ("train_student.sh", ["ope", "64", "lma", "first"], "SEED must be a positive integer, got 'first'"),
        ("evaluate.sh", ["missing.pt", "ope"], "no checkpoint at 'missing.pt'"),
        ("evaluate.sh", ["x.pt"], "expected 2 arguments, got 1"),
        ("demo.sh", ["now"], "no arguments expected"),
    ],
)
def test_bad_script_arguments_fail_with_usage(script, args, message):
    result = subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: scripts/") and message in result.stderr


def test_study_commit_takes_the_results_folder_and_nothing_else(tmp_path):
    """--commit: the rebuilt report and the collected runs are committed; hand-written files and
    changes staged elsewhere in the repository are left as they were."""
    repo = tmp_path / "repo"
    results = repo / "results" / "multi30k"
    results.mkdir(parents=True)
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                              env=git_env).stdout

    git("init", "-q")
    (repo / "README.md").write_text("a\n")
    (results / "READING.md").write_text("First reading.\n")
    git("add", "-A")
    git("commit", "-q", "-m", "start")
    (results / "READING.md").write_text("A reading being edited.\n")
    (repo / "README.md").write_text("b\n")
    git("add", "README.md")

    env = {**git_env, "RUNS_ROOT": str(tmp_path / "runs"), "RESULTS": str(results)}
    plan = subprocess.run(STUDY + ["--plan"], capture_output=True,
                          text=True, env=env, check=True).stdout
    for seed_bleu, name in enumerate(line.split()[0] for line in plan.splitlines() if not line.startswith("step ")):
        activation = "relu" if name == "teacher" else name.split("_")[1].rstrip("0123456789")
        segments = int(name.split("_")[1][3:] or 8) if activation == "lma" else 8
        seed = 1 if name == "teacher" else int(name[-1])
        result = synthetic_result("multi30k", 256 if name == "teacher" else 64, activation, seed, 10.0 + seed_bleu,
                                  20.0, tmp_path / "gone" / name, teacher=name == "teacher", segments=segments)
        (results / "runs" / name).mkdir(parents=True)
        (results / "runs" / name / f"{name}.eval.json").write_text(json.dumps(result))

    study = subprocess.run(STUDY + ["--commit"], capture_output=True,
                           text=True, env=env)
    assert study.returncode == 0, study.stderr
    assert "all runs collected" in study.stdout and "[study] committed" in study.stdout
    assert git("log", "-1", "--format=%s").strip() == "results/multi30k: every run collected"
    committed = set(git("show", "--name-only", "--format=", "HEAD").split())
    assert {"results/multi30k/report.md", "results/multi30k/runs/student64_lma16_seed1/student64_lma16_seed1.eval.json",
            "results/multi30k/segments_multi30k_64.png"} <= committed
    assert "README.md" not in committed and "results/multi30k/READING.md" not in committed
    assert git("diff", "--cached", "--name-only").split() == ["README.md"]  # still staged, not committed
    assert git("diff", "--name-only").split() == ["results/multi30k/READING.md"]
    assert "A reading being edited." in (results / "report.md").read_text()


def test_a_study_is_a_short_plan_file(tmp_path):
    from onmt_lma.study import plan as study_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text("corpus: multi30k\nresults: results/x\nruns:\n  - teacher\n"
                    "  - {size: 64, activations: [relu, lma], seeds: [1, 2]}\n"
                    "  - {size: 128, activations: [lma], seeds: [1], segments: [4, 8]}\n")
    study = study_plan.load_plan(plan)
    assert [r.name for r in study.runs] == [
        "teacher", "student64_relu_seed1", "student64_lma_seed1", "student64_relu_seed2", "student64_lma_seed2",
        "student128_lma4_seed1", "student128_lma_seed1"]
    assert study.corpus == "multi30k" and study.label == "results/x"
    assert study_plan.student_name(64, "aplu", 3, 12, distilled=False) == "student64_aplu12_seed3_nokd"
    plan.write_text("corpus: multi30k\nresults: r\nruns:\n  - {size: 64, activations: [relu, relu], seeds: [1]}\n")
    with pytest.raises(study_plan.StudyError, match=r"planned twice \(\['student64_relu_seed1'\]\)"):
        study_plan.load_plan(plan)
    plan.write_text("corpus: multi30k\nruns: [teacher]\n")
    with pytest.raises(study_plan.StudyError, match="not a study plan"):
        study_plan.load_plan(plan)
    # the shipped plan of the Multi30k study: 19 runs, seed 1 of every activation first
    shipped = study_plan.load_plan(REPO / "studies" / "multi30k.yaml")
    assert len(shipped.runs) == 19 and shipped.runs[5].name == "student64_swish_seed1"

"""The report: tables (mean, spread, change against ReLU, studies) and plots."""

import json
import math

import pytest

from onmt_lma.study.plots import lma_curve
from onmt_lma.study.report import write_report

from conftest import synthetic_result


def test_report_means_standard_deviations_and_changes(tmp_path):
    results = tmp_path / "runs"
    rows = [("relu", 1, 10.0, 30.0, 900), ("relu", 2, 11.0, 31.0, 950), ("relu", 3, 12.0, 32.0, 1000),
            ("lma", 1, 12.0, 28.0, 760), ("lma", 2, 13.0, 29.0, None), ("prelu", 1, 9.0, 33.0, None)]
    for activation, seed, bleu, ppl, hyp_len in rows:
        run_dir = results / f"student64_{activation}_seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text(
            "[x INFO] Step 100/200; acc: 1\n[x INFO] Validation perplexity: 50.0\n"
            f"[x INFO] Step 200/200; acc: 2\n[x INFO] Validation perplexity: {ppl}\n"
        )
        (run_dir / "m.pt.eval.json").write_text(
            json.dumps(synthetic_result("multi30k", 64, activation, seed, bleu, ppl, run_dir, hyp_len=hyp_len)))
    teacher_dir = results / "teacher"
    teacher_dir.mkdir()
    (teacher_dir / "m.pt.eval.json").write_text(json.dumps(synthetic_result("multi30k", 256, "relu", 1, 20.0, 10.0, teacher_dir, teacher=True)))
    _, teacher_only = write_report([teacher_dir], tmp_path / "teacher_report")
    assert "No student runs yet." in teacher_only and "| multi30k | 256-dim 3+3 | 20.00 |" in teacher_only
    path, text = write_report([results], tmp_path / "report")
    row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | BLEU |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(l for l in text.splitlines() if l.startswith("| corpus | student |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[3:] == ["relu", "prelu", "lma-8"]
    assert cells[3] == "11.00 ± 1.00 [n=3]"
    assert cells[4] == "9.00 (-18.2%) [n=1]"
    assert cells[5] == "12.50 ± 0.71 (+13.6%) [n=2]"
    ppl_row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | ppl |"))
    assert "28.50 ± 0.71 (-8.1%) [n=2]" in ppl_row
    # the length ratio where sacreBLEU's text gives the lengths, "—" where no run of a column does
    length_row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | length ratio |"))
    assert [c.strip() for c in length_row.strip("|").split("|")][3:] == ["0.95 ± 0.05 [n=3]", "—", "0.76 (-20.0%) [n=1]"]
    assert "| multi30k | 256-dim 3+3 | 20.00 | 40.00 | 21.00 | 10.00 | 1.0 M |" in text
    chrf_row = next(l for l in text.splitlines() if l.startswith("| multi30k | 64 | chrF |"))
    assert [c.strip() for c in chrf_row.strip("|").split("|")][3] == "31.00 ± 1.00 [n=3]"
    for image in ("bleu_vs_size_multi30k.png", "valid_ppl_multi30k_64.png"):
        assert (tmp_path / "report" / image).stat().st_size > 1000
        assert f"]({image})" in text


def test_report_compares_with_relu_studies_segments_and_times_runs(tmp_path):
    """Collected results (train.log beside the JSON, run directory gone), a reading, a segment study."""
    collected = tmp_path / "collected"
    rows = [("relu", 8, 1, 10.0), ("relu", 8, 2, 12.0), ("lma", 8, 1, 13.0), ("lma", 8, 2, 15.0),
            ("lma", 4, 1, 11.0), ("lma", 16, 1, 14.0)]
    for activation, segments, seed, bleu in rows:
        name = f"student64_{activation}{'' if segments == 8 else segments}_seed{seed}"
        (collected / name).mkdir(parents=True)
        # a run stopped after 60 s at step 40 and resumed: 60 + 90 s of training
        (collected / name / "train.log").write_text(
            "[x INFO] Step 20/80; acc: 1; 30 sec;\n[x INFO] Step 40/80; acc: 1; 60 sec;\n"
            "[x INFO] Step 60/80; acc: 2; 45 sec;\n[x INFO] Validation perplexity: 20.0\n"
            "[x INFO] Step 80/80; acc: 2; 90 sec;\n[x INFO] Validation perplexity: 18.0\n"
        )
        result = synthetic_result("multi30k", 64, activation, seed, bleu, 20.0, tmp_path / "gone" / name,
                                  segments=segments)
        result.update(evaluation_seconds=120.0, commit="0123456789abcdef", evaluated_at="2026-11-24T10:00:00+00:00")
        (collected / name / f"{name}.eval.json").write_text(json.dumps(result))
    reading = tmp_path / "READING.md"
    reading.write_text("LMA-8 beats ReLU by 3 BLEU here.\n")
    _, text = write_report([collected], tmp_path / "report", reading)
    assert text.index("## Reading") < text.index("## Students") and "LMA-8 beats ReLU by 3 BLEU here." in text
    # lma-8: +3.00, standard error sqrt(2/2 + 2/2) = 1.414 -> t = +2.12
    assert "| multi30k | 64 | lma-8 | +3.00 | 13.00 to 15.00 vs 10.00 to 12.00 | +2.12 | 2 / 2 |" in text
    assert "| multi30k | 64 | lma-4 | +0.00 | 11.00 to 11.00 vs 10.00 to 12.00 | — | 1 / 2 |" in text
    segment_rows = [l for l in text.split("## LMA segment study")[1].splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [l.split("|")[1].strip() for l in segment_rows] == ["4", "8", "16"]
    assert segment_rows[1].split("|")[2].strip() == "14.00" and segment_rows[1].split("|")[-2].strip() == "2"
    assert [l.split("|")[3].strip() for l in segment_rows] == ["s1 11.00", "s1 13.00, s2 15.00", "s1 14.00"]
    assert "| student64_lma16_seed1 | lma-16 | 1 | None | 2.5 min | 2.0 min | 0123456789 |" in text
    for image in ("segments_multi30k_64.png", "valid_ppl_multi30k_64.png"):
        assert (tmp_path / "report" / image).stat().st_size > 1000


def test_learned_lma_functions_are_drawn_as_the_model_computes_them(tmp_path):
    layer = {"alpha": [0.3, -0.1, 0.0, 0.2, 0.9, 0.7, 1.1, 0.5], "beta": [0.1, 0.0, -0.2, 0.05, -0.3, 0.2, 0.0, -0.4],
             "running_mean": -0.4, "running_std": 1.3}
    xs = [-9.0, -4.3, -1.0, -0.41, -0.39, 0.0, 0.6, 1.55, 2.0, 3.5, 12.0]
    width = 6 * layer["running_std"] / 8
    expected = []
    for x in xs:  # the paper's batch segmentation and per-segment lines (Xu et al. 2020, method section), in float64
        j = min(max(math.floor((x - (layer["running_mean"] - 3 * layer["running_std"])) / width), 0), 7)
        expected.append(layer["alpha"][j] * x + layer["beta"][j])
    assert lma_curve(layer, xs) == pytest.approx(expected, abs=1e-12)

    collected = tmp_path / "collected"
    for seed in (1, 2):
        name = f"student64_lma_seed{seed}"
        (collected / name).mkdir(parents=True)
        result = synthetic_result("multi30k", 64, "lma", seed, 10.0, 20.0, tmp_path / "gone" / name)
        result["model"]["learned_lma"] = {f"encoder.transformer.{i}.feed_forward.activation": layer for i in range(3)}
        (collected / name / f"{name}.eval.json").write_text(json.dumps(result))
    _, text = write_report([collected], tmp_path / "report")
    assert "](lma_shapes_multi30k_64.png)" in text
    assert (tmp_path / "report" / "lma_shapes_multi30k_64.png").stat().st_size > 1000


def test_a_studys_run_labels_name_the_learned_shapes(tmp_path, monkeypatch):
    """A study's diagnostics are all seed 1 of LMA-8: the shapes figure names them by their run labels (``_label``),
    each in a colour of its own, where activation and seed alone would name them all alike."""
    import matplotlib.figure

    from onmt_lma.study.plots import lma_shape_plots

    layer = {"alpha": [0.0] * 4 + [1.0] * 4, "beta": [0.0] * 8, "running_mean": 0.0, "running_std": 1.0}
    results = []
    for label in ("LMA-8 seed 1", "LMA-8, continuous (b)", "LMA-8, alpha/beta frozen (d)"):
        result = synthetic_result("multi30k", 64, "lma", 1, 10.0, 20.0, tmp_path / label)
        result["model"]["learned_lma"] = {"encoder.transformer.0.feed_forward.activation": layer}
        results.append(dict(result, _label=label))
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.append(
        [(line.get_label(), line.get_color()) for line in fig.axes[0].get_lines()]))
    lma_shape_plots(results, tmp_path)
    (lines,) = drawn
    assert [label for label, _ in lines] == ["LMA-8 seed 1", "LMA-8, continuous (b)", "LMA-8, alpha/beta frozen (d)",
                                             "ReLU"]
    assert len({color for _, color in lines[:3]}) == 3


def test_old_results_get_chrf_from_their_own_hypotheses(tmp_path):
    """onmt_lma/study/probes/rescore_results.py: BLEU recomputed from the stored hypotheses must equal the stored one;
    chrF is then added (sacreBLEU called directly as the check)."""
    import subprocess
    import sys

    import sacrebleu


    refs = ["A dog runs on the grass .", "Two men are talking .", "A child plays in the water ."]
    hyps = ["A dog runs on grass .", "Two men talk .", "A kid plays in water ."]
    data, run = tmp_path / "data", tmp_path / "runs" / "r1"
    data.mkdir()
    run.mkdir(parents=True)
    (data / "test.ref.detok.en").write_text("\n".join(refs) + "\n")
    (run / "test.hyp.detok.en").write_text("\n".join(hyps) + "\n")
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
    (run / "r1.eval.json").write_text(json.dumps({"bleu": {"score": bleu}, "ppl": 3.0}))
    command = [sys.executable, "-m", "onmt_lma.study.probes.rescore_results", str(tmp_path / "runs"), "--data", str(data)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((run / "r1.eval.json").read_text())
    assert list(result) == ["bleu", "chrf", "ppl"] and result["ppl"] == 3.0
    assert result["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    # hypotheses that did not make the stored BLEU are refused
    (run / "r1.eval.json").write_text(json.dumps({"bleu": {"score": bleu + 1}}))
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode != 0 and "not the hypotheses it was made from" in refused.stderr


def test_validation_steps_are_exact_when_reports_do_not_divide_them(tmp_path):
    """Reports every 20 steps, validation every 250: the report before the step-250 validation is step 240."""
    from onmt_lma.study.results import validation_curve

    lines = []
    for step in range(20, 521, 20):
        lines.append(f"[2026-01-01 00:00:00,000 INFO] Step {step}/ 6000; acc: 50.0; ppl: 9.0")
        if step in (240, 500):
            lines.append(f"[2026-01-01 00:00:00,000 INFO] Validation perplexity: {1000 / step:.3f}")
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    assert validation_curve(log, valid_steps=250) == [(250, pytest.approx(4.167)), (500, 2.0)]
    assert [step for step, _ in validation_curve(log)] == [240, 500]  # without valid_steps: the last report


def test_training_speed_is_read_from_the_step_reports_target_side(tmp_path):
    from onmt_lma.study.results import target_tokens_per_second

    log = tmp_path / "train.log"
    log.write_text(
        "[2026-11-25 19:44:07,922 INFO] Step 40/   40; acc: 8.7; ppl: 8574.6; xent: 9.1; lr: 0.00014; "
        "sents:    1530; bsz: 2420/2770/153; 1440/1648 tok/s;     71 sec;\n"
        "[2026-11-25 19:44:08,000 INFO] Validation perplexity: 138.2\n"
        "[2026-11-25 19:48:14,712 INFO] Step 60/  800; acc: 0.3; ppl: 10510.3; xent: 9.3; lr: 0.00007; "
        "sents:    3979; bsz: 2303/2722/199; 455/538 tok/s;    101 sec; kd_kl: 8.78\n")
    assert target_tokens_per_second(log) == [1648, 538]

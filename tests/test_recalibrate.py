"""onmt_lma_recalibrate: LMA's running statistics recomputed for a model's own weights."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import load, run
from onmt_lma.model.lma import LMA
from onmt_lma.model.statistics import batch_statistics_mode


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), LMA(), nn.Dropout(0.5), nn.Linear(16, 4), LMA(momentum=0.9))


def test_running_statistics_become_the_mean_of_the_batch_statistics():
    model = _toy_model().train()
    inputs = {1: [], 4: []}
    for index in inputs:
        model[index].register_forward_pre_hook(lambda module, args, index=index: inputs[index].append(
            args[0].detach().double().numpy().copy()))
    batches = [torch.randn(n, 4) * scale + shift for n, scale, shift in ((5, 1.0, 0.0), (9, 3.0, 2.0), (2, 0.5, -1.0))]
    with torch.no_grad(), batch_statistics_mode(model) as next_batch:
        for batch in batches:
            next_batch()
            model(batch)
    for index, seen in inputs.items():
        assert len(seen) == len(batches)
        # float64, numpy: each batch's mean and population std over all its elements, then their plain mean
        expected_mean = np.mean([x.mean() for x in seen])
        expected_std = np.mean([x.std() for x in seen])
        assert model[index].running_mean.item() == pytest.approx(expected_mean, rel=1e-5, abs=1e-6)
        assert model[index].running_std.item() == pytest.approx(expected_std, rel=1e-5)
    # modes and momenta are given back
    assert all(module.training for module in model.modules())
    assert (model[1].momentum, model[4].momentum) == (0.99, 0.9)


def test_dropout_is_off_unless_asked_for():
    model = _toy_model().eval()
    batch = torch.randn(8, 4)
    with torch.no_grad(), batch_statistics_mode(model) as next_batch:
        next_batch()
        first = model(batch)
        next_batch()
        assert torch.equal(first, model(batch))  # no dropout: the same batch gives the same output
        assert model[1].training and not model[2].training
    with torch.no_grad(), batch_statistics_mode(model, dropout=True) as next_batch:
        next_batch()
        assert model[2].training
        torch.manual_seed(1)
        first = model(batch)
        torch.manual_seed(2)
        assert not torch.equal(first, model(batch))
    assert not any(module.training for module in model.modules())


def _statistics(checkpoint):
    return {k: v for k, v in checkpoint["model"].items() if k.endswith((".running_mean", ".running_std"))}


@pytest.mark.integration  # trains a tiny model (fixtures)
def test_recalibration_replaces_only_the_statistics_and_the_model_translates(lma_student, vocab, tmp_path):
    out = tmp_path / "recalibrated.pt"
    run("onmt_lma_recalibrate", "-model", lma_student, "-src", vocab / "train.de", "-tgt", vocab / "train.en",
        "-output", out)
    before, after = load(lma_student), load(out)
    old, new = _statistics(before), _statistics(after)
    assert sorted(old) == sorted(new) and len(new) == 2 * 3  # 2 encoder + 1 decoder layers
    # 30 steps of a 0.99 moving average from (0, 1) are far from the statistics of the trained weights
    assert max(abs(float(old[k]) - float(new[k])) for k in new) > 0.05
    for key in ("model", "generator"):
        for name, tensor in before[key].items():
            if name not in new:
                assert torch.equal(tensor, after[key][name]), name
    facts = after["onmt_lma"]["recalibrated"]
    assert facts["sentences"] == 800 and facts["batches"] >= 1 and facts["dropout"] is False
    # the weights alone decide the batch statistics: recalibrating again changes nothing
    again = tmp_path / "again.pt"
    run("onmt_lma_recalibrate", "-model", out, "-src", vocab / "train.de", "-tgt", vocab / "train.en",
        "-output", again)
    for name, tensor in _statistics(load(again)).items():
        assert float(tensor) == pytest.approx(float(new[name]), rel=1e-5, abs=1e-6)
    # with training's dropout (the tiny model trained with OpenNMT-py's default 0.3) the same sentences give
    # other statistics; without it they would be bit-identical (the same batches, no randomness)
    halves = {}
    for name, extra in (("off", []), ("on", ["-training_dropout"])):
        halves[name] = tmp_path / f"half_{name}.pt"
        run("onmt_lma_recalibrate", "-model", lma_student, "-src", vocab / "train.de", "-tgt", vocab / "train.en",
            "-output", halves[name], "-max_sentences", "400", *extra)
    off, on = load(halves["off"]), load(halves["on"])
    assert (off["onmt_lma"]["recalibrated"]["dropout"], on["onmt_lma"]["recalibrated"]["dropout"]) == (False, True)
    assert 400 <= on["onmt_lma"]["recalibrated"]["sentences"] < 800
    assert on["onmt_lma"]["recalibrated"]["sentences"] == off["onmt_lma"]["recalibrated"]["sentences"]
    relative = [abs(float(_statistics(on)[k]) / float(_statistics(off)[k]) - 1) for k in new if k.endswith("_std")]
    assert max(relative) > 1e-3
    hyp = tmp_path / "hyp.txt"
    run("onmt_lma_translate", "-model", out, "-src", vocab / "test.de", "-output", hyp, "-beam_size", "2")
    assert len(hyp.read_text().splitlines()) == len((vocab / "test.de").read_text().splitlines())


@pytest.mark.integration  # trains a tiny model (fixtures)
@pytest.mark.parametrize("case, message", [
    ("relu", "has no LMA layer"),
    ("same", "it would be overwritten"),
    ("lines", "expected line-aligned parallel text"),
    ("missing", "does not exist"),
])
def test_bad_recalibration_input_is_one_line(case, message, lma_student, teacher, vocab, tmp_path):
    out = tmp_path / "out.pt"
    model, src, tgt = lma_student, vocab / "train.de", vocab / "train.en"
    if case == "relu":
        model = teacher
    elif case == "same":
        out = model
    elif case == "lines":
        tgt = tmp_path / "short.en"
        tgt.write_text("\n".join((vocab / "train.en").read_text().splitlines()[:10]) + "\n")
    elif case == "missing":
        src = tmp_path / "nowhere.de"
    result = run("onmt_lma_recalibrate", "-model", model, "-src", src, "-tgt", tgt, "-output", out, expect_ok=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("onmt_lma_recalibrate: error:") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if case != "same":
        assert not out.exists()


def _script(name):
    import importlib


    return importlib.import_module(f"onmt_lma.study.probes.{name}")


def test_the_recalibration_study_applies_rule_6_and_measures_cut_point_shifts():
    study = _script("lma_recalibration")
    relu = [33.0, 34.0, 35.0]
    assert study.verdict([32.0, 33.0, 34.0], [33.0, 34.0, 35.0], relu).startswith("closes the gap")
    assert study.verdict([32.0, 33.0, 34.0], [32.5, 33.5, 34.1], relu).startswith("helps LMA-8")
    assert study.verdict([32.0, 33.0, 34.0], [32.5, 32.9, 34.1], relu) == \
        "does not help (above the released LMA-8 in 2 of 3 seeds)"
    # std 0.8, k = 8: segment width 0.6; the mean moves by 0.03 (0.05 widths), the std by 0.02: the outermost
    # cut points (mean ± 3 std) by up to 0.03 + 0.06 = 0.09 (0.15 widths)
    middle, outer = study.segment_shift((0.1, 0.8), (0.13, 0.82))
    assert (middle, outer) == (pytest.approx(0.05), pytest.approx(0.15))


@pytest.mark.integration  # prepares a tiny corpus (fixture)
def test_the_jump_probe_trains_the_cpu_pairs_recipe_with_only_its_own_settings(corpus_dir, tmp_path):
    """The probes are paired with the CPU seed-1 pair only if they train its configuration: the composed config
    equals the pair's LMA-8 config.yaml but for paths, the step count and each probe's own settings."""
    import yaml

    from onmt_lma.study.recipes import compose, parse_setting

    probe = _script("lma_jump_probe")
    pair = yaml.safe_load((probe.PAIR / "student64_lma_seed1" / "config.yaml").read_text())
    paths = {"src_vocab", "tgt_vocab", "data", "save_model", "log_file", "save_data", "kd_teacher"}
    for name, (_, own) in probe.PROBES.items():
        argv = probe.command(tmp_path / name, corpus_dir, "lma", 1000, own)
        settings = [parse_setting(argv[i + 1]) for i, arg in enumerate(argv) if arg == "--set"]
        config = compose("multi30k", "student64", corpus_dir, tmp_path / name, settings)
        assert config["train_steps"] == 1000 and config["kd_teacher"].endswith("teacher/model_step_3000.pt")
        differing = {key for key in set(config) | set(pair) if config.get(key) != pair.get(key)}
        assert differing - paths == {"train_steps"} | {key for key, _ in own}, name

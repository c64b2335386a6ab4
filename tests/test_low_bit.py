"""Low-bit students that deploy: packed 2- and 4-bit weights on ONNX Runtime (MatMulNBits, GatherBlockQuantized),
post-training (``onmt_lma_quantize -bits``) and quantization-aware; the engine's translations against the
PyTorch model with exactly the same weights; the refusals."""

import json

import numpy as np
import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.deploy.low_bit import _pack, block_size
from onmt_lma.model.quantization import (QuantizeError, pack_codes, symmetric_block_codes, unpack_codes,
                                         values_of_symmetric_blocks)

from conftest import load, run, train_args


@pytest.mark.parametrize("bits", [2, 4])
def test_the_graphs_packing_is_the_checkpoints_and_unpacks_exactly(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (6, 64), dtype=torch.uint8)
    packed = _pack(codes.numpy(), bits)
    assert packed.shape == (6, 64 * bits // 8)
    assert np.array_equal(packed.reshape(-1), pack_codes(codes.reshape(-1), bits).numpy())
    assert torch.equal(unpack_codes(torch.from_numpy(packed.reshape(-1)), bits, codes.numel()).reshape(6, 64), codes)


def test_symmetric_blocks_match_a_float64_reference():
    torch.manual_seed(0)
    table = torch.randn(5, 64) * torch.tensor([1.0, 0.01, 0.0, 30.0, 1.0])[:, None]
    codes, scales = symmetric_block_codes(table, 4, 32)
    reference = table.double().reshape(5, 2, 32)
    peak = reference.abs().amax(dim=2)
    expected_scales = torch.where(peak > 0, peak / 7, torch.ones_like(peak))
    torch.testing.assert_close(scales.double(), expected_scales.reshape(-1), rtol=1e-6, atol=0)
    expected = (torch.round(reference / expected_scales[..., None]) + 8).clamp(1, 15)
    assert torch.equal(codes.reshape(5, 2, 32).long(), expected.long())
    values = values_of_symmetric_blocks(codes, scales, 4, 32).double()
    assert ((values - table.double()).abs().reshape(5, 2, 32) <= expected_scales[..., None] / 2 + 1e-6).all()
    with pytest.raises(QuantizeError, match="blocks of 48"):
        symmetric_block_codes(table, 4, 48)


@pytest.mark.parametrize("inputs, bucket, block", [(64, 256, 64), (2048, 256, 256), (32, 64, 32), (64, 64, 64)])
def test_a_block_lies_in_one_bucket(inputs, bucket, block):
    assert block_size(inputs, bucket) == block


@pytest.mark.parametrize("inputs, bucket", [(64, 48), (64, 8), (24, 48)])
def test_buckets_that_onnx_runtime_cannot_run_are_named(inputs, bucket):
    with pytest.raises(QuantizeError, match=f"buckets of {bucket} values on a layer of {inputs} inputs"):
        block_size(inputs, bucket)


def graph_ops(folder):
    """Each graph's operator types, a float product with a weight (a constant second input) as "float weights"."""
    import onnx

    ops = {}
    for name in ("encoder", "decoder_step"):
        graph = onnx.load(str(folder / f"{name}.onnx")).graph
        constants = {i.name for i in graph.initializer}
        ops[name] = ["float weights" if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants else n.op_type
                     for n in graph.node]
    return ops


def translations(vocab, tmp_path, model, label, *extra):
    out = tmp_path / f"{label}.en"
    run("onmt_lma_translate", "-model", model, "-src", vocab / "test.de", "-output", out, "-beam_size", "4",
        "-n_best", "2", "-max_length", "30", "-batch_size", "4", *extra)
    return out.read_text().splitlines()


@pytest.mark.integration
@pytest.mark.parametrize("bits, embeddings", [(4, True), (2, False)])
def test_a_post_training_low_bit_export_translates_as_its_pytorch_self(vocab, lma_student, tmp_path, bits,
                                                                        embeddings):
    quantized, folder, float_folder = tmp_path / "q.pt", tmp_path / "q_onnx", tmp_path / "float_onnx"
    run("onmt_lma_quantize", "-model", lma_student, "-output", quantized, "-bits", bits,
        *(["-embeddings"] if embeddings else []))
    info = load(quantized)["onmt_lma"]["low_bit"]
    assert (info["bits"], info["bucket"], info["source"], info["embeddings"]) == (bits, 64, "post-training", embeddings)
    run("onmt_lma_export", "-model", quantized, "-output", folder)
    run("onmt_lma_export", "-model", lma_student, "-output", float_folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["low_bit"]["bits"] == bits and manifest["max_positions"] == 1024
    assert "native.pt" not in manifest["files"] and "native.low_bit.pt" in manifest["files"]
    ops = graph_ops(folder)
    assert "MatMulNBits" in ops["encoder"] and "MatMulNBits" in ops["decoder_step"]
    assert "float weights" not in ops["encoder"] + ops["decoder_step"]
    assert ("GatherBlockQuantized" in ops["encoder"]) == embeddings
    size = sum(f.stat().st_size for f in folder.glob("*.onnx"))
    float_size = sum(f.stat().st_size for f in float_folder.glob("*.onnx"))
    assert size < float_size * (0.3 if embeddings else 0.6)  # a tiny model: float embeddings are most of it
    pytorch = translations(vocab, tmp_path, quantized, "pytorch")
    assert len(pytorch) == 24 and pytorch == translations(vocab, tmp_path, folder, "onnx", "-engine", "onnx")
    assert pytorch == translations(vocab, tmp_path, folder, "native", "-engine", "native")  # codes unpacked at load
    native_size = (folder / "native.low_bit.pt").stat().st_size
    from onmt_lma.deploy.graphs import load_model
    from onmt_lma.deploy.native import low_bit_native_weights, native_weights

    _, model, model_opt = load_model(quantized)  # the PyTorch self: its weights exactly, the engine's layout
    expected, loaded = native_weights(model, model_opt)["weights"], low_bit_native_weights(folder / "native.low_bit.pt")
    assert set(loaded["weights"]) == set(expected)
    positions = loaded["weights"]["positions"]
    assert torch.equal(positions, expected["positions"][: len(positions)]) and len(positions) == 1024
    assert all(torch.equal(loaded["weights"][name], expected[name]) for name in expected if name != "positions")
    assert "vocab" not in load(folder / "native.low_bit.pt")  # src/tgt.vocab.json hold the vocabularies
    assert native_size < (float_folder / "native.pt").stat().st_size * (0.3 if embeddings else 0.6)
    # int8 compute on the low-bit file: its dequantized codes as int8 rows, as PyTorch's -precision int8 runs them
    int8 = translations(vocab, tmp_path, quantized, "pytorch_int8", "-precision", "int8")
    assert int8 == translations(vocab, tmp_path, folder, "native_int8", "-engine", "native", "-precision", "int8")


@pytest.mark.integration
def test_a_quantization_aware_student_deploys_in_its_own_4_bit_codes(vocab, lma_student, tmp_path):
    run("onmt_lma_train", *train_args(vocab, tmp_path / "qat", "-pos_ffn_activation_fn", "lma", "-train_from",
                                      lma_student, "-train_steps", "32", "-save_checkpoint_steps", "32",
                                      "-quant_bits", "4", "-quant_bucket", "64"))
    trained, codes, folder = tmp_path / "qat_step_32.pt", tmp_path / "qat.q4.pt", tmp_path / "qat_onnx"
    result = run("onmt_lma_export", "-model", trained, "-output", tmp_path / "x", "-bits", "4", expect_ok=False)
    assert result.returncode == 2 and f"onmt_lma_quantize -model {trained} -output CK.q4.pt" in result.stderr
    run("onmt_lma_quantize", "-model", trained, "-output", codes)
    assert load(codes)["onmt_lma"]["low_bit"]["source"] == "quantization-aware"
    run("onmt_lma_export", "-model", codes, "-output", folder, "-bits", "4")
    fake_quantized = translations(vocab, tmp_path, trained, "fake_quantized")  # PyTorch, as it trained
    assert fake_quantized == translations(vocab, tmp_path, folder, "onnx", "-engine", "onnx")
    assert fake_quantized == translations(vocab, tmp_path, folder, "native", "-engine", "native")


@pytest.mark.integration
@pytest.mark.parametrize("bits, bucket, why", [(3, 64, "3-bit codes: ONNX Runtime's CPU kernels run 2 and 4 bits"),
                                               (4, 48, "buckets of 48 values on a layer of 32 inputs")])
def test_codes_onnx_runtime_cannot_run_deploy_on_the_native_engine_alone(vocab, lma_student, tmp_path, bits, bucket,
                                                                         why):
    """3-bit codes (and buckets MatMulNBits' blocks cannot follow): packed on disk as a bit stream, unpacked as
    the native engine loads them; the ONNX engine says why it has no graphs."""
    quantized, folder = tmp_path / "q.pt", tmp_path / "q_export"
    run("onmt_lma_quantize", "-model", lma_student, "-output", quantized, "-bits", bits, "-bucket", bucket)
    info = load(quantized)["onmt_lma"]["low_bit"]
    weight = load(quantized)["model"]["decoder.transformer_layers.0.feed_forward.w_1.weight"]
    values = info["weights"]["model/decoder.transformer_layers.0.feed_forward.w_1.weight"]["shape"]
    assert weight.dtype == torch.uint8 and weight.numel() == -(-values[0] * values[1] * bits // 8)
    run("onmt_lma_export", "-model", quantized, "-output", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert why in manifest["onnx_refused"] and not list(folder.glob("*.onnx"))
    assert set(manifest["files"]) == {"native.low_bit.pt", "src.vocab.json", "tgt.vocab.json"}
    pytorch = translations(vocab, tmp_path, quantized, "pytorch")
    assert len(pytorch) == 24 and pytorch == translations(vocab, tmp_path, folder, "native", "-engine", "native")
    refused = run("onmt_lma_translate", "-model", folder, "-src", vocab / "test.de", "-output", tmp_path / "o.en",
                  "-engine", "onnx", expect_ok=False)
    assert refused.returncode == 2 and why in refused.stderr and "run it with -engine native" in refused.stderr
    assert not (tmp_path / "o.en").exists()


@pytest.mark.integration
def test_low_bit_refusals_are_one_line_and_say_what_to_run(vocab, lma_student, tmp_path):
    def fails(command, *args):
        result = run(command, *args, expect_ok=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stderr

    message = fails("onmt_lma_export", "-model", lma_student, "-output", tmp_path / "a", "-bits", "4")
    assert f"onmt_lma_quantize -model {lma_student} -bits 4" in message and "-quant_bits 4" in message
    run("onmt_lma_quantize", "-model", lma_student, "-output", tmp_path / "q4.pt", "-bits", "4")
    assert "low-bit already" in fails("onmt_lma_export", "-model", tmp_path / "q4.pt", "-output", tmp_path / "c",
                                      "-int8")
    assert "holds 4-bit codes" in fails("onmt_lma_export", "-model", tmp_path / "q4.pt", "-output", tmp_path / "d",
                                        "-bits", "2")
    assert "-bucket goes with -bits" in fails("onmt_lma_quantize", "-model", lma_student, "-output",
                                              tmp_path / "f.pt", "-bucket", "64")
    assert not [p for p in tmp_path.iterdir() if p.name in "acdf"]
    run("onmt_lma_export", "-model", tmp_path / "q4.pt", "-output", tmp_path / "q4_onnx")
    long_line = tmp_path / "long.de"
    long_line.write_text("ein Hund\n" + " ".join(["Hund"] * 1100) + "\n")
    message = fails("onmt_lma_translate", "-engine", "onnx", "-model", tmp_path / "q4_onnx", "-src", long_line,
                    "-output", tmp_path / "long.en")
    assert "line 2: 1100 tokens; this export's position table holds 1024" in message
    assert not (tmp_path / "long.en").exists()


def test_the_deploy_study_fine_tunes_a_released_student_at_its_last_learning_rate(tmp_path):
    """The QAT rows of results/quant/deploy.md: a released student (no optimizer state) goes on at the constant
    rate OpenNMT-py's own Noam schedule gave at its last averaged step, saved once, with its learned codes."""
    from onmt.utils.optimizers import noam_decay

    from onmt_lma.study.probes import low_bit_deploy as study

    run_dir, settings = study.qat_fine_tuning("lma", study.STUDENTS["lma"], 4, tmp_path)
    settings = dict(settings)
    released = load(study.STUDENTS["lma"])
    opt, last = released["opt"], released["onmt_lma"]["steps"][-1]
    assert settings["learning_rate"] == pytest.approx(opt.learning_rate * noam_decay(last, opt.warmup_steps, opt.hidden_size))
    assert (settings["reset_optim"], settings["decay_method"], settings["quant_bits"]) == ("all", "none", 4)
    assert settings["save_checkpoint_steps"] == settings["train_steps"] == study.QAT_STEPS
    assert settings["pos_ffn_activation_fn"] == "lma" and run_dir == tmp_path / f"lma_qat4_{study.QAT_STEPS}"
    names = {study.folder_of(tmp_path, "lma", name) for name in study.CONFIGURATIONS}
    assert len(names) == 1 + len(study.LOW_BIT)  # fp32 and int8 share one export, int8 compute its low-bit one
    assert study.folder_of(tmp_path, "lma", "4-bit QAT" + study.INT8_COMPUTE) == study.folder_of(tmp_path, "lma", "4-bit QAT")
    assert len({study.result_slug(name) for name in study.CONFIGURATIONS}) == len(study.CONFIGURATIONS)
    assert study.result_slug("4-bit PTQ") == "4bit_PTQ" and study.slug("2-bit QAT") == "q2qat"


def test_the_deploy_study_judges_speed_by_the_median_per_round_ratio(tmp_path):
    """Side-by-side rounds: a row's speed against the int8 graphs is the median of its per-round ratios (a slow
    round slows both), not a ratio of single runs; the goal line says which it used."""
    import json

    from onmt_lma.study.probes import low_bit_deploy as study

    int8, native = study.speed_key("relu", "onnx", "int8", 1), study.speed_key("relu", "native", "4-bit QAT", 1)
    int8_32, native_32 = (study.speed_key("relu", "onnx", "int8", 32),
                          study.speed_key("relu", "native", "4-bit QAT", 32))
    for i, (a, b) in enumerate([(100, 120), (50, 65), (200, 150)]):  # ratios 1.2, 1.3, 0.75
        (tmp_path / f"speed.round{i}.json").write_text(json.dumps({int8: a, native: b, int8_32: 300, native_32: 330}))
    speeds, rounds = study.side_by_side_speeds(tmp_path)
    assert rounds == 3
    assert speeds[("relu", "native", "4-bit QAT", 1)] == (120, pytest.approx(1.2))
    assert speeds[("relu", "onnx", "int8", 32)] == (300, 1.0)
    row = {"student": "relu", "engine": "native", "configuration": "4-bit QAT", "size_vs_fp32": 0.16,
           "sent_per_s_1": 10.0, "sent_per_s_32": 10.0, "bleu_vs_pytorch": 0.0}
    graphs = {**row, "engine": "onnx", "configuration": "int8", "sent_per_s_1": 100.0, "sent_per_s_32": 100.0}
    [line] = study.goal_lines([graphs, row], speeds)
    assert "speed 1.10x the int8 graphs at worst of 1 and 32, side by side (goal >= 1: met)" in line
    [line] = study.goal_lines([graphs, row])
    assert "speed 0.10x the int8 graphs at worst of 1 and 32, single evaluations (goal >= 1: missed)" in line
    assert any("| relu | native | 4-bit QAT | 120.0 | 1.20x | 330.0 | 1.10x |" == x
               for x in study.speed_lines(speeds, rounds))

"""Post-training int8: the quantizer against float64, exact int8 values after loading, translation, bad input."""

import argparse

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.model.quantization import dequantize_rows, quantize_linears, quantize_rows

from conftest import load, run, train_args


def test_rows_are_quantized_symmetrically_with_one_scale_each():
    torch.manual_seed(0)
    weight = torch.randn(5, 17) * torch.tensor([1.0, 0.01, 100.0, 0.0, 3.0])[:, None]
    values, scales = quantize_rows(weight)
    assert values.dtype == torch.int8 and scales.dtype == torch.float32
    for row, q, scale in zip(weight.double(), values, scales.double()):
        peak = row.abs().max().item()
        if peak == 0:  # a zero row: scale 1, values 0
            assert scale.item() == 1 and q.abs().max().item() == 0
            continue
        assert scale.item() == pytest.approx(peak / 127, rel=1e-6)
        assert q.abs().max().item() == 127 and q.min().item() >= -127
        expected = torch.round(row / scale)  # float64 reference
        assert torch.equal(q.long(), expected.long())
        assert (dequantize_rows(q[None], scale.float()[None]).double()[0] - row).abs().max() <= scale / 2 + 1e-9


def test_dynamic_int8_linears_hold_exactly_the_quantized_values_and_stay_close():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    x = torch.randn(4, 16)
    expected = model(x)
    values = [quantize_rows(m.weight)[0] for m in (model[0], model[2])]
    assert quantize_linears(model) == 2
    for module, q in zip((model[0], model[2]), values):
        assert isinstance(module, DynamicLinear)
        assert torch.equal(module.weight().int_repr(), q)
    torch.testing.assert_close(model(x), expected, rtol=0.05, atol=0.05)


@pytest.fixture(scope="module")
def lma_model(lma_student):
    return lma_student


@pytest.mark.integration
def test_an_int8_checkpoint_is_smaller_loads_its_exact_values_and_translates_as_precision_int8(
        vocab, lma_model, tmp_path):
    int8, int8_all = tmp_path / "lma.int8.pt", tmp_path / "lma.int8_all.pt"
    result = run("onmt_lma_quantize", "-model", lma_model, "-output", int8)
    assert "smaller than" in result.stdout
    run("onmt_lma_quantize", "-model", lma_model, "-output", int8_all, "-embeddings")
    assert int8_all.stat().st_size < int8.stat().st_size < lma_model.stat().st_size
    assert int8_all.stat().st_size < lma_model.stat().st_size / 3.5
    checkpoint = load(int8)
    info = checkpoint["onmt_lma"]["int8"]
    assert not info["embeddings"] and len(info["scales"]) > 10
    stored = {key: checkpoint[key.split("/")[0]][key.split("/", 1)[1]] for key in info["scales"]}
    assert all(t.dtype == torch.int8 for t in stored.values())
    assert any(".feed_forward.activation.alpha" in name for name in checkpoint["model"])  # LMA stays float
    assert load(int8_all)["model"]["encoder.embeddings.make_embedding.emb_luts.0.weight"].dtype == torch.int8
    # the position tables are left out and rebuilt exactly
    from onmt_lma.model.quantized_checkpoint import dequantize_checkpoint

    original = load(lma_model)["model"]
    tables = info["position_tables"]
    assert sorted(tables) == sorted(n for n in original if n.endswith(".pe.pe")) and len(tables) == 2
    rebuilt = dequantize_checkpoint(load(int8))["model"]
    for name in tables:
        assert torch.equal(rebuilt[name], original[name])

    # loaded for translation: every linear layer int8, holding exactly the stored values
    import onmt.model_builder

    opt = argparse.Namespace(models=[str(int8)], gpu=-1, gpu_ranks=[], world_size=1, parallel_mode="data_parallel",
                             precision="", quant_type="", quant_layers=[])
    _, model, _ = onmt.model_builder.load_test_model(opt, model_path=str(int8))
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, DynamicLinear)}
    assert len(quantized) == len(stored)
    for name, module in quantized.items():
        key = "generator/weight" if name == "generator" else f"model/{name}.weight"
        assert torch.equal(module.weight().int_repr(), stored[key]), name

    outputs = {}
    for label, checkpoint_path, extra in (("int8", int8, []), ("precision", lma_model, ["-precision", "int8"]),
                                          ("float", lma_model, []), ("int8_all", int8_all, [])):
        out = tmp_path / f"{label}.en"
        result = run("onmt_lma_translate", "-model", checkpoint_path, "-src", vocab / "test.de", "-output", out,
                     "-beam_size", "5", "-max_length", "30", *extra)
        assert ("int8: " in result.stderr) == (label != "float")
        outputs[label] = out.read_text().splitlines()
    assert all(len(lines) == 12 for lines in outputs.values())
    # -precision int8 on the float checkpoint quantizes the same rows to the same values: the same translation
    assert outputs["int8"] == outputs["precision"]


@pytest.mark.integration
def test_bad_quantization_input_is_one_line(vocab, lma_model, tmp_path):
    def fails(*args):
        result = run("onmt_lma_quantize", *args, expect_ok=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stderr

    assert "is the -model" in fails("-model", lma_model, "-output", lma_model)
    assert "does not exist" in fails("-model", tmp_path / "none.pt", "-output", tmp_path / "x.pt")
    run("onmt_lma_quantize", "-model", lma_model, "-output", tmp_path / "once.pt")
    assert "quantized already" in fails("-model", tmp_path / "once.pt", "-output", tmp_path / "twice.pt")
    assert not (tmp_path / "twice.pt").exists()

    def train_fails(*args):
        result = run("onmt_lma_train", *args, expect_ok=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stderr

    # each a one-line error before any data or model is touched
    assert "an onmt_lma_quantize export" in train_fails(*train_args(vocab, tmp_path / "m", "-train_from",
                                                                    tmp_path / "once.pt"))
    for bad, expected in ((("-quant_bits", "9"), "an integer from 2 to 8"),
                          (("-quant_bits", "1"), "an integer from 2 to 8"),
                          (("-quant_bucket", "0"), "an integer >= 2")):
        assert expected in train_fails(*train_args(vocab, tmp_path / "m", *bad))
    assert not list(tmp_path.glob("m_step_*.pt"))


# --------------------------------------------------------------------------- #
# Quantization-aware training (Polino et al. 2018): buckets, straight-through gradient, export
# --------------------------------------------------------------------------- #
def reference_bucket_quantize(weight, bits, bucket):
    """float64, bucket by bucket: scale to [0, 1] by min and range, round to 2**bits - 1 steps, scale back."""
    flat = weight.double().reshape(-1).tolist()
    out = []
    for start in range(0, len(flat), bucket):
        values = flat[start:start + bucket]
        low, high = min(values), max(values)
        if high == low:
            out.extend(values)
            continue
        steps = 2 ** bits - 1
        out.extend(round((v - low) / (high - low) * steps) / steps * (high - low) + low for v in values)
    return torch.tensor(out, dtype=torch.float64).reshape(weight.shape)


@pytest.mark.parametrize("bits, bucket", [(2, 256), (4, 16), (8, 7), (3, 5)])
def test_bucket_quantization_matches_a_float64_reference(bits, bucket):
    from onmt_lma.model.quantization import bucket_quantize

    torch.manual_seed(bits)
    weight = torch.randn(9, 13)
    weight[2] = 0.5  # a row of equal values: its buckets (bucket <= 13) are partly zero-range
    got = bucket_quantize(weight, bits, bucket)
    torch.testing.assert_close(got.double(), reference_bucket_quantize(weight, bits, bucket), rtol=1e-6, atol=1e-6)
    flat, quantized = weight.reshape(-1), got.reshape(-1)
    for start in range(0, flat.numel(), bucket):  # bucket edges: each keeps its min and max, at most 2**bits values
        chunk, original = quantized[start:start + bucket], flat[start:start + bucket]
        assert len(set(chunk.tolist())) <= 2 ** bits
        assert chunk.min().item() == pytest.approx(original.min().item(), abs=1e-6)
        assert chunk.max().item() == pytest.approx(original.max().item(), abs=1e-6)


def test_the_gradient_passes_straight_through_to_the_full_precision_weight():
    from onmt_lma.model.quantization import fake_quantize

    weight = torch.randn(6, 10, requires_grad=True)
    upstream = torch.randn(6, 10)
    (grad,) = torch.autograd.grad((fake_quantize(weight, 2, 8) * upstream).sum(), weight)
    assert torch.equal(grad, upstream)


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_pack_and_unpack(bits):
    from onmt_lma.model.quantization import pack_codes, unpack_codes

    codes = torch.randint(0, 2 ** bits, (37,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-37 * bits // 8)
    stream = "".join(format(int(code), f"0{bits}b")[::-1] for code in codes)  # each code's lowest bit first
    stream += "0" * (-len(stream) % 8)
    assert packed.tolist() == [int(stream[i:i + 8][::-1], 2) for i in range(0, len(stream), 8)]
    assert torch.equal(unpack_codes(packed, bits, 37), codes)
    if bits not in (1, 2, 4, 8):  # written one per byte by an onmt-lma before these widths were packed
        assert torch.equal(unpack_codes(codes, bits, 37, packing=None), codes)


@pytest.mark.integration
def test_quantization_aware_training_translation_and_export(vocab, lma_model, tmp_path):
    from onmt_lma.model.quantization import bucket_quantize
    from onmt_lma.model.quantized_checkpoint import dequantize_checkpoint

    log = tmp_path / "qat.log"
    run("onmt_lma_train", *train_args(vocab, tmp_path / "qat", "-pos_ffn_activation_fn", "lma", "-train_from",
                                      lma_model, "-train_steps", "32", "-save_checkpoint_steps", "32",
                                      "-quant_bits", "4", "-quant_bucket", "64", "-log_file", log))
    assert "quantization-aware: " in log.read_text() and "with 4-bit weights (buckets of 64)" in log.read_text()
    trained = tmp_path / "qat_step_32.pt"
    checkpoint = load(trained)
    assert checkpoint["opt"].quant_bits == 4
    weight = checkpoint["model"]["decoder.transformer_layers.0.feed_forward.w_1.weight"]
    assert len(set(weight.reshape(-1)[:64].tolist())) > 16  # stored full precision

    exported = tmp_path / "qat.4bit.pt"
    run("onmt_lma_quantize", "-model", trained, "-output", exported)
    packed = load(exported)["model"]["decoder.transformer_layers.0.feed_forward.w_1.weight"]
    assert packed.dtype == torch.uint8 and packed.numel() == -(-weight.numel() * 4 // 8)  # two codes a byte
    assert exported.stat().st_size < trained.stat().st_size / 2
    rebuilt = dequantize_checkpoint(load(exported))
    assert torch.equal(rebuilt["model"]["decoder.transformer_layers.0.feed_forward.w_1.weight"],
                       bucket_quantize(weight.float(), 4, 64))

    outputs = {}
    for label, path in (("trained", trained), ("exported", exported)):
        out = tmp_path / f"{label}.en"
        result = run("onmt_lma_translate", "-model", path, "-src", vocab / "test.de", "-output", out,
                     "-beam_size", "5", "-max_length", "30")
        assert ("4-bit weights: " in result.stderr) == (label == "trained")
        outputs[label] = out.read_text().splitlines()
    assert len(outputs["trained"]) == 12 and outputs["trained"] == outputs["exported"]


@pytest.mark.integration
def test_the_quantization_study_trains_exports_evaluates_and_tabulates(teacher, lma_student, corpus_dir, tmp_path):
    """onmt_lma/study/probes/quant_study.py on a tiny LMA student: every configuration evaluated, the 4-bit row from its export."""
    import json
    import subprocess
    import sys

    from conftest import TINY_SETTINGS

    import shutil

    # every configuration translates the test set: its first 12 sentences do (an untrained model's beams run long)
    corpus_dir = shutil.copytree(corpus_dir, tmp_path / "data" / corpus_dir.name)
    for name in ("test.de", "test.en", "test.ref.tok.en", "test.ref.detok.en"):
        lines = (corpus_dir / name).read_text().splitlines(keepends=True)
        (corpus_dir / name).write_text("".join(lines[:12]))
    script = [sys.executable, "-m", "onmt_lma.study.probes.quant_study"]
    common = ["--runs", tmp_path / "runs", "--out", tmp_path / "out", "--steps", "4", "--bits", "4"]
    settings = [a for key, value in TINY_SETTINGS.items() for a in ("--set", f"{key}={value}")]
    done = subprocess.run([*script, "run", "--student", f"lma={lma_student}", "--teacher", teacher,
                           "--data", corpus_dir, *common, *settings], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "qat.json").read_text())
    rows = result["rows"]["lma"]
    assert list(rows) == ["fp32", "int8 post-training", "fp32 (ONNX Runtime)", "int8 post-training (ONNX Runtime)",
                          "fp32 fine-tuned", "4-bit QAT"]
    assert result["checkpoints"]["lma"]["4-bit QAT"] == "lma_qat4_4/model_step_34.4bit.pt"  # 30 + 4 steps, exported
    fp32 = json.loads((tmp_path / "runs" / "lma" / f"{lma_student.name}.eval.json").read_text())
    assert rows["fp32"]["bleu"] == fp32["bleu"]["score"] and rows["fp32"]["speedup"] == 1.0
    assert load(tmp_path / "runs" / "lma" / lma_student.name)["optim"] is None  # sizes without the optimizer
    assert rows["int8 post-training"]["smaller"] > 1.5 and rows["4-bit QAT"]["smaller"] > 1.5
    assert rows["fp32 fine-tuned"]["smaller"] == pytest.approx(1.0, abs=0.01)
    # the export's float32 graphs translate as the checkpoint does; their int8 graphs are smaller
    assert rows["fp32 (ONNX Runtime)"]["bleu"] == rows["fp32"]["bleu"]
    assert rows["fp32 (ONNX Runtime)"]["ppl"] == pytest.approx(rows["fp32"]["ppl"], rel=1e-4)
    assert rows["int8 post-training (ONNX Runtime)"]["size_mb"] < rows["fp32 (ONNX Runtime)"]["size_mb"]
    assert result["checkpoints"]["lma"]["int8 post-training (ONNX Runtime)"] == f"lma/{lma_student.name}.onnx.int8"
    qat_log = (tmp_path / "runs" / "lma_qat4_4" / "train.log").read_text()
    assert "with 4-bit weights (buckets of 256)" in qat_log and "Distilling from teacher" in qat_log
    table = (tmp_path / "out" / "qat.md").read_text()
    assert table.count("| lma |") == 6 and "4-bit QAT: BLEU" in table
    control = rows["4-bit QAT"]["bleu"] - rows["fp32 fine-tuned"]["bleu"]  # quantized against more training alone
    assert f"{control:+.2f} vs fp32 fine-tuned, the same 4 steps without quantization" in table
    assert "int8 post-training (ONNX Runtime): BLEU" in table and "x ONNX Runtime float32" in table
    assert "tmp" not in (tmp_path / "out" / "qat.json").read_text() + table  # paths relative to the runs folder

    again = subprocess.run([*script, "run", "--student", f"lma={lma_student}", "--teacher", teacher,
                            "--data", corpus_dir, *common, *settings], capture_output=True, text=True)
    assert again.returncode == 0 and "training" not in again.stderr.lower()  # everything finished: nothing redone
    averaged = tmp_path / "no_optim.pt"
    checkpoint = load(lma_student)
    checkpoint["optim"] = None
    torch.save(checkpoint, averaged)
    refused = subprocess.run([*script, "run", "--student", f"lma={averaged}", "--teacher", teacher,
                              "--data", corpus_dir, *common], capture_output=True, text=True)
    assert refused.returncode == 2 and "no optimizer state" in refused.stderr


@pytest.mark.integration
def test_the_quantization_study_fine_tunes_two_students_at_once(teacher, lma_student, corpus_dir, tmp_path, capsys):
    """quant_study.py's fine-tunings of one configuration: one process per student (here the same checkpoint
    twice), each finished (DONE) with the quantization-aware setting, and bit-identical: the fine-tuning takes the
    student's seed (here none, -1: then 1), where OpenNMT-py's default seed -1 seeds nothing and every process
    drew other batches and dropout."""
    import argparse
    import importlib

    from conftest import TINY_SETTINGS

    study = importlib.import_module("onmt_lma.study.probes.quant_study")
    args = argparse.Namespace(data=corpus_dir, runs=tmp_path, teacher=teacher, kd_cache=None, steps=2,
                              extra=list(TINY_SETTINGS.items()))
    students = [("lma", lma_student), ("twin", lma_student)]
    study.fine_tune_at_once(students, 4, args)
    assert "fine-tuning lma_qat4_2, twin_qat4_2 at once" in capsys.readouterr().out
    for label, _ in students:
        run_dir = tmp_path / f"{label}_qat4_2"
        assert (run_dir / "DONE").read_text().strip() == "model_step_32.pt"
        assert "with 4-bit weights (buckets of 256)" in (run_dir / "train.log").read_text()
        assert "seed: 1\n" in (run_dir / "config.yaml").read_text()
    assert study.fine_tune("lma", lma_student, 4, args) == tmp_path / "lma_qat4_2" / "model_step_32.pt"  # kept
    lma, twin = (load(tmp_path / f"{label}_qat4_2" / "model_step_32.pt")["model"] for label, _ in students)
    assert all(torch.equal(lma[key], twin[key]) for key in lma)  # the same batches and dropout in both processes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a lent GPU machine)")
def test_on_cuda_bucket_quantization_and_its_gradient_are_the_cpu_ones():
    """Quantization-aware training on a GPU: the same levels as on CPU, the gradient straight through."""
    from onmt_lma.model.quantization import bucket_codes, bucket_quantize, fake_quantize

    torch.manual_seed(0)
    weight = torch.randn(64, 2048)
    weight[3] = -0.25  # zero-range buckets
    for bits, bucket in ((2, 256), (4, 256), (8, 100)):
        codes, low, span = bucket_codes(weight.cuda(), bits, bucket)
        cpu_codes, cpu_low, cpu_span = bucket_codes(weight, bits, bucket)
        assert codes.device.type == "cuda" and int(codes.max()) <= 2 ** bits - 1
        assert torch.equal(low.cpu(), cpu_low) and torch.equal(span.cpu(), cpu_span)
        # the same level for every weight but (allowed, not seen on an H200) one exactly half-way between two,
        # where the GPU's division might round the other way; the values rebuilt from the levels agree to
        # float32 rounding (not bit for bit: the GPU's arithmetic differs in the last bit)
        moved = (codes.cpu().int() - cpu_codes.int()).abs()
        assert int(moved.max()) <= 1 and int((moved > 0).sum()) <= moved.numel() // 10_000
        on_gpu, on_cpu = bucket_quantize(weight.cuda(), bits, bucket).cpu(), bucket_quantize(weight, bits, bucket)
        same = (moved == 0).reshape(weight.shape)
        torch.testing.assert_close(on_gpu[same], on_cpu[same], rtol=0, atol=1e-6)
    leaf = weight.cuda().requires_grad_()
    upstream = torch.randn_like(leaf)
    (grad,) = torch.autograd.grad((fake_quantize(leaf, 4, 256) * upstream).sum(), leaf)
    assert torch.equal(grad, upstream)


def test_a_checkpoints_quantization_facts_are_read_in_one_place():
    import argparse

    from onmt_lma.model.quantized_checkpoint import Quantization, quantization_of

    def checkpoint(info=None, **opt):
        return {"opt": argparse.Namespace(**opt), **({"onmt_lma": info} if info is not None else {})}

    assert quantization_of(checkpoint()) == Quantization() and quantization_of(checkpoint()).label is None
    student = quantization_of(checkpoint(quant_bits=4, quant_bucket=64))
    assert (student.trained_bits, student.trained_bucket, student.stored, student.label) == (4, 64, False, "4-bit")
    codes = quantization_of(checkpoint({"low_bit": {"bits": 2}}, quant_bits=None))
    assert (codes.stored, codes.label, codes.trained_bucket) == (True, "2-bit", None)
    assert quantization_of(checkpoint({"int8": {"scales": {}}}, quant_bits=0)).label == "int8"

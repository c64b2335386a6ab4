"""The native engine (csrc/engine_cpu.cpp): its forward pass against OpenNMT-py's for every activation it
lists, its beam search against OpenNMT-py's translator (n-best, batches), and its refusals as one line."""

import json
import shutil

import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.deploy import export as exporter
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.native import NativeTranslator, native_activations, native_weights
from onmt_lma.deploy.search import BANNED

from conftest import run
from test_export import real_batch, reference_log_probs

pytestmark = pytest.mark.integration


NATIVE_ACTIVATIONS = ("aplu", "gelu", "lma", "prelu", "relu", "silu", "swish")


def test_the_engine_lists_its_activations():
    assert native_activations() == NATIVE_ACTIVATIONS


def engine_of(model, opt, vocabs):
    from onmt_lma.model import kernels

    saved = native_weights(model, opt)
    special = {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    config = {**saved["config"], **{key: float(vocabs["tgt"][token]) for key, token in special.items()},
              "src_pad": float(vocabs["src"]["<blank>"]), "banned_score": BANNED}
    return kernels.engine_module().Engine(saved["weights"], config, saved["activation"])


@pytest.mark.parametrize("activation", NATIVE_ACTIVATIONS)
def test_every_native_activation_scores_gold_tokens_as_opennmt_py(vocab, teacher, activation):
    """The teacher with each activation in place of ReLU (its parameters and LMA's statistics moved away from
    their initial values): the engine's teacher-forced log-probabilities of the gold tokens are OpenNMT-py's,
    sentence by sentence and as one padded batch."""
    from onmt.modules.position_ffn import PositionwiseFeedForward

    from onmt_lma.model.activations import build_activation

    vocabs, model, opt = exporter.load_model(teacher)
    generator = torch.Generator().manual_seed(7)
    for block in (m for m in model.modules() if isinstance(m, PositionwiseFeedForward)):
        block.activation = build_activation(activation, units=block.w_1.out_features)
        with torch.no_grad():
            for parameter in block.activation.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + 0.5)
            if activation == "lma":
                block.activation.running_mean.fill_(0.1)
                block.activation.running_std.fill_(0.7)
        block.activation.eval()
    opt.pos_ffn_activation_fn = activation
    engine = engine_of(model, opt, vocabs)
    src, src_len, tgt = real_batch(vocab, vocabs, lines=6)
    reference = reference_log_probs(model, src, src_len, tgt).double()
    gold = tgt[:, 1:]
    counted = gold != vocabs["tgt"]["<blank>"]
    expected = (reference.gather(-1, gold.unsqueeze(-1)).squeeze(-1) * counted).sum(-1)
    sources = [src[i, : src_len[i]].tolist() for i in range(len(src))]
    targets = [gold[i][counted[i]].tolist() for i in range(len(src))]
    for i in range(len(src)):
        total, count = engine.score([sources[i]], [targets[i]])
        assert count == len(targets[i]) and total == pytest.approx(expected[i].item(), rel=1e-5, abs=1e-4)
    total, count = engine.score(sources, targets)
    assert count == int(counted.sum()) and total == pytest.approx(expected.sum().item(), rel=1e-5)


@pytest.fixture(scope="module")
def exports(teacher, lma_student, tmp_path_factory):
    folders = {}
    for name, checkpoint in (("relu", teacher), ("lma", lma_student)):
        folders[name] = tmp_path_factory.mktemp("native") / name
        run("onmt_lma_export", "-model", checkpoint, "-output", folders[name])
    return {"relu": (teacher, folders["relu"]), "lma": (lma_student, folders["lma"])}


@pytest.mark.parametrize("which", ["relu", "lma"])
def test_the_native_engine_translates_as_opennmt_py_does(vocab, exports, which, tmp_path):
    """onmt_lma_translate -engine native = -engine pytorch line for line: one sentence at a time and in
    OpenNMT-py's batches (with its per-batch length cap binding), the 3 best of a beam of 5, an empty line
    kept in its place; -precision int8 (PyTorch's dynamically quantized Linear on both) too."""
    checkpoint, folder = exports[which]
    src = tmp_path / "src.de"
    lines = (vocab / "test.de").read_text().splitlines()
    src.write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n")
    outputs = {}
    for label, extra in (("1", []), ("4", ["-batch_size", "4", "-max_length_ratio", "0.3"]),
                         ("nbest", ["-n_best", "3", "-batch_size", "32"]), ("int8", ["-precision", "int8"]),
                         ("int8_32", ["-precision", "int8", "-batch_size", "32"])):
        for engine, model in (("pytorch", checkpoint), ("native", folder)):
            out = tmp_path / f"{engine}{label}.en"
            run("onmt_lma_translate", "-model", model, "-src", src, "-beam_size", "5", "-max_length", "30",
                "-output", out, "-engine", engine, *extra)
            outputs[engine + label] = out.read_text().splitlines()
    assert len(outputs["native1"]) == 13 and outputs["native1"][5] == ""
    for label in ("1", "4", "nbest", "int8", "int8_32"):
        assert outputs["native" + label] == outputs["pytorch" + label], label
    assert outputs["native4"] != outputs["native1"]  # the cap of the batch's longest source bound
    assert len(outputs["nativenbest"]) == 39 and outputs["nativenbest"][15:18] == ["", "", ""]


def test_the_ids_a_step_forbids_are_forbidden_as_opennmt_py_forbids_them(vocab, teacher, tmp_path):
    """A generator biased to <unk> first and the end token second: with -ban_unk_token and -min_length 4 every
    line is 4 tokens without <unk> on both engines, and the native engine's lines are OpenNMT-py's."""
    from onmt_lma.base.checkpoint import load, save

    checkpoint = load(teacher)
    tokens = checkpoint["vocab"]["tgt"]
    bias = checkpoint["generator"]["bias"]
    bias[tokens.index("<unk>")] += 100.0
    bias[tokens.index("</s>")] += 50.0
    save(checkpoint, tmp_path / "biased.pt")
    run("onmt_lma_export", "-model", tmp_path / "biased.pt", "-output", tmp_path / "export")
    src = tmp_path / "src.de"
    src.write_text("\n".join((vocab / "test.de").read_text().splitlines()[:6]) + "\n")
    outputs = {}
    for engine, model in (("pytorch", tmp_path / "biased.pt"), ("native", tmp_path / "export")):
        for label, extra in (("free", []), ("banned", ["-min_length", "4", "-ban_unk_token"])):
            out = tmp_path / f"{engine}{label}.en"
            run("onmt_lma_translate", "-model", model, "-src", src, "-beam_size", "5", "-max_length", "20",
                "-batch_size", "3", "-output", out, "-engine", engine, *extra)
            outputs[engine + label] = out.read_text().splitlines()
    assert outputs["nativefree"] == outputs["pytorchfree"] and all(line.split()[0] == "<unk>" for line in
                                                                  outputs["nativefree"])
    assert outputs["nativebanned"] == outputs["pytorchbanned"]
    assert all(len(line.split()) == 4 and "<unk>" not in line.split() for line in outputs["nativebanned"])


@pytest.mark.parametrize("products", ["panels", "aten", "onednn"])
def test_the_native_engine_s_scores_are_the_onnx_engine_s(vocab, exports, products, monkeypatch):
    """On each path of its matrix products: the engine's own packed kernel (a few rows: the default here),
    ATen's addmm, and oneDNN with every weight reordered as it loads (the tiny model's are below the size
    where the engine reorders them)."""
    from onmt_lma.deploy import native as module

    if products != "panels":
        monkeypatch.setattr(module, "PANEL_ROWS", 0)
    if products == "onednn":
        monkeypatch.setattr(module, "REORDERED_MIN_VALUES", 0)
    from onmt_lma.deploy.runtime import OnnxTranslator

    _, folder = exports["lma"]
    lines = (vocab / "test.de").read_text().splitlines()
    native, onnx = NativeTranslator(folder), OnnxTranslator(folder)
    decoding = Decoding(beam_size=5, max_length=30, n_best=2)
    found, expected = native.translate(lines, decoding, 4), onnx.translate(lines, decoding, 4)
    assert [[text for _, text in h] for h in found] == [[text for _, text in h] for h in expected]
    assert [s for h in found for s, _ in h] == pytest.approx([s for h in expected for s, _ in h], abs=1e-4)
    targets = (vocab / "test.en").read_text().splitlines()
    total, count = native.score(lines, targets, batch_size=5)
    assert count == sum(len(t.split()) + 1 for t in targets)
    assert total == pytest.approx(onnx.score(lines, targets)[0], rel=1e-5)
    assert native.profile["sentences"] == len(lines) and native.profile["steps"] > 0
    assert native.profile["decoder_s"] > 0 and native.profile["encoder_s"] > 0
    assert (native.profile["panel_products"] > 0) == (products == "panels")


def test_the_native_engine_takes_the_threads_asked_for(exports):
    _, folder = exports["relu"]
    before = torch.get_num_threads()
    try:
        NativeTranslator(folder, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bad_native_input_is_one_line(vocab, exports, tmp_path):
    _, folder = exports["lma"]
    src = vocab / "test.de"

    def fails(model, *extra, source=src):
        out = tmp_path / "o.en"
        result = run("onmt_lma_translate", "-model", model, "-src", source, "-output", out, "-engine", "native",
                     *extra, expect_ok=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert not out.exists()
        return result.stderr

    (tmp_path / "not_an_export").mkdir()
    assert "no manifest.json there" in fails(tmp_path / "not_an_export")
    assert "-replace_unk True" in fails(folder, "-replace_unk")
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    assert "export format 0" in fails(old)
    (tmp_path / "empty.de").write_text("\n\n")
    assert "export format 0" in fails(old, source=tmp_path / "empty.de")  # nothing to translate: still checked
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    for name, extra in (("native.safetensors", []), ("native.pt", ["-precision", "int8"])):
        with open(changed / name, "ab") as weights:
            weights.write(b"0")
        assert f"{name} is not the file the export wrote" in fails(changed, *extra)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(folder, mismatched)
    tokens = json.loads((mismatched / "tgt.vocab.json").read_text())
    (mismatched / "tgt.vocab.json").write_text(json.dumps(tokens[:-1]))
    from onmt_lma.base.files import sha256_of

    manifest = json.loads((mismatched / "manifest.json").read_text())
    manifest["files"]["tgt.vocab.json"] = sha256_of(mismatched / "tgt.vocab.json")
    (mismatched / "manifest.json").write_text(json.dumps(manifest))
    assert f"tgt.vocab.json holds {len(tokens) - 1} tokens, the model's tgt vocabulary {len(tokens)}" in \
        fails(mismatched)
    positions = json.loads((folder / "manifest.json").read_text())["max_positions"]
    long = tmp_path / "long.de"
    long.write_text("ein Mann .\n" + " ".join(["Mann"] * (positions + 1)) + "\n")
    assert f"line 2: {positions + 1} tokens; this export's position table holds {positions}" in \
        fails(folder, source=long)


def test_an_export_without_native_weights_says_why_and_where_to_go(exports, tmp_path):
    _, folder = exports["relu"]
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["files"]["native.pt"]  # as onmt-lma exported before the native engine
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(exporter.ExportError, match="no native.pt .*run it with -engine onnx or export it again"):
        NativeTranslator(legacy)


def test_a_repetition_ban_translates_as_opennmt_pys(vocab, exports, tmp_path):
    """-block_ngram_repeat 2 on both export engines and OpenNMT-py's translator, one sentence at a time and in
    batches of 4: the same lines, none repeating a bigram, and lines that differ from the unbanned ones."""
    checkpoint, folder = exports["lma"]
    src = tmp_path / "src.de"
    src.write_text("\n".join((vocab / "test.de").read_text().splitlines()[:12]) + "\n")
    outputs = {}
    for engine, model in (("pytorch", checkpoint), ("native", folder), ("onnx", folder)):
        for label, ban, batch in (("banned", "2", "1"), ("banned4", "2", "4"), ("free", "0", "1")):
            out = tmp_path / f"{engine}{label}.en"
            run("onmt_lma_translate", "-model", model, "-src", src, "-beam_size", "5", "-max_length", "30",
                "-batch_size", batch, "-block_ngram_repeat", ban, "-output", out, "-engine", engine)
            outputs[engine + label] = out.read_text().splitlines()
    for label in ("free", "banned", "banned4"):
        assert outputs["native" + label] == outputs["pytorch" + label] == outputs["onnx" + label], label
    for line in outputs["nativebanned"]:
        bigrams = list(zip(line.split(), line.split()[1:]))
        assert len(set(bigrams)) == len(bigrams), line
    assert outputs["nativebanned"] != outputs["nativefree"]

"""ONNX export: the restated graphs against OpenNMT-py's own forward pass, then the ONNX files in ONNX Runtime."""

import numpy as np
import pytest
import torch

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.deploy import export as exporter
from onmt_lma.deploy import engines, graphs
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy import manifest as export_manifest

from conftest import run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lma_checkpoint(lma_student):
    return lma_student


def real_batch(vocab, vocabs, lines=4):
    """Source and target ids of real test sentences, padded, with lengths."""
    src_lines = (vocab / "test.de").read_text().splitlines()[:lines]
    tgt_lines = (vocab / "test.en").read_text().splitlines()[:lines]
    src = [vocabs["src"](line.split()) for line in src_lines]
    tgt = [vocabs["tgt"](["<s>"] + line.split() + ["</s>"]) for line in tgt_lines]
    pad_src, pad_tgt = vocabs["src"]["<blank>"], vocabs["tgt"]["<blank>"]
    src_len = torch.tensor([len(s) for s in src])
    src_ids = torch.full((lines, int(src_len.max())), pad_src)
    tgt_ids = torch.full((lines, max(len(t) for t in tgt)), pad_tgt)
    for i, (s, t) in enumerate(zip(src, tgt)):
        src_ids[i, : len(s)], tgt_ids[i, : len(t)] = torch.tensor(s), torch.tensor(t)
    return src_ids, src_len, tgt_ids


def reference_log_probs(model, src, src_len, tgt):
    """OpenNMT-py's own teacher-forced forward pass: (batch, tgt_len - 1, vocab) log-probabilities."""
    with torch.no_grad():
        dec_out, _ = model(src.unsqueeze(-1), tgt.unsqueeze(-1), src_len, with_align=False)
        return torch.log_softmax(model.generator(dec_out).float(), dim=-1)


def stepped_log_probs(encode, step, src, src_len, tgt, empty):
    """The exported pair, stepped through the gold target one token at a time."""
    bias, *cross = encode(src, src_len)
    own = list(empty)
    position_of = np.array if isinstance(own[0], np.ndarray) else torch.tensor
    out = []
    for position in range(tgt.shape[1] - 1):
        log_probs, *own = step(tgt[:, position], position_of([position]), bias, *cross, *own)
        out.append(torch.as_tensor(np.asarray(log_probs)))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("which", ["relu", "lma"])
def test_the_restated_graphs_give_opennmt_py_s_log_probabilities(vocab, teacher, lma_checkpoint, which):
    from onmt_lma.model import kernels

    checkpoint = teacher if which == "relu" else lma_checkpoint
    vocabs, model, _ = graphs.load_model(checkpoint)
    src, src_len, tgt = real_batch(vocab, vocabs)
    expected = reference_log_probs(model, src, src_len, tgt)
    graphs.graph_activations(model)  # as exported: LMA by GatherElements from (k, units) tables
    assert (which == "lma") == any(isinstance(m, graphs.LMAGraph) for m in model.modules())
    with torch.no_grad(), kernels.forced("torch"):
        got = stepped_log_probs(graphs.EncoderGraph(model), graphs.DecoderStepGraph(model), src, src_len, tgt,
                                graphs.empty_cache(model, len(src)))
    mask = tgt[:, 1:] != vocabs["tgt"]["<blank>"]
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("continuous", [False, True])
def test_the_exported_lma_is_the_evaluation_lma_at_cut_points_and_outliers_too(continuous):
    from onmt_lma.model import kernels
    from onmt_lma.model.lma import LMA, lma

    torch.manual_seed(0)
    module = LMA(8, 0.9, continuous).train()
    with torch.no_grad():
        module.alpha.normal_()
        if module.beta is not None:
            module.beta.normal_()
        module(torch.randn(64, 24) * 2 + 0.5)  # running statistics of a batch
    module.eval()
    graph = graphs.LMAGraph(module, units=24)
    mean, std = module.running_mean.reshape(()), module.running_std.reshape(())
    cuts = mean + std * (torch.arange(-4, 5, dtype=torch.float32) * 6 / 8)  # every cut point and both ends
    x = torch.cat([torch.randn(3, 5, 24) * 3, cuts.repeat(3)[:24].expand(1, 5, 24),
                   torch.full((1, 5, 24), 1e6), torch.full((1, 5, 24), -1e6)])
    with torch.no_grad():
        if kernels.cpu_kernel() is not None:  # the fused kernel onmt_lma_translate runs: the same segments
            expected = lma(x, module.alpha, module.intercepts(mean, std), mean, std)
            torch.testing.assert_close(graph(x), expected, rtol=1e-6, atol=1e-6)  # up to its fused multiply-add
        # and as float64 from the paper's definition: j = clamp(floor((x - b_0) / (6 std / k)), 0, k - 1)
        j = torch.clamp(torch.floor((x.double() - (mean.double() - 3 * std.double())) / (6 * std.double() / 8)), 0, 7)
        slope = module.alpha.double()[j.long()]
        intercept = module.intercepts(mean, std).double()[j.long()]
        position = (x.double() - mean.double()) / (6 * std.double() / 8)
        near_cut = (position - position.round()).abs() < 1e-5  # either side's line is right there
        assert 5 * 24 <= near_cut.sum() < x.numel() / 2
        torch.testing.assert_close(graph(x).double()[~near_cut], (slope * x.double() + intercept)[~near_cut],
                                   rtol=1e-5, atol=1e-5)


def test_the_onnx_graphs_in_onnx_runtime_give_the_same_log_probabilities(vocab, lma_checkpoint, tmp_path):
    import onnxruntime

    manifest = exporter.export(lma_checkpoint, tmp_path / "onnx", int8=True)
    assert manifest["activation"] == "lma" and {"encoder.onnx", "decoder_step.int8.onnx"} <= set(manifest["files"])
    import onnx

    operators = {node.op_type for node in onnx.load(tmp_path / "onnx" / "decoder_step.onnx").graph.node}
    assert {"Clip", "Cast", "GatherElements"} <= operators  # LMA in standard operators, no custom one
    vocabs, model, _ = graphs.load_model(lma_checkpoint)
    src, src_len, tgt = real_batch(vocab, vocabs, lines=3)  # another batch size and length than traced
    expected = reference_log_probs(model, src, src_len, tgt)
    mask = tgt[:, 1:] != vocabs["tgt"]["<blank>"]
    for suffix, tolerance in (("", 1e-4), (".int8", None)):
        encoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / f"encoder{suffix}.onnx"))
        decoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / f"decoder_step{suffix}.onnx"))

        def encode(s, lengths):
            return encoder.run(None, {"src": s.numpy(), "src_len": lengths.numpy()})

        cross_names, self_names, grown_names = export_manifest.cache_names(len(model.decoder.transformer_layers))

        def step(token, position, bias, *caches):
            feed = {"token": np.asarray(token), "step": position, "memory_bias": bias,
                    **dict(zip(cross_names + self_names, caches))}
            log_probs, top, ids, *grown = decoder.run(
                ["log_probs", "top_log_probs", "top_ids", *grown_names],
                {**feed, "k": np.array([3])})
            order = np.argsort(-log_probs, axis=1, kind="stable")[:, :3]  # the graph's TopK against NumPy's sort
            assert np.array_equal(ids, order) and np.array_equal(top, np.take_along_axis(log_probs, order, axis=1))
            return (log_probs, *grown)

        empty = [t.numpy() for t in graphs.empty_cache(model, len(src))]
        got = stepped_log_probs(encode, step, src, src_len, tgt, empty)
        if tolerance:
            torch.testing.assert_close(got[mask], expected[mask], rtol=tolerance, atol=tolerance)
        else:  # int8: close, not equal
            assert torch.isfinite(got).all()
            assert (got[mask].argmax(-1) == expected[mask].argmax(-1)).float().mean() > 0.8


def test_bad_exports_are_clear_errors(lma_checkpoint, tmp_path):
    import argparse

    result = run("onmt_lma_export", "-model", tmp_path / "none.pt", "-output", tmp_path / "out", expect_ok=False)
    assert result.returncode == 2 and "no such checkpoint" in result.stderr
    int8 = tmp_path / "lma.int8.pt"
    run("onmt_lma_quantize", "-model", lma_checkpoint, "-output", int8)
    result = run("onmt_lma_export", "-model", int8, "-output", tmp_path / "out", expect_ok=False)
    assert result.returncode == 2 and "export the float checkpoint" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "manifest.json").exists()
    options = argparse.Namespace(**{**graphs.SUPPORTED, "max_relative_positions": 4, "copy_attn": True})
    with pytest.raises(export_manifest.ExportError, match=r"-max_relative_positions 4 \(needs 0\), -copy_attn True"):
        graphs.check_exportable(options)


@pytest.fixture(scope="module")
def exported(lma_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "lma"
    run("onmt_lma_export", "-model", lma_checkpoint, "-output", out, "-int8")
    return out


def test_the_onnx_engine_translates_as_opennmt_py_does(vocab, lma_checkpoint, exported, tmp_path):
    src = tmp_path / "src.de"
    lines = (vocab / "test.de").read_text().splitlines()
    src.write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n")  # an empty line keeps its place
    common = ["-src", src, "-beam_size", "5", "-max_length", "30"]
    short = ["-max_length_ratio", "0.3"]  # caps of longest source x 0.3 + 5 tokens: they bind
    outputs = {}
    for label, model, extra in (("pytorch", lma_checkpoint, []), ("onnx", exported, ["-engine", "onnx"]),
                                ("pytorch4", lma_checkpoint, ["-batch_size", "4", *short]),
                                ("onnx4", exported, ["-engine", "onnx", "-batch_size", "4", *short]),
                                ("pytorch1", lma_checkpoint, short), ("onnx1", exported, ["-engine", "onnx", *short]),
                                ("int8", exported, ["-engine", "onnx", "-precision", "int8"])):
        out = tmp_path / f"{label}.en"
        run("onmt_lma_translate", "-model", model, *common, "-output", out, *extra)
        outputs[label] = out.read_text().splitlines()
    assert len(outputs["onnx"]) == 13 and outputs["onnx"][5] == ""
    assert outputs["onnx"] == outputs["pytorch"]
    # OpenNMT-py's length cap per batch of its own making (sorted by length): the same lines, cut the same
    assert outputs["onnx1"] == outputs["pytorch1"] and outputs["onnx4"] == outputs["pytorch4"]
    assert outputs["onnx4"] != outputs["onnx1"]  # the cap follows the batch's longest source: it bound
    assert len(outputs["int8"]) == 13
    out = tmp_path / "nbest.en"
    run("onmt_lma_translate", "-model", exported, *common, "-output", out, "-engine", "onnx", "-n_best", "2")
    assert len(out.read_text().splitlines()) == 26


@pytest.mark.parametrize("batch_size, batch_type", [(1, "sents"), (3, "sents"), (32, "sents"), (40, "tokens"),
                                                     (7, "tokens")])
def test_the_engine_batches_lines_as_opennmt_py_does(batch_size, batch_type):
    from onmt.inputters.dynamic_iterator import DynamicDatasetIter
    from onmt.inputters.text_utils import text_sort_key

    from onmt_lma.base.batching import batches

    lengths = [5, 12, 3, 3, 9, 20, 1, 7, 7, 14, 2, 8, 11, 6, 4, 10, 3]
    lines = [" ".join(["w"] * n) for n in lengths]
    examples = [({"src": {"src": line, "src_ids": line.split()}, "tgt": None}, i) for i, line in enumerate(lines)]
    onmt = object.__new__(DynamicDatasetIter)  # its batching method only reads the task
    onmt.task = "infer"
    ordered = sorted(examples, key=lambda item: text_sort_key(item[0]))
    expected = [[index for _, index in batch] for batch in onmt.batch_iter(ordered, batch_size, batch_type, 1)]
    assert list(batches(lines, batch_size, batch_type)) == expected


def test_the_onnx_engine_says_where_its_time_goes(vocab, exported):
    import time

    from onmt_lma.deploy.runtime import OnnxTranslator

    translator = OnnxTranslator(exported)
    lines = (vocab / "test.de").read_text().splitlines()[:6]
    started = time.perf_counter()
    results = translator.translate(lines, Decoding(beam_size=3, max_length=12), 4)
    wall = time.perf_counter() - started
    profile = translator.profile
    assert profile["sentences"] == 6
    longest = max(len(text.split()) for (_, text), in results)
    assert longest + 1 <= profile["steps"] <= 2 * 12  # two batches, each decoded until its beams end (eos counts)
    parts = [profile["encoder_s"], profile["decoder_s"], profile["search_s"]]
    assert all(part > 0 for part in parts) and sum(parts) <= wall


def test_a_bad_export_folder_or_an_unsupported_option_is_one_line(vocab, exported, tmp_path):
    import json
    import shutil

    def fails(folder, *extra):
        result = run("onmt_lma_translate", "-model", folder, "-src", vocab / "test.de", "-output", tmp_path / "o.en",
                     "-engine", "onnx", *extra, expect_ok=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "o.en").exists()
        return result.stderr

    assert "-coverage_penalty 'wu'" in fails(exported, "-coverage_penalty", "wu")
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "decoder_step.onnx").unlink()
    assert "decoder_step.onnx is missing" in fails(broken)
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    assert "export format 0" in fails(old)
    assert "-threads -1: expected 0" in fails(exported, "-threads", "-1")
    assert "-threads -1: expected 0" in fails(exported, "-onnx_threads", "-1")  # its name before -threads
    result = run("onmt_lma_translate", "-model", exported, "-src", vocab / "test.de", "-output", tmp_path / "o.en",
                 "-threads", "2", expect_ok=False)
    assert result.returncode == 2 and "only -engine onnx and native take it" in result.stderr, result.stderr[-2000:]


def test_the_engine_takes_the_threads_asked_for_and_its_encoder_never_spins(exported, monkeypatch):
    from onmt_lma.deploy import runtime

    made = []

    class Recording(runtime.OnnxTranslator):
        def __init__(self, folder, int8=False, threads=None):
            super().__init__(folder, int8, threads)
            options = [session.get_session_options() for session in (self.encoder, self.decoder)]
            made.append([o.intra_op_num_threads for o in options]
                        + [o.get_session_config_entry("session.intra_op.allow_spinning") for o in options[:1]])

    monkeypatch.setattr(engines, "OnnxTranslator", Recording)
    for asked in (0, 2):  # as onmt_lma_translate -engine onnx -threads N opens it
        engines.open_export("onnx", exported, False, asked)
    # 0: ONNX Runtime's default (one per core); the encoder's pool sleeps after each call, so that it never
    # takes the decoder's cores (it made 2 threads 2x slower than 1 one sentence at a time)
    assert made == [[0, 0, "0"], [2, 2, "0"]]


def test_a_relu_student_converts_to_ctranslate2_safely_and_an_lma_one_is_told_where_to_go(
        vocab, teacher, lma_checkpoint, tmp_path):
    import ctranslate2

    result = run("onmt_lma_convert_ct2", "-model", teacher, "-output", tmp_path / "ct2")
    assert (tmp_path / "ct2" / "model.bin").is_file()
    lines = [line.split() for line in (vocab / "test.de").read_text().splitlines()]
    translated = ctranslate2.Translator(str(tmp_path / "ct2")).translate_batch(lines, beam_size=5, max_decoding_length=30)
    assert len(translated) == len(lines) == 12 and all(t.hypotheses for t in translated)
    result = run("onmt_lma_convert_ct2", "-model", lma_checkpoint, "-output", tmp_path / "ct2_lma", expect_ok=False)
    assert result.returncode == 2 and "CTranslate2 runs only relu" in result.stderr and "-engine native" in result.stderr
    result = run("onmt_lma_convert_ct2", "-model", teacher, "-output", tmp_path / "ct2", expect_ok=False)
    assert result.returncode == 2 and "exists (a CTranslate2 model); give -force" in result.stderr


def test_an_lma_model_made_from_a_relu_one_follows_relu_and_exports(vocab, teacher, tmp_path):
    """onmt_lma/study/probes/relu_to_lma.py, which gives the deployment benchmark LMA models of sizes not trained yet."""
    import importlib

    from onmt_lma.model.lma import LMA, lma

    module = importlib.import_module("onmt_lma.study.probes.relu_to_lma")
    mean, std = 0.1, 1.0
    slopes, intercepts = module.chord_lines(mean, std, 8)
    x = torch.linspace(-6, 6, 2401)
    error = (lma(x, slopes, intercepts, torch.tensor(mean), torch.tensor(std)) - torch.relu(x)).abs()
    width = 6 * std / 8
    holding_zero = (x > -width) & (x < width)
    assert error.max() <= width / 4 + 1e-6 and error[~holding_zero].max() < 1e-6  # the chord, exact elsewhere
    out = tmp_path / "lma.pt"
    stats = module.convert(teacher, out, vocab, sentences=200)
    assert len(stats) == 3 and all(s > 0 for _, s in stats.values())
    _, relu_model, _ = graphs.load_model(teacher)
    vocabs, lma_model, opt = graphs.load_model(out)
    assert opt.pos_ffn_activation_fn == "lma" and opt.lma_segments == 8
    activations = [m for m in lma_model.modules() if isinstance(m, LMA)]
    assert sorted(a.running_std.item() for a in activations) == pytest.approx(sorted(s for _, s in stats.values()))
    src, src_len, tgt = real_batch(vocab, vocabs)
    mask = tgt[:, 1:] != vocabs["tgt"]["<blank>"]
    near = reference_log_probs(lma_model, src, src_len, tgt)[mask].argmax(-1)
    assert (near == reference_log_probs(relu_model, src, src_len, tgt)[mask].argmax(-1)).float().mean() > 0.9
    manifest = exporter.export(out, tmp_path / "onnx")
    assert manifest["activation"] == "lma"


def test_benchmark_tables_name_two_checkpoints_of_one_file_name_apart(tmp_path):
    """bench_deploy/bench_threads on the converged study's ReLU and LMA students, both model_step_2750.pt: each
    row keeps its run folder, and a command line shown in results holds no absolute path."""
    from onmt_lma.study.benchmark import model_names, shown_path

    relu, lma = tmp_path / "relu_seed1" / "model_step_2750.pt", tmp_path / "lma_seed1" / "model_step_2750.pt"
    assert model_names([relu, lma, tmp_path / "teacher.pt"]) == [
        "relu_seed1/model_step_2750.pt", "lma_seed1/model_step_2750.pt", "teacher.pt"]
    assert shown_path(relu, tmp_path) == "relu_seed1/model_step_2750.pt"
    assert shown_path(relu, tmp_path / "elsewhere") == "model_step_2750.pt"

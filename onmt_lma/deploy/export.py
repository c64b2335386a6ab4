"""``onmt_lma_export``: a translation model as ONNX graphs (:mod:`onmt_lma.deploy.graphs`) and as the
native engine's weights (:mod:`onmt_lma.deploy.native`), in one folder.

    onmt_lma_export -model CK.pt -output DIR [-int8]

With ``-int8`` the matrix products of both graphs are quantized by ONNX Runtime's
dynamic quantization (``*.int8.onnx``).  A low-bit checkpoint (``onmt_lma_quantize -bits B``, or of a
``-quant_bits`` student) gives low-bit graphs, its packed codes on ONNX Runtime's kernels
(:mod:`onmt_lma.deploy.low_bit`); codes ONNX Runtime cannot run (3 bits) export for the native engine alone,
``onnx_refused`` in the manifest saying why.  ``manifest.json`` records the format,
the checkpoint's sha256, the special token ids and the options a runtime needs;
``src.vocab.json`` / ``tgt.vocab.json`` the vocabularies; ``native.pt`` the float32 weights of
``-engine native`` (a low-bit checkpoint: ``native.low_bit.pt``, the checkpoint's packed codes in the engine's layout,
dequantized when the engine loads them; or ``native_refused``: why there are none).
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import collections
import json
import shutil
import warnings
from pathlib import Path

import onnx
import torch
from onmt.constants import DefaultTokens
from onnx import TensorProto, helper

from onmt_lma.base.files import building_folder, check_folder_output, refuse_overwriting, sha256_of
from onmt_lma.deploy.graphs import (LOW_BIT_POSITIONS, OPSET, DecoderStepGraph, EncoderGraph, empty_cache,
                                    graph_activations, load_model)
from onmt_lma.deploy.low_bit import low_bit_weights, lower_graph
from onmt_lma.deploy.manifest import (FORMAT, LOW_BIT_FILE, MANIFEST, RUNTIME_FILE, WEIGHTS_FILE, ExportError,
                                     cache_names, is_export_folder, read_manifest)
from onmt_lma.deploy.native import native_weights, write_low_bit
from onmt_lma.deploy.native_runtime import save_runtime_weights
from onmt_lma.deploy.text import SENTENCEPIECE_FILE, TEXT_FILE, TextSteps, fits, trained_corpus
from onmt_lma.model import kernels

ModelParts = collections.namedtuple("ModelParts", "vocabs model model_opt low_bit native sources native_refused "
                                                 "onnx_refused text")


# --------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------- #
def export(checkpoint, out_dir, int8=False, bits=None, force=False, corpus=None):
    """Write the graphs, vocabularies, text steps and manifest of ``checkpoint`` into the folder ``out_dir``
    (low-bit graphs for a low-bit checkpoint; ``bits``: the width asked for, checked against it; the text steps
    of ``corpus``, default the prepared corpus it was trained on), built under a temporary name and renamed
    when complete; an existing export there is replaced only with ``force``, any other folder never
    (:func:`~onmt_lma.base.files.building_folder`)."""

    refuse_overwriting(out_dir, {"-model": checkpoint})
    check_folder_output(out_dir, "an export", is_export_folder, force)  # before any work
    model_parts = _model_parts(checkpoint, int8, bits, corpus)
    with building_folder(out_dir, "an export", is_export_folder, force) as out:
        return _write(checkpoint, model_parts, out, int8)


def _model_parts(checkpoint, int8, bits, corpus):
    """What an export writes of ``checkpoint``: its vocabularies, model and options, low-bit codes (or None),
    native weights (or None) with what they came from, why an engine cannot run it, and its text steps (or
    None)."""

    low_bit = low_bit_weights(checkpoint, int8, bits)
    vocabs, model, model_opt = load_model(checkpoint)
    if getattr(model_opt, "lma_int8", False):
        raise ExportError(f"{checkpoint} is an onmt_lma_quantize int8 checkpoint; export the float checkpoint "
                          "(with -int8 for int8 graphs)")
    if low_bit is not None:  # the float position tables would be half of the folder: keep LOW_BIT_POSITIONS
        for embeddings in (model.encoder.embeddings, model.decoder.embeddings):
            table = embeddings.make_embedding.pe
            table.pe = table.pe[:LOW_BIT_POSITIONS]

    sources = {}  # each native weight's checkpoint keys (a low-bit export keeps their codes)
    try:
        native, native_refused = native_weights(model, model_opt, sources), None
    except ExportError as error:
        native, native_refused = None, str(error)
    onnx_refused = low_bit.onnx_refused if low_bit is not None else None
    if onnx_refused is not None and native_refused is not None:  # neither engine could run it
        raise ExportError(f"{checkpoint}: {onnx_refused}, and {native_refused}")
    corpus = corpus or trained_corpus(model_opt)
    if corpus is not None and not fits(corpus, vocabs["src"].ids_to_tokens):
        raise ExportError(f"-corpus {corpus}: most of {checkpoint}'s source vocabulary is not this corpus's; give the "
                          "prepared corpus it was trained on")
    text = TextSteps.from_corpus(corpus) if corpus is not None else None
    return ModelParts(vocabs, model, model_opt, low_bit, native, sources, native_refused, onnx_refused, text)


def _write(checkpoint, parts, out, int8):
    """The export folder's files written into ``out``; its manifest."""

    vocabs, model, model_opt, low_bit, onnx_refused = parts.vocabs, parts.model, parts.model_opt, parts.low_bit, \
        parts.onnx_refused
    graphs, lowered = [], {}
    if onnx_refused is None:
        graphs, lowered = _write_graphs(checkpoint, model, out, low_bit, int8)
    graphs += _write_native(checkpoint, parts.native, parts.sources, out, low_bit) or []
    for side in ("src", "tgt"):
        (out / f"{side}.vocab.json").write_text(json.dumps(vocabs[side].ids_to_tokens, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    graphs += parts.text.write(out) if parts.text is not None else []

    attention = model.decoder.transformer_layers[0].self_attn
    tgt_vocab = vocabs["tgt"]
    manifest = {
        "format": FORMAT, "checkpoint": Path(checkpoint).name, "checkpoint_sha256": sha256_of(checkpoint),
        "activation": model_opt.pos_ffn_activation_fn, "hidden_size": model_opt.hidden_size,
        "layers": len(model.decoder.transformer_layers), "heads": attention.head_count,
        "head_dim": attention.dim_per_head, "max_positions": int(model.decoder.embeddings.make_embedding.pe.pe.shape[0]),
        "int8": bool(int8), "opset": OPSET, "torch": torch.__version__,
        "low_bit": None if low_bit is None else {
            "bits": low_bit.bits, "bucket": low_bit.bucket, "source": low_bit.info.get("source", "quantization-aware"),
            "embeddings": bool(low_bit.tables), "graphs": lowered},
        "special": {"pad": tgt_vocab.lookup_token(DefaultTokens.PAD),
                    "bos": tgt_vocab.lookup_token(vocabs.get("decoder_start_token", DefaultTokens.BOS)),
                    "eos": tgt_vocab.lookup_token(DefaultTokens.EOS), "unk": tgt_vocab.lookup_token(DefaultTokens.UNK),
                    "src_pad": vocabs["src"].lookup_token(DefaultTokens.PAD),
                    "src_unk": vocabs["src"].lookup_token(DefaultTokens.UNK)},
        "files": {name: sha256_of(out / name) for name in graphs + ["src.vocab.json", "tgt.vocab.json"]},
    }
    if parts.native_refused is not None:
        manifest["native_refused"] = parts.native_refused
    if onnx_refused is not None:
        manifest["onnx_refused"] = onnx_refused
    if parts.text is None:
        manifest["text_refused"] = ("the checkpoint's vocabularies are not a corpus prepared by python -m data_prep: "
                                    "export it with -corpus DIR to carry that corpus's text steps")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_graphs(checkpoint, model, out, low_bit, int8):
    """``(graph files, what lowering rewrote)``: the encoder and decoder step traced into ``out`` (low-bit:
    their products lowered to the checkpoint's codes; ``int8``: also ONNX Runtime's dynamic int8 graphs)."""

    src = torch.tensor([[5, 6, 7, 8], [9, 10, 1, 1]])
    src_len = torch.tensor([4, 2])
    graph_activations(model)
    encoder, step = EncoderGraph(model).eval(), DecoderStepGraph(model).eval()
    layers = len(model.decoder.transformer_layers)
    cross_names, self_names, grown_names = cache_names(layers)
    with torch.no_grad(), kernels.forced("torch"):
        bias, *cross = encoder(src, src_len)
        _, *own = step(torch.tensor([2, 2]), torch.tensor([0]), bias, *cross, *empty_cache(model, 2))
        # traced with a one-position cache; every length works (dynamic axis "step")
        step_inputs = (torch.tensor([7, 8]), torch.tensor([1]), bias, *cross, *own)
        cross_axes = {name: {0: "batch", 2: "src_len"} for name in cross_names}
        _onnx_export(encoder, (src, src_len), out / "encoder.onnx", ["src", "src_len"],
                     ["memory_bias", *cross_names],
                     {"src": {0: "batch", 1: "src_len"}, "src_len": {0: "batch"},
                      "memory_bias": {0: "batch", 3: "src_len"}, **cross_axes})
        _onnx_export(step, step_inputs, out / "decoder_step.onnx",
                     ["token", "step", "memory_bias", *cross_names, *self_names], ["log_probs", *grown_names],
                     {"token": {0: "n"}, "memory_bias": {0: "n", 3: "src_len"},
                      **{name: {0: "n", 2: "src_len"} for name in cross_names},
                      **{name: {0: "n", 2: "step"} for name in self_names},
                      "log_probs": {0: "n"}, **{name: {0: "n", 2: "step_plus_1"} for name in grown_names}})
    add_top_k(out / "decoder_step.onnx")
    graphs = ["encoder.onnx", "decoder_step.onnx"]
    lowered = {}
    if low_bit is not None:

        lowered = {name: lower_graph(out / name, low_bit) for name in graphs}
        if any(counts["float_matmuls"] for counts in lowered.values()):
            raise ExportError(f"{checkpoint}: matrix products left in float after lowering to low bits: {lowered}")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic  # here: only -int8 needs it (slow to load)

        for name in list(graphs):
            target = name.replace(".onnx", ".int8.onnx")
            quantize_dynamic(str(out / name), str(out / target), weight_type=QuantType.QInt8)
            graphs.append(target)
    return graphs, lowered


def _write_native(checkpoint, native, sources, out, low_bit):
    """The file of ``-engine native`` (:mod:`onmt_lma.deploy.native`) written from ``native``, the model's
    :func:`~onmt_lma.deploy.native.native_weights` (None where the engine cannot run it: nothing written):
    ``native.pt`` (float32, the torch engine's, for int8) and ``native.safetensors`` (float32, the torch-free
    runtime's: :mod:`onmt_lma.deploy.native_runtime`) or, for a low-bit checkpoint, ``native.low_bit.pt``
    (:func:`~onmt_lma.deploy.native.write_low_bit`: its packed codes, dequantized when the engine loads them);
    the names written."""

    if native is None:
        return None
    if low_bit is not None:
        write_low_bit(checkpoint, native, sources, out / LOW_BIT_FILE)
        return [LOW_BIT_FILE]
    torch.save(native, out / WEIGHTS_FILE)
    save_runtime_weights({**native, "weights": {name: value.numpy() for name, value in native["weights"].items()}},
                         out / RUNTIME_FILE)
    return [WEIGHTS_FILE, RUNTIME_FILE]


def add_top_k(path):
    """Give the decoder step graph each row's ``k`` best tokens as outputs (``top_log_probs``, ``top_ids``;
    ``k`` an input): the beam search then reads beam-size candidates per hypothesis instead
    of copying out and partitioning the whole vocabulary's log-probabilities every step."""
    model = onnx.load(str(path))
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    graph.node.append(helper.make_node("TopK", ["log_probs", "k"], ["top_log_probs", "top_ids"], axis=1,
                                       largest=1, sorted=1))
    graph.output.extend([helper.make_tensor_value_info("top_log_probs", TensorProto.FLOAT, ["n", "k"]),
                         helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["n", "k"])])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _onnx_export(module, inputs, path, input_names, output_names, dynamic_axes):

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(module, inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


#: what :func:`runtime_only` keeps of an export: the runtime's weights, the vocabularies, the text steps
RUNTIME_ONLY = (RUNTIME_FILE, "src.vocab.json", "tgt.vocab.json", TEXT_FILE, SENTENCEPIECE_FILE)


def runtime_only(folder, out_dir, force=False):
    """The export ``folder`` cut to what the torch-free runtime reads (:data:`RUNTIME_ONLY`), written as the
    export ``out_dir`` (built aside, renamed when complete); its manifest."""
    manifest = read_manifest(folder)
    if RUNTIME_FILE not in manifest["files"]:
        raise ExportError(f"{folder}: no {RUNTIME_FILE} (a low-bit export, or one the runtime cannot run: "
                          f"{manifest.get('native_refused')}); it has no runtime-only form")
    check_folder_output(out_dir, "an export", is_export_folder, force)
    with building_folder(out_dir, "an export", is_export_folder, force) as out:
        kept = {name: digest for name, digest in manifest["files"].items() if name in RUNTIME_ONLY}
        for name in kept:
            shutil.copyfile(Path(folder) / name, out / name)
        manifest = {**manifest, "files": kept, "int8": False,
                    "onnx_refused": "a runtime-only export (onmt_lma_export -runtime_only): no ONNX graphs"}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest

"""The torch extension engine: an ``onmt_lma_export`` folder's weights in one compiled decoding loop, for what
the torch-free runtime (:mod:`onmt_lma.deploy.native_runtime`, float32) does not run yet: ``-precision int8``
and low-bit exports; and the export side, :func:`native_weights`.

    onmt_lma_translate -engine native -model EXPORT_DIR -src SRC -output OUT [-beam_size 5] [-threads N] ...

or from Python::

    translator = NativeTranslator("export_dir")
    translator.translate(["ein Mann .", ...], Decoding(beam_size=5))   # -> [[(score, "a man ."), ...], ...]

A small student spends a decoding step in per-operation costs, not arithmetic, so ``csrc/engine_cpu.cpp``
runs the encoder, the decoder steps and the beam search (``csrc/search.h``, held to
:mod:`onmt_lma.deploy.search`) in one compiled loop: small products on its own packed AVX2 kernel, larger
ones on ATen, LMA's segment lookup (Xu et al. 2020, Eq. 2-3) in one AVX2 register.  It reads
``native.pt`` (written by ``onmt_lma_export`` beside the graphs, loaded with ``weights_only=True``; for a
low-bit checkpoint ``native.low_bit.pt``, the same weights with the checkpoint's packed codes in place of its
quantized ones, dequantized as it loads: the weights it computes with, run in float32).  ``-precision int8`` runs the linear layers as
PyTorch's dynamically quantized int8 ``Linear`` (fbgemm), quantized per row as the weights load, as
``onmt_lma_translate -precision int8`` runs a checkpoint: the same translations; on a low-bit export, its
dequantized codes quantized so (4-bit weights on disk, int8 products: faster in large batches, translations
then as far from its PyTorch self as int8 from float32).  The file holds:

* ``config``: dim, heads, vocab, special ids, the layer norms' eps; ``activation``: one of
  :func:`native_activations`;
* ``weights``: ``src_embeddings``, ``tgt_embeddings``, ``positions`` (the sinusoid table), per encoder
  layer ``encoder.{i}.norm``, ``.qkv`` (query, key and value projections stacked), ``.out``, ``.ffn.norm``,
  ``.ffn.w1``, ``.ffn.w2`` and the activation's tensors, ``encoder.norm``; per decoder layer ``norm1``,
  ``norm2``, ``qkv``, ``out``, ``context_query``, ``context_keys``, ``context_values``, ``context_out``,
  ``ffn.*``; ``decoder.norm``; ``generator`` (each ``.weight`` and, where the model has one, ``.bias``).
"""

import warnings

import torch

from onmt_lma.base.checkpoint import CheckpointError
from onmt_lma.base.checkpoint import load as load_checkpoint
from onmt_lma.base.checkpoint import load_weights
from onmt_lma.deploy.graphs import LMAGraph
from onmt_lma.deploy.manifest import LOW_BIT_FILE, WEIGHTS_FILE, ExportError
from onmt_lma.deploy.native_runtime import RuntimeTranslator, runtime_decoding
from onmt_lma.deploy.runtime import ExportTranslator
from onmt_lma.deploy.search import BANNED
from onmt_lma.model import kernels
from onmt_lma.model.lma import LMA
from onmt_lma.model.quantization import dequantize_rows, quantize_rows
from onmt_lma.model.quantized_checkpoint import checkpoint_key, low_bit_values, position_table, quantization_of

#: the weights that are matrix products (``-precision int8`` runs them as int8)
LINEAR_PARTS = ("qkv", "out", "context_query", "context_keys", "context_values", "context_out", "w1", "w2",
                "generator")


#: float32 linear weights of at least this many values run on oneDNN, reordered once as they load (below it
#: oneDNN's fixed cost a call loses to MKL's sgemm; docs/architecture.md)
REORDERED_MIN_VALUES = 2 ** 19
#: float32 products of at most this many rows (hypotheses) run on the engine's own packed AVX2 kernel, not
#: ATen (engine_cpu.cpp's kPanelRows); None: the engine's default, 0: ATen always
PANEL_ROWS = None


def native_activations():
    """The activations the compiled engine has kernels for (its own list, ``csrc/engine_cpu.cpp``'s kKinds)."""
    try:
        return tuple(kernels.engine_module().activations())
    except RuntimeError as error:
        raise ExportError(str(error)) from None


def linear_names(weights):
    """The names of ``weights``' matrix-product weights (:data:`LINEAR_PARTS`)."""
    return [name for name in weights if name.endswith(".weight") and name.count(".") >= 1
            and name.split(".")[-2] in LINEAR_PARTS]


def reordered_linears(weights):
    """``weights`` with, for each large float32 linear weight, its oneDNN layout (``NAME.reordered``, from
    ``torch.ops.mkldnn._reorder_linear_weight``) beside it; unchanged where oneDNN is not built in."""
    if not torch.backends.mkldnn.is_available():
        return weights
    result = dict(weights)
    for name in linear_names(weights):
        if weights[name].numel() >= REORDERED_MIN_VALUES:
            result[name[: -len("weight")] + "reordered"] = torch.ops.mkldnn._reorder_linear_weight(weights[name], None)
    return result


def int8_linears(weights):
    """``weights`` with every linear weight as per-row symmetric qint8 (:func:`~onmt_lma.model.quantization.
    quantize_rows`, as ``onmt_lma_quantize`` and ``-precision int8`` of the PyTorch engine store them; stacking
    the query, key and value rows changes no row's scale), for PyTorch's dynamically quantized Linear."""
    result = dict(weights)
    for name in linear_names(weights):
        values, scales = quantize_rows(weights[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            result[name] = torch.quantize_per_channel(dequantize_rows(values, scales), scales.double(),
                                                      torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
    return result


def native_weights(model, model_opt, sources=None):
    """``native.pt``'s content for an OpenNMT-py model (LMA as :class:`~onmt_lma.deploy.graphs.LMAGraph`
    or as trained); raises :class:`ExportError` naming what the native engine does not run.  ``sources``, a
    dict, gets each linear weight's and embedding table's checkpoint keys ("part/name", the rows stacked in
    that order)."""
    module_names = {id(module): name for name, module in model.named_modules()}

    def source(name, *modules):
        if sources is not None:
            sources[name] = ["/".join(checkpoint_key(module_names[id(m)])) for m in modules]

    activation = model_opt.pos_ffn_activation_fn
    if activation not in native_activations():
        raise ExportError(f"-pos_ffn_activation_fn {activation}: the native engine has no kernel for it "
                          f"({', '.join(native_activations())}); use -engine onnx")
    weights, eps = {}, set()

    def tensor(name, value):
        weights[name] = value.detach().float().contiguous().clone()

    def linear(name, *modules):
        tensor(f"{name}.weight", torch.cat([m.weight for m in modules]))
        source(f"{name}.weight", *modules)
        if all(m.bias is not None for m in modules):
            tensor(f"{name}.bias", torch.cat([m.bias for m in modules]))
        elif any(m.bias is not None for m in modules):
            raise ExportError(f"{name}: some of its projections have a bias and some not")

    def norm(name, module):
        if not isinstance(module, torch.nn.LayerNorm):
            raise ExportError(f"{name}: {type(module).__name__}; the native engine runs LayerNorm "
                              "(-layer_norm standard); use -engine onnx")
        eps.add(module.eps)
        tensor(f"{name}.weight", module.weight)
        if module.bias is not None:
            tensor(f"{name}.bias", module.bias)

    def feed_forward(name, block):
        if block.w_3 is not None:
            raise ExportError(f"{name}: a gated feed-forward block; use -engine onnx")
        norm(f"{name}.norm", block.layer_norm)
        linear(f"{name}.w1", block.w_1)
        linear(f"{name}.w2", block.w_2)
        act = block.activation
        if isinstance(act, LMA):
            act = LMAGraph(act, block.w_1.out_features)
        if isinstance(act, LMAGraph):  # the exported graph's numbers: mean, 1 / (6 std / k), (k,) tables
            for key in ("mean", "inv"):
                tensor(f"{name}.{key}", getattr(act, key).reshape(()))
            tensor(f"{name}.slopes", act.slopes[:, 0])
            tensor(f"{name}.intercepts", act.intercepts[:, 0])
        for key in ("weight", "beta", "hinge_slope", "hinge_point"):  # PReLU, Swish, APLU
            if isinstance(getattr(act, key, None), torch.Tensor):
                tensor(f"{name}.{key}", getattr(act, key))

    encoder, decoder = model.encoder, model.decoder
    tables = [side.embeddings.make_embedding for side in (encoder, decoder)]
    if not torch.equal(tables[0].pe.pe, tables[1].pe.pe):
        raise ExportError("the encoder's and decoder's position tables differ; use -engine onnx")
    tensor("src_embeddings", tables[0].emb_luts[0].weight)
    tensor("tgt_embeddings", tables[1].emb_luts[0].weight)
    source("src_embeddings", tables[0].emb_luts[0])
    source("tgt_embeddings", tables[1].emb_luts[0])
    tensor("positions", tables[0].pe.pe[:, 0, :])
    for i, layer in enumerate(encoder.transformer):
        attention = layer.self_attn
        norm(f"encoder.{i}.norm", layer.layer_norm)
        linear(f"encoder.{i}.qkv", attention.linear_query, attention.linear_keys, attention.linear_values)
        linear(f"encoder.{i}.out", attention.final_linear)
        feed_forward(f"encoder.{i}.ffn", layer.feed_forward)
    norm("encoder.norm", encoder.layer_norm)
    for i, layer in enumerate(decoder.transformer_layers):
        own, context = layer.self_attn, layer.context_attn
        norm(f"decoder.{i}.norm1", layer.layer_norm_1)
        norm(f"decoder.{i}.norm2", layer.layer_norm_2)
        linear(f"decoder.{i}.qkv", own.linear_query, own.linear_keys, own.linear_values)
        linear(f"decoder.{i}.out", own.final_linear)
        for part, module in (("query", context.linear_query), ("keys", context.linear_keys),
                             ("values", context.linear_values), ("out", context.final_linear)):
            linear(f"decoder.{i}.context_{part}", module)
        feed_forward(f"decoder.{i}.ffn", layer.feed_forward)
    norm("decoder.norm", decoder.layer_norm)
    linear("generator", model.generator)
    if len(eps) != 1:
        raise ExportError(f"layer norms with different eps {sorted(eps)}; use -engine onnx")
    attention = decoder.transformer_layers[0].self_attn
    config = {"dim": float(model_opt.hidden_size), "heads": float(attention.head_count),
              "vocab": float(weights["generator.weight"].shape[0]), "eps": float(eps.pop())}
    if attention.dim_per_head > 64 or attention.dim_per_head * attention.head_count != model_opt.hidden_size:
        raise ExportError(f"heads of {attention.dim_per_head} dimensions; the native engine takes at most 64 "
                          "and heads x head dimension = -hidden_size; use -engine onnx")
    return {"activation": activation, "config": config, "weights": weights}


def write_low_bit(checkpoint, saved, sources, out):
    """``native.low_bit.pt`` of a low-bit checkpoint: ``saved``, :func:`native_weights` of the model built from
    it (``sources``: what it filled in), with every weight the checkpoint holds as codes left as its codes (``coded``: each such weight's checkpoint keys;
    ``codes`` and ``low_bit``: their packed codes and the checkpoint's entries for them) and the sinusoid table
    left to its formula (``positions``: its shape and encoding)."""
    state = load_checkpoint(checkpoint)
    info = quantization_of(state).low_bit
    coded = {name: keys for name, keys in sources.items() if all(key in info["weights"] for key in keys)}
    keys = [key for names in coded.values() for key in names]
    codes = {key: state[key.split("/", 1)[0]][key.split("/", 1)[1]] for key in keys}
    positions = saved["weights"]["positions"]
    torch.save({"activation": saved["activation"], "config": saved["config"], "coded": coded, "codes": codes,
                "low_bit": {**info, "weights": {key: info["weights"][key] for key in keys}},
                "positions": {"rows": positions.shape[0], "dim": positions.shape[1],
                              "encoding": getattr(state["opt"], "position_encoding_type", "SinusoidalInterleaved")},
                "weights": {name: value for name, value in saved["weights"].items()
                            if name not in coded and name != "positions"}}, out)


def low_bit_native_weights(path):
    """:func:`native_weights` of a :func:`write_low_bit` file: its codes dequantized as OpenNMT-py dequantizes
    the checkpoint (:func:`~onmt_lma.model.quantized_checkpoint.low_bit_values`, the float weights its PyTorch
    self computes with), rows stacked as the engine takes them; the engine then runs them in float32."""
    try:
        saved = load_weights(path, "native engine weight file")
    except CheckpointError as error:
        if "argparse.Namespace" not in str(error):
            raise ExportError(str(error)) from None
        saved = {}  # an earlier onmt-lma wrote the checkpoint itself (its options an object)
    if not isinstance(saved, dict) or "coded" not in saved:
        raise ExportError(f"{path}: a low-bit file of an earlier onmt-lma; export the checkpoint again")
    weights, info = dict(saved["weights"]), saved["low_bit"]
    for name, keys in saved["coded"].items():
        weights[name] = torch.cat([low_bit_values(saved["codes"][key], info["weights"][key], info)
                                   for key in keys]).float().contiguous()
    positions = saved["positions"]
    table = position_table((positions["rows"], 1, positions["dim"]), positions["encoding"])
    weights["positions"] = table[:, 0, :].float().contiguous()
    return {"activation": saved["activation"], "config": saved["config"], "weights": weights}


def load_native_weights(path):
    """``native.pt``, loaded with ``weights_only=True`` (plain tensors only); a damaged or hand-made file is a
    one-line :class:`ExportError`."""
    try:
        saved = load_weights(path, "native engine weight file")
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if not isinstance(saved, dict) or not {"activation", "config", "weights"} <= set(saved):
        raise ExportError(f"{path}: not a native engine weight file (no activation, config and weights); "
                          "export the checkpoint again")
    return saved


class NativeTranslator(ExportTranslator):
    """An ``onmt_lma_export`` folder's ``native.pt`` on the compiled engine (``threads``: its intra-op
    threads, as ``torch.set_num_threads``; default: PyTorch's, one per core; ``int8``: the linear layers as
    PyTorch's dynamically quantized int8 ``Linear``, as ``onmt_lma_translate -precision int8`` runs them)."""

    def __init__(self, folder, threads=None, int8=False):
        super().__init__(folder, lambda name: name in (WEIGHTS_FILE, LOW_BIT_FILE))
        manifest = self.manifest
        if WEIGHTS_FILE in manifest["files"]:
            saved = load_native_weights(self.folder / WEIGHTS_FILE)
        elif LOW_BIT_FILE in manifest["files"]:
            saved = low_bit_native_weights(self.folder / LOW_BIT_FILE)
        else:
            why = manifest.get("native_refused") or "exported by an onmt-lma without the native engine"
            raise ExportError(f"{folder}: no {WEIGHTS_FILE} ({why}); run it with -engine onnx"
                              + (" or export it again" if "native_refused" not in manifest else ""))
        weights, config = saved["weights"], dict(saved["config"])
        for side, vocab, rows in (("src", self.src_vocab, weights["src_embeddings"].shape[0]),
                                  ("tgt", self.tgt_tokens, int(config["vocab"]))):
            if len(vocab) != rows:
                raise ExportError(f"{folder}: {side}.vocab.json holds {len(vocab)} tokens, the model's {side} "
                                  f"vocabulary {rows}; export the checkpoint again")
        for key in ("bos", "eos", "unk", "src_pad"):
            config[key] = float(self.special[key])
        config["banned_score"] = BANNED
        if PANEL_ROWS is not None:
            config["panel_rows"] = float(PANEL_ROWS)
        if threads:
            torch.set_num_threads(threads)
        self.engine = kernels.engine_module().Engine(int8_linears(weights) if int8 else reordered_linears(weights),
                                                     config, saved["activation"])

    def _search(self, lines, decoding, max_steps):
        before = self.engine.profile()
        found = self.engine.translate([self.source_ids(line) for line in lines],
                                      runtime_decoding(kernels.engine_module(), decoding), max_steps)
        self._count(before)
        return found

    def _count(self, before):
        for key, value in self.engine.profile().items():  # seconds; counts of steps, sentences, panel products
            change = (value - before[key]) if key.endswith("_s") else int(value - before[key])
            self.profile[key] = self.profile.get(key, 0) + change

    score = RuntimeTranslator.score  # the same call on this engine

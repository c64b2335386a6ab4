"""The native engine without PyTorch: an ``onmt_lma_export`` folder's ``native.safetensors`` on the compiled
runtime (``csrc/runtime``, the module ``onmt_lma._runtime``, built with pybind11 and no torch).

    onmt_lma_translate -engine native -model EXPORT_DIR -src SRC -output OUT [-beam_size 5] [-threads N] ...

It runs the encoder, the cached decoder steps and the beam search (``csrc/search.h``, held to
:mod:`onmt_lma.deploy.search`) in C++, float32, for every activation, with one kernel table per instruction
set: chosen once per process (the best this CPU runs, or ``ONMT_LMA_FORCE_CPU_ISA=GENERIC|AVX2``), every path
computing the same floats, so that a translation is the same on every CPU.  The weights file is safetensors
(no pickle): the tensors :mod:`onmt_lma.deploy.native` documents, float32, and in its metadata the activation
and the model's dimensions.
"""

import dataclasses
import enum
import hashlib
import importlib
import json
import os
from pathlib import Path

import numpy
from safetensors import SafetensorError, safe_open

from onmt_lma.base.batching import batches
from onmt_lma.deploy.manifest import RUNTIME_FILE, ExportError
from onmt_lma.deploy.runtime import ExportTranslator
from onmt_lma.deploy.search import BANNED

_SOURCES = Path(__file__).resolve().parents[1] / "csrc"


def source_digest():
    """The sha256 of the runtime's sources and headers (setup.py builds it into the module)."""
    folder = _SOURCES / "runtime"
    paths = sorted(folder.glob("*.cpp")) + sorted(folder.glob("*.h")) + [_SOURCES / "search.h"]
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def runtime_module():
    """``onmt_lma._runtime``, built by the install from these very sources; a one-line ExportError otherwise."""
    try:
        module = importlib.import_module("onmt_lma._runtime")
    except ImportError as error:
        raise ExportError(f"the native runtime is not built ({error}); reinstall onmt-lma where a C++ compiler is "
                          "found (pip install .), or use -engine onnx") from None
    if getattr(module, "source_sha256", None) != source_digest():
        raise ExportError(f"{module.__file__} was built from other sources than csrc/runtime's; reinstall onmt-lma "
                          "(pip install .) to rebuild it")
    return module


def save_runtime_weights(saved, path):
    """``native.safetensors`` from :func:`~onmt_lma.deploy.native.native_weights`' content (tensors as NumPy
    float32 arrays, each stored in float16 where that keeps every value, as a float16 checkpoint's do; the
    activation and config in the metadata).  The engine computes in float32 either way."""
    from safetensors.numpy import save_file  # here: only an export writes the file

    def stored(value):
        half = value.astype(numpy.float16)
        return half if numpy.array_equal(half.astype(numpy.float32), value) else value

    save_file({name: stored(value) for name, value in saved["weights"].items()}, str(path),
              metadata={"activation": saved["activation"], "config": json.dumps(saved["config"])})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; the export's other files follow the umask


def load_runtime_weights(path):
    """``(weights, config, activation)`` of a ``native.safetensors`` file; a damaged or foreign one is a
    one-line ExportError."""
    try:
        with safe_open(str(path), framework="numpy") as opened:
            metadata = opened.metadata() or {}
            weights = {name: opened.get_tensor(name).astype(numpy.float32) for name in opened.keys()}
        config = json.loads(metadata["config"])
        activation = metadata["activation"]
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise ExportError(f"{path}: not a native runtime weight file ({type(error).__name__}); export the "
                          "checkpoint again") from None
    if not isinstance(config, dict) or not all(isinstance(v, (int, float)) for v in config.values()):
        raise ExportError(f"{path}: its config is not a mapping of numbers; export the checkpoint again")
    return weights, config, activation


def runtime_decoding(module, decoding):
    """A :class:`~onmt_lma.deploy.decoding.Decoding` as the engine's struct (``csrc/search.h``), field by field:
    a field the struct lacks is an AttributeError."""
    native = module.Decoding()
    for field in dataclasses.fields(decoding):
        value = getattr(decoding, field.name)
        setattr(native, field.name, getattr(module.LengthPenalty, value.name) if isinstance(value, enum.Enum) else value)
    return native


class RuntimeTranslator(ExportTranslator):
    """An export's ``native.safetensors`` on the torch-free runtime (``threads``: its threads; default one per
    core)."""

    def __init__(self, folder, threads=None):
        super().__init__(folder, lambda name: name == RUNTIME_FILE)
        if RUNTIME_FILE not in self.manifest["files"]:
            raise ExportError(f"{folder}: no {RUNTIME_FILE} (exported by an earlier onmt-lma, or a low-bit export); "
                              "export the checkpoint again, or run it with -engine onnx")
        weights, config, activation = load_runtime_weights(self.folder / RUNTIME_FILE)
        for side, vocab, rows in (("src", self.src_vocab, len(weights["src_embeddings"])),
                                  ("tgt", self.tgt_tokens, int(config["vocab"]))):
            if len(vocab) != rows:
                raise ExportError(f"{folder}: {side}.vocab.json holds {len(vocab)} tokens, the model's {side} "
                                  f"vocabulary {rows}; export the checkpoint again")
        config.update({key: float(self.special[key]) for key in ("bos", "eos", "unk", "src_pad")},
                      banned_score=BANNED, threads=float(threads or 0))
        self.module = runtime_module()
        try:
            self.isa = self.module.active_isa()  # ONMT_LMA_FORCE_CPU_ISA checked
        except ValueError as error:
            raise ExportError(str(error)) from None
        try:
            self.engine = self.module.Engine(weights, config, activation)
        except ValueError as error:  # a weight missing or of the wrong shape
            raise ExportError(f"{folder}: {error}; export the checkpoint again") from None

    def _search(self, lines, decoding, max_steps):
        before = self.engine.profile()
        found = self.engine.translate([self.source_ids(line) for line in lines], runtime_decoding(self.module, decoding),
                                      max_steps)
        for key, value in self.engine.profile().items():
            self.profile[key] += (value - before[key]) if key.endswith("_s") else int(value - before[key])
        return found

    def score(self, sources, targets, batch_size=32):
        """:meth:`OnnxTranslator.score <onmt_lma.deploy.runtime.OnnxTranslator.score>` on this engine."""
        total, count = 0.0, 0
        for batch in batches(sources, batch_size):
            found, counted = self.engine.score([self.source_ids(sources[i]) for i in batch],
                                               [self.target_ids(targets[i]) for i in batch])
            total, count = total + found, count + counted
        return total, count

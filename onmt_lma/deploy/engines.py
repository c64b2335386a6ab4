"""The engines that run an ``onmt_lma_export`` folder, opened by one factory: :func:`open_export`.

* ``native``: the compiled engine (:class:`onmt_lma.deploy.native.NativeTranslator`), the fastest;
* ``onnx``: the graphs on ONNX Runtime (:class:`onmt_lma.deploy.runtime.OnnxTranslator`).

Both take a :class:`~onmt_lma.deploy.decoding.Decoding` and give the same translations; the options of
``onmt_translate`` that neither implements are refused by :func:`refuse_unimplemented`, never ignored.
"""

import os

from onmt_lma.deploy.manifest import RUNTIME_FILE, ExportError, read_manifest
from onmt_lma.deploy.native_runtime import RuntimeTranslator
from onmt_lma.deploy.runtime import OnnxTranslator

ENGINES = ("onnx", "native")
#: onmt_translate options the export engines do not implement, with the values that mean "not used"
UNIMPLEMENTED = {"ignore_when_blocking": ([],), "coverage_penalty": ("none",), "ratio": (0.0,), "replace_unk": (False,),
                 "random_sampling_topk": (0, 1), "tgt": (None,), "attn_debug": (False,), "align_debug": (False,),
                 "report_align": (False,), "phrase_table": ("",), "gpu": (-1,)}


def refuse_unimplemented(opt):
    """Refuse, naming them, the options of ``onmt_lma_translate`` that ``-engine opt.engine`` would ignore."""
    if opt.threads < 0:
        raise ExportError(f"-threads {opt.threads}: expected 0 (automatic) or a number of threads")
    used = [f"-{name} {getattr(opt, name)!r}" for name, unused in UNIMPLEMENTED.items()
            if getattr(opt, name, unused[0]) not in unused]
    if len(opt.models) != 1 or not os.path.isdir(opt.models[0]):
        used.append(f"-model {' '.join(opt.models)} (-engine {opt.engine} takes one onmt_lma_export folder)")
    if used:
        raise ExportError(f"-engine {opt.engine} does not implement " + ", ".join(used))


def open_export(engine, folder, int8=False, threads=0):
    """The translator of ``-engine onnx|native`` on an export ``folder`` (``int8``: the int8 graphs, or the
    native engine's int8 linear layers; ``threads`` 0: the engine's default), after its checks."""
    if engine not in ENGINES:
        raise ExportError(f"-engine {engine}: an export folder runs on {' or '.join(ENGINES)}")
    if engine == "onnx":
        return OnnxTranslator(folder, int8=int8, threads=threads or None)
    if not int8 and RUNTIME_FILE in read_manifest(folder)["files"]:
        return RuntimeTranslator(folder, threads=threads or None)
    from onmt_lma.deploy.native import NativeTranslator  # here: int8 and low-bit still run on the torch engine

    return NativeTranslator(folder, threads=threads or None, int8=int8)

"""The models a server holds, behind one call: ``translate(token_lines) -> n_best (score, tokens) per line``.

* ``pytorch``: an OpenNMT-py or onmt-lma checkpoint (any activation, int8 too), OpenNMT-py's translator
  (the plugin installed, as ``onmt_lma_translate``);
* ``native``: an ``onmt_lma_export`` folder on this package's compiled engine
  (:class:`onmt_lma.deploy.native.NativeTranslator`), the default for an export that has its weights;
* ``onnx``: an ``onmt_lma_export`` folder on this package's ONNX Runtime engine
  (:class:`onmt_lma.deploy.runtime.OnnxTranslator`; ``int8``: its int8 graphs, the default with ``int8``);
* ``ct2``: a CTranslate2 model folder (``onmt_lma_convert_ct2``).

An engine is called from one thread at a time (the batcher's); it is given whole batches.
"""

import dataclasses
import os
from pathlib import Path

from onmt_lma.base.errors import UserError

ENGINES = ("pytorch", "native", "onnx", "ct2")


class ModelLoadError(UserError, ValueError):
    """A model that cannot be served as asked; the message names it."""


@dataclasses.dataclass
class Decoding:
    """How a model translates: OpenNMT-py's options of the same names."""

    beam_size: int = 5
    n_best: int = 1
    max_length: int = 250
    min_length: int = 0
    length_penalty: str = "avg"
    alpha: float = 1.0
    threads: int = 0  # 0: the engine's default

    OPTIONS = ("beam_size", "n_best", "max_length", "min_length", "length_penalty", "alpha", "threads")

    def check(self, where):
        if self.beam_size < 1 or not 1 <= self.n_best <= self.beam_size:
            raise ModelLoadError(f"{where}: beam_size {self.beam_size}, n_best {self.n_best}: expected "
                                 "beam_size >= 1 and 1 <= n_best <= beam_size")
        if self.max_length < 1 or self.min_length < 0 or self.threads < 0:
            raise ModelLoadError(f"{where}: max_length >= 1, min_length >= 0 and threads >= 0 expected")
        if self.length_penalty not in ("avg", "wu", "none"):
            raise ModelLoadError(f"{where}: length_penalty {self.length_penalty!r}: expected avg, wu or none")


def engine_of(path, int8=False):
    """The engine a model path needs: a checkpoint file (pytorch), an export folder (manifest.json; native where
    it holds the native engine's weights and ``int8`` is not asked, else onnx) or a CTranslate2 folder
    (model.bin)."""
    from onmt_lma.deploy.native import LOW_BIT_FILE, WEIGHTS_FILE

    path = Path(path)
    if path.is_file():
        return "pytorch"
    if (path / "manifest.json").is_file():
        native = (path / WEIGHTS_FILE).is_file() and not int8 or (path / LOW_BIT_FILE).is_file()
        return "native" if native else "onnx"
    if (path / "model.bin").is_file():
        return "ct2"
    raise ModelLoadError(f"model {path}: expected a checkpoint file, an onmt_lma_export folder (manifest.json) or a "
                         "CTranslate2 model folder (model.bin)" if path.exists() else f"model {path}: no such file")


class PyTorchEngine:
    kind = "pytorch"

    def __init__(self, path, decoding, int8=False, max_batch=32):
        from onmt.inference_engine import InferenceEnginePY
        from onmt.utils.parse import ArgumentParser

        from onmt_lma.evaluation.measure import translation_parser

        args = ["-model", str(path), "-src", os.devnull, "-output", os.devnull, "-beam_size", str(decoding.beam_size),
                "-n_best", str(decoding.n_best), "-max_length", str(decoding.max_length),
                "-min_length", str(decoding.min_length), "-length_penalty", decoding.length_penalty,
                "-alpha", str(decoding.alpha), "-batch_size", str(max_batch), "-gpu", "-1"]
        if int8:
            args += ["-precision", "int8"]
        opt = translation_parser().parse_args(args)
        ArgumentParser.validate_translate_opts(opt)
        ArgumentParser._get_all_transform_translate(opt)
        ArgumentParser._validate_transforms_opts(opt)
        ArgumentParser.validate_translate_opts_dynamic(opt)
        if decoding.threads:
            import torch

            torch.set_num_threads(decoding.threads)
        self.engine = InferenceEnginePY(opt)

    def translate(self, lines):
        scores, predictions = self.engine.infer_list(lines)
        return [list(zip((float(s) for s in line_scores), line_predictions))
                for line_scores, line_predictions in zip(scores, predictions)]

    def close(self):
        self.engine.terminate()


class ExportEngine:
    """An ``onmt_lma_export`` folder on ``kind`` (native, onnx)."""

    def __init__(self, path, decoding, kind, int8=False, max_batch=32):
        from onmt_lma.deploy.native import open_export

        self.kind = kind
        self.translator = open_export(kind, path, "int8" if int8 else "", decoding.threads)
        self.decoding, self.max_batch = decoding, max_batch

    def translate(self, lines):
        d = self.decoding
        return self.translator.translate(lines, d.beam_size, self.max_batch, d.max_length, d.min_length, d.n_best,
                                         d.length_penalty, d.alpha)

    def close(self):
        pass


class CTranslate2Engine:
    kind = "ct2"

    def __init__(self, path, decoding, int8=False, max_batch=32):
        import ctranslate2

        if decoding.length_penalty != "avg" or decoding.min_length:
            raise ModelLoadError(f"model {path}: CTranslate2 is served with length_penalty avg and min_length 0")
        self.translator = ctranslate2.Translator(str(path), device="cpu", compute_type="int8" if int8 else "default",
                                                 intra_threads=decoding.threads)
        self.decoding, self.max_batch = decoding, max_batch

    def translate(self, lines):
        d = self.decoding
        results = self.translator.translate_batch(
            [line.split() for line in lines], beam_size=d.beam_size, num_hypotheses=d.n_best, return_scores=True,
            max_decoding_length=d.max_length, length_penalty=d.alpha, max_batch_size=self.max_batch)
        return [[(float(score), " ".join(tokens)) for score, tokens in zip(r.scores, r.hypotheses)] for r in results]

    def close(self):
        pass


def load_engine(path, decoding, engine=None, int8=False, max_batch=32):
    """The engine for ``path`` (``engine``: one of :data:`ENGINES`, default: from what the path holds)."""
    from onmt_lma.deploy.native import ENGINES as EXPORT_ENGINES

    found = engine_of(path, int8)
    if found in EXPORT_ENGINES and engine in EXPORT_ENGINES:  # an export folder: either engine, as asked
        found = engine
    if engine and engine != found:
        raise ModelLoadError(f"model {path}: engine {engine} asked, but it is a {found} model")
    decoding.check(f"model {path}")
    if found in EXPORT_ENGINES:
        return ExportEngine(path, decoding, found, int8=int8, max_batch=max_batch)
    classes = {"pytorch": PyTorchEngine, "ct2": CTranslate2Engine}
    return classes[found](path, decoding, int8=int8, max_batch=max_batch)

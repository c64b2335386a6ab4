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

from pathlib import Path

from onmt_lma.base.errors import UserError
from onmt_lma.deploy.decoding import LengthPenalty
from onmt_lma.deploy.engines import ENGINES as EXPORT_ENGINES
from onmt_lma.deploy.engines import open_export
from onmt_lma.deploy.manifest import LOW_BIT_FILE, RUNTIME_FILE, WEIGHTS_FILE

ENGINES = ("pytorch", "native", "onnx", "ct2")


class ModelLoadError(UserError, ValueError):
    """A model that cannot be served as asked; the message names it."""


def engine_of(path, int8=False):
    """The engine a model path needs: a checkpoint file (pytorch), an export folder (manifest.json; native where
    it holds the native engine's weights and ``int8`` is not asked, else onnx) or a CTranslate2 folder
    (model.bin)."""
    path = Path(path)
    if path.is_file():
        return "pytorch"
    if (path / "manifest.json").is_file():
        native = ((path / RUNTIME_FILE).is_file() or (path / WEIGHTS_FILE).is_file()) and not int8 \
            or (path / LOW_BIT_FILE).is_file()
        return "native" if native else "onnx"
    if (path / "model.bin").is_file():
        return "ct2"
    raise ModelLoadError(f"model {path}: expected a checkpoint file, an onmt_lma_export folder (manifest.json) or a "
                         "CTranslate2 model folder (model.bin)" if path.exists() else f"model {path}: no such file")


class PyTorchEngine:
    kind = "pytorch"

    def __init__(self, path, decoding, int8=False, max_batch=32, threads=0):
        import torch  # here: only checkpoints need torch's and OpenNMT-py's translator
        from onmt.inference_engine import InferenceEnginePY

        from onmt_lma.deploy.pytorch import translation_opts

        opt = translation_opts(path, decoding, batch_size=max_batch, extra=["-precision", "int8"] if int8 else [])
        if threads:
            torch.set_num_threads(threads)
        self.engine = InferenceEnginePY(opt)

    def translate(self, lines):
        scores, predictions = self.engine.infer_list(lines)
        return [list(zip((float(s) for s in line_scores), line_predictions))
                for line_scores, line_predictions in zip(scores, predictions)]

    def close(self):
        self.engine.terminate()


class ExportEngine:
    """An ``onmt_lma_export`` folder on ``kind`` (native, onnx)."""

    def __init__(self, path, decoding, kind, int8=False, max_batch=32, threads=0):
        self.kind = kind
        self.translator = open_export(kind, path, int8, threads)
        self.decoding, self.max_batch = decoding, max_batch

    def translate(self, lines):
        return self.translator.translate(lines, self.decoding, self.max_batch)

    def close(self):
        pass


class CTranslate2Engine:
    kind = "ct2"

    def __init__(self, path, decoding, int8=False, max_batch=32, threads=0):
        import ctranslate2  # here: only a CTranslate2 model needs it

        if decoding.length_penalty is not LengthPenalty.AVG or decoding.min_length or decoding.ban_unk_token:
            raise ModelLoadError(f"model {path}: CTranslate2 is served with length_penalty avg, min_length 0 and "
                                 "no ban_unk_token")
        self.translator = ctranslate2.Translator(str(path), device="cpu", compute_type="int8" if int8 else "default",
                                                 intra_threads=threads)
        self.decoding, self.max_batch = decoding, max_batch

    def translate(self, lines):
        d = self.decoding
        results = self.translator.translate_batch(
            [line.split() for line in lines], beam_size=d.beam_size, num_hypotheses=d.n_best, return_scores=True,
            max_decoding_length=d.max_length, length_penalty=d.alpha, max_batch_size=self.max_batch,
            no_repeat_ngram_size=d.block_ngram_repeat)
        return [[(float(score), " ".join(tokens)) for score, tokens in zip(r.scores, r.hypotheses)] for r in results]

    def close(self):
        pass


def load_engine(path, decoding, engine=None, int8=False, max_batch=32, threads=0):
    """The engine for ``path`` (``engine``: one of :data:`ENGINES`, default: from what the path holds;
    ``threads``: its intra-op threads, 0: its default)."""
    found = engine_of(path, int8)
    if found in EXPORT_ENGINES and engine in EXPORT_ENGINES:  # an export folder: either engine, as asked
        found = engine
    if engine and engine != found:
        raise ModelLoadError(f"model {path}: engine {engine} asked, but it is a {found} model")
    if found in EXPORT_ENGINES:
        return ExportEngine(path, decoding, found, int8, max_batch, threads)
    classes = {"pytorch": PyTorchEngine, "ct2": CTranslate2Engine}
    return classes[found](path, decoding, int8, max_batch, threads)

"""Which models a server holds: one ``-model``, or OpenNMT-py's ``conf.json`` model list (``-config``).

``conf.json`` as ``onmt_server`` reads it::

    {"models_root": "./available_models",
     "models": [{"id": 100, "model": "student64_relu.pt", "opt": {"beam_size": 5},
                 "corpus": "data/multi30k"}]}

``model`` is relative to ``models_root`` (itself relative to the working folder, as in OpenNMT-py);
``opt`` holds decoding options (:class:`onmt_lma.deploy.decoding.Decoding`'s fields, as ``onmt_translate``
names them), ``threads`` (the engine's intra-op threads) and ``gpu`` (only -1); ``corpus``
is the prepared corpus whose steps turn raw text into the model's tokens (default: the corpus the
checkpoint was trained with); ``engine`` (``pytorch``, ``native``, ``onnx``, ``ct2``) and ``int8`` are optional.
OpenNMT-py's ``timeout``, ``on_timeout`` and ``load`` are accepted and have no effect (every model is
loaded at start and stays loaded); ``tokenizer`` and ensembles are refused with the reason.
"""

import dataclasses
import json
from pathlib import Path

from onmt_lma.base.errors import UserError
from onmt_lma.deploy.decoding import Decoding, DecodingError
from onmt_lma.serve.engines import ENGINES

MODEL_KEYS = {"id", "model", "models", "opt", "corpus", "engine", "int8", "name", "timeout", "on_timeout", "load",
              "tokenizer"}


class ServerConfigError(UserError, ValueError):
    """A model list or option a server cannot start with; the message names the file and entry."""


@dataclasses.dataclass
class ModelSpec:
    model_id: object
    path: Path
    decoding: Decoding
    corpus: Path = None  # None: the checkpoint's own prepared corpus
    engine: str = None  # None: from what the path holds
    int8: bool = False
    threads: int = 0  # the engine's intra-op threads; 0: its default


def _decoding_and_threads(opt, defaults, where):
    """A model's ``opt``: its :class:`Decoding` over the command line's, and its threads."""
    if not isinstance(opt, dict):
        raise ServerConfigError(f"{where}: opt must be an object of decoding options, got {opt!r}")
    opt = dict(opt)
    if opt.pop("gpu", -1) not in (-1, None):
        raise ServerConfigError(f"{where}: opt gpu: onmt_lma_server translates on the CPU (-1)")
    opt.pop("batch_size", None)  # OpenNMT-py's translation batch: the server's -max_batch_size batches requests
    threads = opt.pop("threads", defaults.threads)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ServerConfigError(f"{where}: opt threads {threads!r}: expected an integer >= 0")
    try:
        return Decoding.from_dict(opt, f"{where}: opt", defaults.decoding), threads
    except DecodingError as error:
        raise ServerConfigError(str(error)) from None


def load_conf(path, defaults):
    """The :class:`ModelSpec` list of a ``conf.json`` file (``defaults``: a spec of the command line's decoding
    and threads)."""
    try:
        conf = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ServerConfigError(f"-config {path}: cannot read it ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ServerConfigError(f"-config {path}: not JSON ({error})") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("models"), list) or not conf["models"]:
        raise ServerConfigError(f"-config {path}: expected {{\"models_root\": ..., \"models\": [{{\"id\": ..., "
                                "\"model\": ...}}, ...]}} with at least one model")
    root = Path(conf.get("models_root", "."))
    specs, seen = [], set()
    for number, entry in enumerate(conf["models"], 1):
        where = f"-config {path}, model {number}"
        if not isinstance(entry, dict):
            raise ServerConfigError(f"{where}: expected an object, got {entry!r}")
        unknown = set(entry) - MODEL_KEYS
        if unknown:
            raise ServerConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(MODEL_KEYS)})")
        if "tokenizer" in entry:
            raise ServerConfigError(f"{where}: 'tokenizer': onmt_lma_server applies the prepared corpus's own steps "
                                    "(Moses, SentencePiece); name it with 'corpus' instead")
        model = entry.get("model", entry.get("models"))
        if isinstance(model, list):
            if len(model) != 1:
                raise ServerConfigError(f"{where}: an ensemble of {len(model)} models is not served; give one")
            model = model[0]
        if not isinstance(model, str):
            raise ServerConfigError(f"{where}: 'model' must name a checkpoint, export or CTranslate2 folder")
        model_id = entry.get("id", number)
        if model_id in seen:
            raise ServerConfigError(f"{where}: id {model_id!r} is given twice")
        seen.add(model_id)
        engine = entry.get("engine")
        if engine is not None and engine not in ENGINES:
            raise ServerConfigError(f"{where}: engine {engine!r}: expected one of {', '.join(ENGINES)}")
        decoding, threads = _decoding_and_threads(entry.get("opt") or {}, defaults, where)
        specs.append(ModelSpec(model_id, root / model, decoding, Path(entry["corpus"]) if entry.get("corpus") else None,
                               engine, bool(entry.get("int8")), threads))
    return specs

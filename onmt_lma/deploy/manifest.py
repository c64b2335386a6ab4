"""An ``onmt_lma_export`` folder's ``manifest.json``, read once and checked: what every engine and command
that opens an export folder trusts about it.

A manifest that is not JSON (truncated, hand-edited), lacks a field or gives it the wrong type, or names a
file outside its folder (an absolute path, ``..``, a sub-folder) is a one-line :class:`ExportError`; no
reader indexes a raw manifest.
"""

import json
from pathlib import Path

from onmt_lma.base.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 3  # 2: the decoder step's top-k outputs; 3: per-layer caches, (n, dim) rows, memory_bias

#: the fields every reader relies on, and the JSON types they must have
REQUIRED = {"format": int, "checkpoint": str, "checkpoint_sha256": str, "activation": str, "hidden_size": int,
            "layers": int, "heads": int, "max_positions": int, "int8": bool, "special": dict, "files": dict}
#: the special token ids of ``special``
SPECIAL = ("pad", "bos", "eos", "unk", "src_pad", "src_unk")
#: the files a manifest must list (both engines read the vocabularies)
VOCABULARIES = ("src.vocab.json", "tgt.vocab.json")
#: the native engines' weights: the torch-free runtime's (float32), the torch engine's (float32, run as int8 with
#: -precision int8) and a low-bit checkpoint's packed codes (the torch engine's)
RUNTIME_FILE, WEIGHTS_FILE, LOW_BIT_FILE = "native.safetensors", "native.pt", "native.low_bit.pt"


class ExportError(UserError, ValueError):
    """A model or folder that cannot be exported or used as asked."""


def is_export_folder(folder):
    """Whether ``folder`` holds an export's manifest (of any format): what ``-force`` may replace."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format" in manifest and "checkpoint_sha256" in manifest


def plain_name(name):
    """Whether ``name`` is one file directly inside its folder (no separator, not ``.``/``..``, not absolute)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def read_manifest(folder):
    """The checked manifest of the export ``folder``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder}: no {MANIFEST} there; make the folder with onmt_lma_export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ExportError(f"{path}: not a readable manifest ({type(error).__name__}: {str(error)[:120]}); "
                          "export the checkpoint again") from None
    if not isinstance(manifest, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(manifest).__name__}; export the checkpoint again")
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{folder}: export format {manifest.get('format')!r}, this onmt-lma reads {FORMAT}; "
                          "export the checkpoint again with this version")
    for key, kind in REQUIRED.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ExportError(f"{path}: {key!r} is {value!r:.60}, expected {kind.__name__}; the manifest was changed "
                              "by hand or damaged: export the checkpoint again")
    for key in SPECIAL:
        value = manifest["special"].get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ExportError(f"{path}: special id {key!r} is {value!r:.60}, expected an integer >= 0; export the "
                              "checkpoint again")
    for name, digest in manifest["files"].items():
        if not plain_name(name):
            raise ExportError(f"{path}: lists the file {name!r:.80}, which is not a file of this folder; refusing "
                              "to read outside it (export the checkpoint again)")
        if not isinstance(digest, str):
            raise ExportError(f"{path}: the sha256 of {name} is {digest!r:.60}, expected a string")
    missing = [name for name in VOCABULARIES if name not in manifest["files"]]
    if missing:
        raise ExportError(f"{path}: does not list {', '.join(missing)}; export the checkpoint again")
    if not plain_name(manifest["checkpoint"]):
        raise ExportError(f"{path}: names the checkpoint {manifest['checkpoint']!r:.80}, not a file name; export "
                          "the checkpoint again")
    return manifest


def read_vocabulary(path):
    """An export's ``*.vocab.json``: a JSON list of token strings."""
    try:
        tokens = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ExportError(f"{path}: not a readable vocabulary ({type(error).__name__}); export the checkpoint "
                          "again") from None
    if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
        raise ExportError(f"{path}: expected a JSON list of token strings; export the checkpoint again")
    return tokens


def cache_names(layers):
    """The ONNX decoder step's per-layer caches: (cross-attention inputs, self-attention inputs, the
    self-attention outputs one position longer)."""
    cross = [f"cross_{kind}_{i}" for i in range(layers) for kind in ("keys", "values")]
    own = [f"self_{kind}_{i}" for i in range(layers) for kind in ("keys", "values")]
    return cross, own, [f"new_{name}" for name in own]

"""What a result records besides its scores: the model's facts (activation, size, steps, learned LMA lines),
the inputs it was made from (sha256), portable paths and the commit.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import json
import os
import subprocess
from pathlib import Path

from onmt.utils.logging import logger

from onmt_lma.base.checkpoint import load as load_checkpoint
from onmt_lma.base.files import sha256_of
from onmt_lma.deploy.manifest import read_manifest
from onmt_lma.deploy.manifest import LOW_BIT_FILE, RUNTIME_FILE, WEIGHTS_FILE
from onmt_lma.model.lma import continuous_intercepts
from onmt_lma.model.quantized_checkpoint import dequantize_checkpoint, quantization_of
from onmt_lma.training.average import checkpoint_steps

REPO = Path(__file__).resolve().parents[2]


def _git_commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def model_facts(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    quantized = quantization_of(ckpt).label
    dequantize_checkpoint(ckpt)  # parameters counted as the model has them
    opt = ckpt["opt"]
    steps = checkpoint_steps(ckpt)
    tensors = list(ckpt["model"].values()) + list((ckpt.get("generator") or {}).values())
    learned_lma = learned_lma_layers(ckpt["model"]) if opt.pos_ffn_activation_fn == "lma" else None
    params = sum(t.numel() for t in tensors if t.is_floating_point())
    return {
        "engine": "pytorch",
        "activation": opt.pos_ffn_activation_fn,
        "lma_segments": getattr(opt, "lma_segments", None),
        "lma_continuous": getattr(opt, "lma_continuous", False),
        "lma_lr_scale": getattr(opt, "lma_lr_scale", 1.0),
        "learning_rate": getattr(opt, "learning_rate", None),
        "hidden_size": opt.hidden_size,
        "enc_layers": opt.enc_layers,
        "dec_layers": opt.dec_layers,
        "transformer_ff": opt.transformer_ff,
        "seed": getattr(opt, "seed", None),
        "kd_teacher": getattr(opt, "kd_teacher", None),
        "train_steps": max(steps) if steps else None,
        "averaged_steps": steps if len(steps) > 1 else None,
        "learned_lma": learned_lma,
        "quantized": quantized,
    }, params


INT8_KINDS = {"onnx": "ONNX Runtime", "native": "PyTorch"}  # whose dynamically quantized int8 an engine runs


def export_facts(folder, engine, int8):
    """:func:`model_facts` of an onmt_lma_export folder: its checkpoint's where the folder's manifest names one
    beside it (by name and sha256), else what the manifest records (``params`` then None)."""
    manifest = read_manifest(folder)
    checkpoint = Path(folder).parent / manifest["checkpoint"]
    if checkpoint.is_file() and sha256_of(checkpoint) == manifest["checkpoint_sha256"]:
        model, params = model_facts(checkpoint)
    else:
        model = {"activation": manifest["activation"], "hidden_size": manifest["hidden_size"],
                 "dec_layers": manifest["layers"], "kd_teacher": None, "quantized": None}
        params = None
    model.update(engine=engine, exported_from=manifest["checkpoint"],
                 quantized=(f"int8 ({INT8_KINDS[engine]} dynamic)" if int8 else model["quantized"]))
    return model, params


def export_size_mb(folder, engine, int8):
    """What a deployment of ``folder`` on ``engine`` ships: the graphs (onnx) or the weights (native) it
    loads, the vocabularies and the manifest."""
    suffix = ".int8.onnx" if int8 else ".onnx"
    # the one file the native engine loads: the runtime's float32, the torch engine's for int8, or the codes
    present = [name for name in ((WEIGHTS_FILE,) if int8 else (RUNTIME_FILE, WEIGHTS_FILE)) + (LOW_BIT_FILE,)
               if (Path(folder) / name).is_file()]
    native = present[:1]
    loaded = native if engine == "native" else [f"encoder{suffix}", f"decoder_step{suffix}"]
    names = loaded + ["src.vocab.json", "tgt.vocab.json", "manifest.json"]
    return sum((Path(folder) / name).stat().st_size for name in names) / 2**20


def learned_lma_layers(state):
    """Each LMA layer's learned lines and running statistics, by module name.

    ``{"encoder.transformer.0.feed_forward.activation": {"alpha": [...],
    "beta": [...], "running_mean": m, "running_std": s}, ...}``: what the
    layer computes in evaluation mode (the paper's Eq. 2 with the running
    statistics).  A continuous LMA's intercepts are derived from its slopes.
    """
    layers = {}
    for key in state:
        if key.endswith(".activation.alpha"):
            name = key[: -len(".alpha")]
            alpha = state[f"{name}.alpha"].double()
            mean, std = state[f"{name}.running_mean"].double(), state[f"{name}.running_std"].double()
            beta = state.get(f"{name}.beta")
            beta = continuous_intercepts(alpha, mean, std) if beta is None else beta.double()
            layers[name] = {"alpha": alpha.tolist(), "beta": beta.tolist(),
                            "running_mean": mean.item(), "running_std": std.item()}
    return layers


def portable(path, base=None):
    """``path`` relative to ``base`` (default: the current directory): no machine's absolute paths in results."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base or os.curdir))


def evaluation_inputs(checkpoint, test):
    """What a result depends on: the checkpoint's and the test files' sha256, the prepared corpus's key."""
    manifest = json.loads((test.corpus_dir / "manifest.json").read_text())
    model = ({"export_sha256": sha256_of(Path(checkpoint) / "manifest.json")} if Path(checkpoint).is_dir()
             else {"checkpoint_sha256": sha256_of(checkpoint)})  # an export's manifest holds its files' sha256
    inputs = {**model, "corpus_key": manifest.get("key")}
    inputs.update({f"{role}_sha256": sha256_of(path) for role, path in test.files.items() if role != "corpus"})
    return inputs


def kept_result(out, checkpoint, test, decoding):
    """True when ``out`` holds a result of these very inputs and ``decoding`` (or one too old to say): keep it."""
    result = json.loads(Path(out).read_text())
    recorded = result.get("inputs")
    if recorded is None:
        return True
    now = evaluation_inputs(checkpoint, test)
    changed = [key for key in now if recorded.get(key) != now[key]]
    changed += ["decoding"] * (result.get("decoding", decoding.as_dict()) != decoding.as_dict())
    if changed:
        logger.info("%s was made from other inputs (%s changed): evaluating again", out, ", ".join(changed))
        return False
    return True

"""The mean of checkpoints (LMA's running statistics too, in float64), or one checkpoint stripped for
release (float16, no optimizer state, no absolute paths): ``onmt_lma_average_models``, :mod:`onmt_lma.bin.average_models`.
"""

import argparse
from pathlib import Path

import torch

from onmt_lma.base.checkpoint import load
from onmt_lma.base.errors import UserError


class AverageError(UserError, ValueError):
    """Checkpoints that cannot be averaged together."""


def _same_architecture(first, other, path):
    for key in ("model", "generator"):
        names, other_names = set(first[key] or {}), set(other[key] or {})
        if names != other_names:
            raise AverageError(f"{path}: its {key} tensors differ from the first checkpoint's "
                               f"({sorted(names ^ other_names)[:3]} ...)")
        for name in names:
            if first[key][name].shape != other[key][name].shape:
                raise AverageError(f"{path}: {key} tensor {name} has shape {tuple(other[key][name].shape)}, "
                                   f"the first checkpoint's {tuple(first[key][name].shape)}")
    if first["vocab"] != other["vocab"]:
        raise AverageError(f"{path}: its vocabularies differ from the first checkpoint's")
    for option in ("pos_ffn_activation_fn", "lma_segments", "lma_continuous", "hidden_size"):
        if getattr(first["opt"], option, None) != getattr(other["opt"], option, None):
            raise AverageError(f"{path}: -{option} {getattr(other['opt'], option, None)} differs from the "
                               f"first checkpoint's {getattr(first['opt'], option, None)}")


def checkpoint_steps(checkpoint):
    """The training step(s) a checkpoint holds: its own, or those it was averaged from."""
    if checkpoint.get("optim"):
        return [checkpoint["optim"]["training_step"] - 1]
    return list((checkpoint.get("onmt_lma") or {}).get("steps") or [])


def _without_absolute_paths(value):
    if isinstance(value, str) and value.startswith("/"):
        return "/".join(Path(value).parts[-2:])
    if isinstance(value, dict):
        return {k: _without_absolute_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_absolute_paths(v) for v in value]
    return value


def forget_paths(opt):
    """A copy of checkpoint options with every absolute path cut to its last two parts."""
    return argparse.Namespace(**{k: _without_absolute_paths(v) for k, v in vars(opt).items()})


def average(paths, float16=False, release=False):
    """The averaged (or, for one path, stripped) checkpoint as a dict (``release``: float16, no paths)."""
    float16 = float16 or release
    if not paths:
        raise AverageError("no checkpoints given")
    sums, first, steps = {}, None, []
    for path in paths:
        checkpoint = load(path)
        if first is None:
            first = checkpoint
        else:
            _same_architecture(first, checkpoint, path)
        steps.extend(checkpoint_steps(checkpoint))
        for key in ("model", "generator"):
            for name, tensor in (checkpoint[key] or {}).items():
                if tensor.is_floating_point():
                    total = sums.setdefault((key, name), torch.zeros(tensor.shape, dtype=torch.float64))
                    total += tensor.double()
    opt = forget_paths(first["opt"]) if release else first["opt"]
    result = {"vocab": first["vocab"], "opt": opt, "optim": None, "model": {}, "generator": {}}
    for key in ("model", "generator"):
        for name, tensor in (first[key] or {}).items():
            if tensor.is_floating_point():
                dtype = torch.float16 if float16 else tensor.dtype
                tensor = (sums[(key, name)] / len(paths)).to(dtype)
            result[key][name] = tensor.contiguous()
    result["onmt_lma"] = {"averaged": [Path(p).name for p in paths], "steps": steps,
                          "float16": bool(float16)}
    return result

"""The plugin's activation modules in OpenNMT-py's feed-forward blocks: one module per block, their start
states, their parameters, and the model options a translation must not contradict.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)

import copy
import weakref

import torch.nn as nn
from onmt.modules.position_ffn import ACTIVATION_FUNCTIONS, PositionwiseFeedForward

from onmt_lma.model.activations import build_activation
from onmt_lma.model.options import MODEL_CHECKED_AT_TRANSLATION, OptionMismatchError


#: OpenNMT-py's own activations (functions it applies itself); every other registered one is built per block
ONMT_ACTIVATIONS = frozenset(ACTIVATION_FUNCTIONS)


class _BuiltPerBlock:
    """Placeholder in ``ACTIVATION_FUNCTIONS``: the real module is attached per block."""

    def __init__(self, name):
        self.name = name

    def __call__(self, x):
        raise RuntimeError(
            f"activation {self.name!r} was not attached to this feed-forward block: "
            "build models with onmt_lma installed (import onmt_lma.training.plugin)"
        )

    def __repr__(self):
        return f"<{self.name}: built per feed-forward block by onmt_lma>"


def activation_modules(model):
    """The plugin's activation modules of ``model``, one per feed-forward block."""
    return [
        block.activation
        for block in model.modules()
        if isinstance(block, PositionwiseFeedForward) and isinstance(block.activation, nn.Module)
    ]


#: each attached activation's state as its factory made it (restored after OpenNMT-py's -param_init)
START_STATES = weakref.WeakKeyDictionary()


def attach_activations(model, model_opt):
    """Give every feed-forward block of ``model`` its own activation module."""
    name = model_opt.pos_ffn_activation_fn
    if name in ONMT_ACTIVATIONS:
        return model
    for block in model.modules():
        if isinstance(block, PositionwiseFeedForward):
            block.activation = build_activation(
                name,
                units=block.w_1.out_features,
                segments=model_opt.lma_segments,
                momentum=model_opt.lma_momentum,
                continuous=getattr(model_opt, "lma_continuous", False),
            )
            START_STATES[block.activation] = copy.deepcopy(block.activation.state_dict())
    return model


def activation_parameters(model):
    """The parameters of the plugin's activation modules (LMA's alpha/beta, ...)."""
    return [p for activation in activation_modules(model) for p in activation.parameters()]


def check_translation_opts(opt, model_opt, model_path):
    """Refuse model options given at translation that differ from the checkpoint's."""
    for name in MODEL_CHECKED_AT_TRANSLATION:
        requested = getattr(opt, name, None)
        trained = getattr(model_opt, name, None)
        if requested is not None and requested != trained:
            raise OptionMismatchError(
                f"-{name} {requested} does not match checkpoint {model_path}, trained with "
                f"-{name} {trained}; the model is rebuilt from the checkpoint's options, "
                f"so drop -{name} or give the trained value"
            )

"""The model options of the activations (saved in every checkpoint; checked again at translation).
"""

from onmt_lma.base.errors import UserError
from onmt_lma.base.opts import float_type, int_type
from onmt_lma.model.lma import DEFAULT_MOMENTUM, DEFAULT_SEGMENTS


#: ``-lma_segments``: an integer >= 2, checked at parse time.
segments_type = int_type("an integer >= 2", lambda k: k >= 2)


#: ``-lma_momentum``: a float in [0, 1), checked at parse time.
momentum_type = float_type("a number in [0, 1)", lambda m: 0.0 <= m < 1.0)


#: ``-lma_lr_scale``: a finite float >= 0, checked at parse time.
lr_scale_type = float_type("a number >= 0", lambda s: 0.0 <= s < float("inf"))


def add_lma_opts(parser, for_translation=False):
    """Options of the LMA / APLU activations (model options, saved in checkpoints).

    At training time they default to the paper's values.  At translation time
    the model is rebuilt from the checkpoint's options, so they default to
    ``None`` and, when given, must agree with the checkpoint.
    """
    group = parser.add_argument_group("LMA activation (onmt-lma)")
    if for_translation:
        note = " Optional at translation: the checkpoint's value is used; a different one is an error."
        default_segments = default_momentum = None
    else:
        note = ""
        default_segments, default_momentum = DEFAULT_SEGMENTS, DEFAULT_MOMENTUM
    group.add(
        "--lma_segments",
        "-lma_segments",
        type=segments_type,
        default=default_segments,
        help="Number of linear segments of -pos_ffn_activation_fn lma (and of aplu,"
        " which then has lma_segments - 2 hinges). Paper default: 8." + note,
    )
    group.add(
        "--lma_momentum",
        "-lma_momentum",
        type=momentum_type,
        default=default_momentum,
        help="LMA running statistics: running = momentum * running + (1 - momentum)"
        " * batch, used in evaluation mode. In [0, 1). Paper default: 0.99." + note,
    )
    if not for_translation:
        group.add(
            "--lma_continuous",
            "-lma_continuous",
            action="store_true",
            help="Not the paper's LMA: a variant whose intercepts follow from the slopes so that the"
            " function is continuous at every cut point (only the k slopes learn).",
        )
        group.add(
            "--lma_lr_scale",
            "-lma_lr_scale",
            type=lr_scale_type,
            default=1.0,
            help="Learning rate of the activations' own parameters (LMA's alpha and beta; PReLU's,"
            " Swish's, APLU's) relative to the model's, as their own optimizer parameter group;"
            " 0 freezes them at their start. Paper: 1.",
        )
    if for_translation:
        group.add(
            "--pos_ffn_activation_fn",
            "-pos_ffn_activation_fn",
            type=str,
            default=None,
            help="Optional check: the activation the checkpoint must have been trained with.",
        )
    return group


class OptionMismatchError(UserError, ValueError):
    """A model option given at translation that differs from the checkpoint's."""


#: translation-time options that must match the checkpoint's model options
MODEL_CHECKED_AT_TRANSLATION = ("pos_ffn_activation_fn", "lma_segments", "lma_momentum")

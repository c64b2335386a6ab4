"""The plugin's command-line / YAML options, declared next to what they configure,
and the parser every ``onmt_lma_*`` command uses (:class:`CommandParser`)."""

import argparse
import difflib
import functools
import importlib
import sys

from onmt_lma.activations import DEFAULT_MOMENTUM, DEFAULT_SEGMENTS


def number_type(convert, expected, accept):
    """An argparse type: ``convert(value)`` for which ``accept`` holds, else ``expected ..., got ...``."""

    def parse(value):
        try:
            number = convert(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not accept(number):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


def int_type(expected, accept):
    return number_type(int, expected, accept)


def float_type(expected, accept):
    return number_type(float, expected, accept)


#: ``-lma_segments``: an integer >= 2, checked at parse time.
segments_type = int_type("an integer >= 2", lambda k: k >= 2)
#: ``-lma_momentum``: a float in [0, 1), checked at parse time.
momentum_type = float_type("a number in [0, 1)", lambda m: 0.0 <= m < 1.0)
#: ``-lma_lr_scale``: a finite float >= 0, checked at parse time.
lr_scale_type = float_type("a number >= 0", lambda s: 0.0 <= s < float("inf"))


def refuse_abbreviations(parser):
    """Make ``parser`` take only whole option names: ``-lma_seg 3`` is a misspelling, not ``-lma_segments 3``.

    ``allow_abbrev=False`` alone is not enough before Python 3.12: argparse still
    expands prefixes of single-dash options (all of OpenNMT-py's), so the prefix
    search itself is turned off.  Exact names and ``-name=value`` still work.
    """
    parser.allow_abbrev = False
    parser._get_option_tuples = lambda option_string: []
    return parser


#: every ``onmt_lma_*`` command and the function that builds its parser (pyproject's scripts match it)
COMMAND_PARSERS = {
    "onmt_lma_train": "onmt_lma.bin.train:get_parser",
    "onmt_lma_translate": "onmt_lma.bin.translate:get_parser",
    "onmt_lma_build_vocab": "onmt_lma.bin.build_vocab:get_parser",
    "onmt_lma_distill_data": "onmt_lma.bin.distill_data:get_parser",
    "onmt_lma_teacher_cache": "onmt_lma.bin.teacher_cache:get_parser",
    "onmt_lma_quantize": "onmt_lma.quantize:get_parser",
    "onmt_lma_export": "onmt_lma.export:get_parser",
    "onmt_lma_convert_ct2": "onmt_lma.ct2:get_parser",
    "onmt_lma_evaluate": "onmt_lma.evaluate:get_parser",
    "onmt_lma_average_models": "onmt_lma.average:get_parser",
    "onmt_lma_recalibrate": "onmt_lma.recalibrate:get_parser",
}


def command_parser(name):
    module, function = COMMAND_PARSERS[name].split(":")
    return getattr(importlib.import_module(module), function)()


@functools.cache
def shared_config_keys():
    """The YAML keys any ``onmt_lma_*`` command knows: one config file serves them all."""
    return frozenset(key for name in COMMAND_PARSERS for key in command_parser(name).own_config_keys())


def _nearest(word, candidates):
    near = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return near[0] if near else None


def _make_command_parser():
    from onmt.utils.parse import ArgumentParser  # OpenNMT-py's (configargparse, YAML configs)

    class _CommandParser(ArgumentParser):
        """OpenNMT-py's parser with the rules of every ``onmt_lma_*`` command.

        * a ``-config`` YAML may hold the options of any ``onmt_lma_*`` command
          (one file for build_vocab, train, translate, evaluate, as OpenNMT-py's
          quickstart); keys of other commands are ignored, a key of none is an
          error naming the file and the nearest known option;
        * on the command line only the command's own options, whole names only
          (no prefix expansion), with the nearest one suggested.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._ignore_unknown_config_file_keys = True
            refuse_abbreviations(self)

        def fail(self, message):
            """``prog: error: message``, exit 2 (without OpenNMT-py's usage text: some 200 lines)."""
            self.exit(2, f"{self.prog}: error: {message}\n")

        def own_config_keys(self):
            return {key.lstrip("-") for action in self._actions for key in self.get_possible_config_keys(action)}

        def check_config_files(self, args):
            known = shared_config_keys()
            for stream, label in self._open_config_files(args):
                with stream:
                    items = self._config_file_parser.parse(stream)
                for key in items:
                    if key not in known:
                        near = _nearest(key, known)
                        self.fail(f"unknown option {key!r} in {label}"
                                   + (f"; did you mean {near!r}?" if near else
                                      ": it is an option of no onmt_lma_* command"))

        def parse_known_args(self, args=None, namespace=None, **kwargs):
            args = list(sys.argv[1:] if args is None else args)
            if not ("-h" in args or "--help" in args):
                self.check_config_files(args)
            return super().parse_known_args(args, namespace, **kwargs)

        def parse_args(self, args=None, namespace=None, **kwargs):
            opt, unknown = self.parse_known_args(args, namespace, **kwargs)
            if unknown:
                own = {s for action in self._actions for s in action.option_strings}
                near = [n for word in unknown if word.startswith("-") and (n := _nearest(word.split("=")[0], own))]
                self.fail("unrecognized arguments: " + " ".join(unknown)
                           + (f"; did you mean {', '.join(near)}?" if near else ""))
            return opt

    return _CommandParser


def CommandParser(*args, **kwargs):  # noqa: N802 (a class, built when onmt is importable)
    """An ``onmt_lma_*`` command's parser (see ``_CommandParser``); has ``-config`` when asked."""
    return _command_parser_class()(*args, **kwargs)


@functools.cache
def _command_parser_class():
    return _make_command_parser()


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


class OptionMismatchError(ValueError):
    """A model option given at translation that differs from the checkpoint's."""


#: translation-time options that must match the checkpoint's model options
MODEL_CHECKED_AT_TRANSLATION = ("pos_ffn_activation_fn", "lma_segments", "lma_momentum")

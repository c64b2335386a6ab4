"""The parser every ``onmt_lma_*`` command uses (:func:`CommandParser`), and the one list of commands.

Importing it installs the plugin (before any command module imports onmt).
"""

import difflib
import functools
import importlib
import sys

from onmt_lma.training import plugin  # noqa: F401  (first: installs the plugin before onmt is used)
from onmt_lma.base.errors import user_errors_exit  # noqa: F401  (re-exported for the commands)
from onmt_lma.base.opts import refuse_abbreviations


#: every ``onmt_lma_*`` command and the function that builds its parser (pyproject's scripts match it)
COMMAND_PARSERS = {
    "onmt_lma_train": "onmt_lma.bin.train:get_parser",
    "onmt_lma_translate": "onmt_lma.bin.translate:get_parser",
    "onmt_lma_build_vocab": "onmt_lma.bin.build_vocab:get_parser",
    "onmt_lma_distill_data": "onmt_lma.bin.distill_data:get_parser",
    "onmt_lma_teacher_cache": "onmt_lma.bin.teacher_cache:get_parser",
    "onmt_lma_quantize": "onmt_lma.bin.quantize:get_parser",
    "onmt_lma_export": "onmt_lma.bin.export:get_parser",
    "onmt_lma_convert_ct2": "onmt_lma.bin.convert_ct2:get_parser",
    "onmt_lma_evaluate": "onmt_lma.bin.evaluate:get_parser",
    "onmt_lma_average_models": "onmt_lma.bin.average_models:get_parser",
    "onmt_lma_recalibrate": "onmt_lma.bin.recalibrate:get_parser",
    "onmt_lma_server": "onmt_lma.bin.server:get_parser",
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

"""What the commands that run exports share without PyTorch or OpenNMT-py (``onmt_lma_translate -engine
native|onnx``, ``onmt_lma_server``): a parser with the same rules as :mod:`onmt_lma.bin.parser`'s (one
``-config`` YAML for every command; whole option names; a YAML key of no command is an error naming the file
and the nearest option) and OpenNMT-py's log format.

The keys every ``onmt_lma_*`` command knows are ``config_keys.json``, written from the full parsers
(``tests/test_shared_config.py`` checks that they are the same), so that no OpenNMT-py import is needed to read
a YAML.
"""

import difflib
import json
import logging
import sys
from pathlib import Path

import configargparse

from onmt_lma.base.opts import refuse_abbreviations

CONFIG_KEYS = Path(__file__).with_name("config_keys.json")


def known_config_keys():
    return frozenset(json.loads(CONFIG_KEYS.read_text(encoding="utf-8")))


class LightParser(configargparse.ArgumentParser):
    """configargparse with YAML configs, as OpenNMT-py's parser, and the rules of every ``onmt_lma_*`` command."""

    def __init__(self, **kwargs):
        super().__init__(config_file_parser_class=configargparse.YAMLConfigFileParser,
                         ignore_unknown_config_file_keys=True, **kwargs)
        self.add("-config", "--config", required=False, is_config_file_arg=True,
                 help="a YAML file of options (those of other onmt_lma_* commands are ignored)")
        refuse_abbreviations(self)

    def fail(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def own_config_keys(self):
        return {key.lstrip("-") for action in self._actions for key in self.get_possible_config_keys(action)}

    def error(self, message):
        self.fail(message)

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if not ("-h" in args or "--help" in args):
            known = known_config_keys()
            for stream, label in self._open_config_files(args):
                with stream:
                    items = self._config_file_parser.parse(stream)
                for key in items:
                    if key not in known:
                        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                        self.fail(f"unknown option {key!r} in {label}" + (f"; did you mean {near[0]!r}?" if near else
                                                                           ": it is an option of no onmt_lma_* command"))
        opt, unknown = self.parse_known_args(args, namespace)
        if unknown:
            own = {s for action in self._actions for s in action.option_strings}
            near = [n[0] for word in unknown if word.startswith("-")
                    and (n := difflib.get_close_matches(word.split("=")[0], sorted(own), n=1, cutoff=0.6))]
            self.fail("unrecognized arguments: " + " ".join(unknown) + (f"; did you mean {', '.join(near)}?" if near
                                                                         else ""))
        return opt


def init_logger(log_file=""):
    """OpenNMT-py's log lines (``[time LEVEL] message``) on stderr, and in ``log_file`` where given."""
    handlers = [logging.StreamHandler()] + ([logging.FileHandler(log_file)] if log_file else [])
    formatter = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s")
    for name in ("onmt", "onmt_lma"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        for handler in handlers:
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    return logging.getLogger("onmt")

"""Argument types that check their value at parse time, and whole-name options (no prefix expansion).
"""

import argparse


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


def refuse_abbreviations(parser):
    """Make ``parser`` take only whole option names: ``-lma_seg 3`` is a misspelling, not ``-lma_segments 3``.

    ``allow_abbrev=False`` alone is not enough before Python 3.12: argparse still
    expands prefixes of single-dash options (all of OpenNMT-py's), so the prefix
    search itself is turned off.  Exact names and ``-name=value`` still work.
    """
    parser.allow_abbrev = False
    parser._get_option_tuples = lambda option_string: []
    return parser

"""``onmt_lma_translate``'s entry: an ``onmt_lma_export`` folder (``-engine native`` or ``onnx``) is translated
here, without importing PyTorch or OpenNMT-py (a runtime-only install has neither); a checkpoint goes to
:mod:`onmt_lma.bin.translate`, OpenNMT-py's translator with the plugin.

The options are ``onmt_translate``'s of the same names that the export engines implement (the decoding
options of :class:`~onmt_lma.deploy.decoding.Decoding`, ``-batch_size``, ``-batch_type``, ``-precision``) and
onmt-lma's (``-threads``, ``-raw_text``); the output is line-aligned with the source (an empty line gets
``-n_best`` empty lines) and written under a temporary name, renamed when complete.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from onmt_lma.base.errors import UserError, user_errors_exit
from onmt_lma.base.files import refuse_overwriting
from onmt_lma.bin.light import LightParser
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.decoding import add_options as add_decoding_options
from onmt_lma.deploy.engines import ENGINES, UNIMPLEMENTED, open_export, refuse_unimplemented
from onmt_lma.deploy.text import text_steps


class TranslationInputError(UserError, ValueError):
    """Translation inputs or outputs that cannot be used (reported as one line)."""


def get_parser():
    parser = LightParser(prog="onmt_lma_translate", description="onmt_lma_translate -engine native|onnx: an "
                         "onmt_lma_export folder, without PyTorch")
    parser.add("--model", "-model", dest="models", nargs="+", required=True, help="the onmt_lma_export folder")
    parser.add("--src", "-src", required=True, help="source text, one sentence a line (tokenized, or raw with "
               "-raw_text)")
    parser.add("--output", "-output", default="pred.txt", help="the translations, -n_best lines a source line")
    parser.add("--engine", "-engine", choices=ENGINES, required=True,
               help="native: the compiled engine (the fastest); onnx: ONNX Runtime on the export's graphs")
    parser.add("--batch_size", "-batch_size", type=int, default=30, help="sentences (or tokens) a batch")
    parser.add("--batch_type", "-batch_type", choices=("sents", "tokens"), default="sents")
    parser.add("--precision", "-precision", choices=("", "fp32", "int8"), default="",
               help="int8: the ONNX engine's int8 graphs, the native engine's int8 products")
    parser.add("--threads", "-threads", "--onnx_threads", "-onnx_threads", dest="threads", type=int, default=0,
               help="the engine's intra-op threads (0: its default, one per core)")
    parser.add("--raw_text", "-raw_text", action="store_true",
               help="-src is raw text and -output plain text: the export's text steps are applied and undone")
    parser.add("--log_file", "-log_file", default="", help="(accepted for onmt_translate's YAML; unused)")
    add_decoding_options(parser.add_argument_group("Decoding (onmt_translate's options)"))
    for name, unused in UNIMPLEMENTED.items():  # taken, so that refuse_unimplemented names them
        flags, default = (f"--{name}", f"-{name}"), unused[0]
        if isinstance(default, bool):
            parser.add(*flags, action="store_true", help=argparse.SUPPRESS)
        elif isinstance(default, list):
            parser.add(*flags, nargs="+", default=default, help=argparse.SUPPRESS)
        else:
            parser.add(*flags, type=type(default) if default is not None else str, default=default,
                       help=argparse.SUPPRESS)
    return parser


def export_engine_asked(argv):
    """Whether ``argv`` (its command line or ``-config`` YAML) asks for an export engine."""
    probe = LightParser(add_help=False)
    probe.add("--engine", "-engine", default="pytorch")
    opt, _ = probe.parse_known_args(argv)
    return opt.engine in ENGINES


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not export_engine_asked(argv):
        from onmt_lma.bin import translate  # here: a checkpoint needs PyTorch and OpenNMT-py

        return translate.main(argv)
    parser = get_parser()
    opt = parser.parse_args(argv)
    with user_errors_exit(parser):
        translate_export(opt)


def read_lines(path):
    try:
        return Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise TranslationInputError(f"-src {path}: not UTF-8 ({error})") from None


def translate_export(opt):
    """Translate the non-empty source lines, put empty lines back in place; rename when complete."""
    if opt.batch_size < 1:
        raise TranslationInputError(f"-batch_size {opt.batch_size}: expected an integer >= 1")
    refuse_unimplemented(opt)
    decoding = Decoding.from_options(opt)
    if not os.path.isfile(opt.src):
        raise TranslationInputError(f"-src {opt.src}: no such file")
    output = Path(opt.output)
    if not output.parent.is_dir():
        raise TranslationInputError(f"-output {opt.output}: folder {output.parent} does not exist")
    refuse_overwriting(opt.output, {"-src": opt.src, "-model": opt.models[0]})
    translator = open_export(opt.engine, opt.models[0], opt.precision == "int8", opt.threads)
    steps = text_steps(opt.models[0]) if opt.raw_text else None
    sources = read_lines(opt.src)
    if steps is not None:
        sources = [steps.encode(line) if line.split() else "" for line in sources]
    keep = [i for i, line in enumerate(sources) if line.split()]
    found = translator.translate([sources[i] for i in keep], decoding, opt.batch_size, opt.batch_type)
    lines = [[""] * decoding.n_best for _ in sources]
    for i, hypotheses in zip(keep, found):
        lines[i] = [steps.decode(text) if steps else text for _, text in hypotheses]
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=output.parent.resolve(), delete=False,
                                     prefix=f".{output.name}.") as partial:
        partial.write("".join(line + "\n" for group in lines for line in group))
    os.replace(partial.name, output)

"""``onmt_lma_export``: ONNX graphs of a checkpoint, any activation (:mod:`onmt_lma.deploy.export`).

    onmt_lma_export -model CK.pt -output DIR [-int8]
    onmt_lma_export -model CK.q4.pt -output DIR [-bits 4]   # a low-bit checkpoint: packed 4-bit graphs
"""

import os
import sys
import tempfile

import onmt.opts

from onmt_lma.base.opts import int_type
from onmt_lma.bin.parser import CommandParser, user_errors_exit
from onmt_lma.base.files import refuse_overwriting
from onmt_lma.deploy.export import export, runtime_only
from onmt_lma.deploy.manifest import ExportError


def get_parser():
    parser = CommandParser(prog="onmt_lma_export", description="onmt_lma_export: ONNX graphs of a checkpoint")
    onmt.opts.config_opts(parser)
    parser.add("--model", "-model", required=True, help="checkpoint to export (any activation)")
    parser.add("--output", "-output", "-o", required=True, help="folder for the graphs, vocabularies, manifest")
    parser.add("--int8", "-int8", action="store_true", help="also int8 graphs (ONNX Runtime dynamic quantization)")
    parser.add("--force", "-force", action="store_true",
               help="replace an existing export folder -output (never a folder of anything else)")
    parser.add("--corpus", "-corpus", help="the prepared corpus (python -m data_prep) whose text steps the export "
               "carries, for raw text in and out (default: the one the checkpoint was trained on)")
    parser.add("--runtime_only", "-runtime_only", action="store_true",
               help="only what the torch-free runtime reads (native.safetensors, vocabularies, text steps): a "
               "small folder to ship; no ONNX graphs, no int8 or low-bit")
    parser.add("--bits", "-bits", type=int_type("an integer from 2 to 8", lambda b: 2 <= b <= 8),
               help="low-bit graphs, checked: the checkpoint must hold B-bit codes (onmt_lma_quantize -bits B, "
                    "or of a -quant_bits B student); a low-bit checkpoint gives low-bit graphs without it too")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    with user_errors_exit(parser):
        if not os.path.isfile(args.model):
            raise ExportError(f"-model {args.model}: no such checkpoint")
        if args.runtime_only:
            refuse_overwriting(args.output, {"-model": args.model})
            with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.output))) as tmp:
                export(args.model, os.path.join(tmp, "full"), args.int8, args.bits, False, args.corpus)
                manifest = runtime_only(os.path.join(tmp, "full"), args.output, args.force)
        else:
            manifest = export(args.model, args.output, args.int8, args.bits, args.force, args.corpus)
    print(f"{args.output}: " + ", ".join(sorted(manifest["files"])))
    if "text_refused" in manifest:
        print(f"{args.output}: no text steps ({manifest['text_refused']})", file=sys.stderr)


if __name__ == "__main__":
    main()

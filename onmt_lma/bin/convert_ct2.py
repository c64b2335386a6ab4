"""``onmt_lma_convert_ct2``: a ReLU, GELU or SiLU checkpoint as a CTranslate2 model (:mod:`onmt_lma.deploy.ct2`).

    onmt_lma_convert_ct2 -model CK.pt -output DIR [-quantization int8]
"""

from pathlib import Path

import onmt.opts

from onmt_lma.bin.parser import CommandParser, user_errors_exit
from onmt_lma.deploy.ct2 import convert
from onmt_lma.deploy.manifest import ExportError


def get_parser():
    parser = CommandParser(prog="onmt_lma_convert_ct2", description="onmt_lma_convert_ct2: a CTranslate2 model")
    onmt.opts.config_opts(parser)
    parser.add("--model", "-model", required=True, help="checkpoint (relu, gelu, fast_gelu or silu)")
    parser.add("--output", "-output", required=True, help="CTranslate2 model folder")
    parser.add("--quantization", "-quantization", choices=("int8", "int8_float32", "int16", "float16"),
               default=None, help="CTranslate2 weight type (default: as the checkpoint, float32)")
    parser.add("--force", "-force", action="store_true", help="replace an existing CTranslate2 model folder -output (never a folder of anything else)")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    with user_errors_exit(parser):
        if not Path(args.model).is_file():
            raise ExportError(f"-model {args.model}: no such checkpoint")
        print(convert(args.model, args.output, args.quantization, args.force))


if __name__ == "__main__":
    main()

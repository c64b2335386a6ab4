"""``onmt_lma_quantize``: int8 weights for CPU translation (:mod:`onmt_lma.deploy.quantize`).

    onmt_lma_quantize -model CK.pt -output CK.int8.pt [-embeddings]
"""

from pathlib import Path

import onmt.opts

from onmt_lma.bin.parser import CommandParser, user_errors_exit
from onmt_lma.base.checkpoint import load, save
from onmt_lma.deploy.quantize import build_float_model, quantize_checkpoint
from onmt_lma.model.quantization import QuantizeError


def get_parser():


    parser = CommandParser(prog="onmt_lma_quantize", description="onmt_lma_quantize: int8 weights for CPU translation")
    onmt.opts.config_opts(parser)
    parser.add("--model", "-model", required=True, help="checkpoint to quantize (float32 or float16)")
    parser.add("--output", "-output", required=True, help="the int8 checkpoint to write")
    parser.add("--embeddings", "-embeddings", action="store_true",
               help="embedding tables in int8 too (smaller on disk; dequantized when loaded)")
    return parser


def main(argv=None):
    from onmt_lma.training import plugin  # noqa: F401  (installs: safe loading, LMA modules)

    parser = get_parser()
    args = parser.parse_args(argv)
    with user_errors_exit(parser):
        if Path(args.output).resolve() == Path(args.model).resolve():
            raise QuantizeError(f"-output {args.output} is the input checkpoint; give another file")
        checkpoint = load(args.model)
        model = build_float_model(args.model)
        save(quantize_checkpoint(checkpoint, model, args.embeddings), args.output)
    size_in, size_out = Path(args.model).stat().st_size, Path(args.output).stat().st_size
    print(f"{args.output}: int8 ({size_out / 1e6:.1f} MB, {size_in / size_out:.2f}x smaller than {args.model})")


if __name__ == "__main__":
    main()

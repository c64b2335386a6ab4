"""``onmt_lma_quantize``: int8 or low-bit weights for CPU translation (:mod:`onmt_lma.deploy.quantize`).

    onmt_lma_quantize -model CK.pt -output CK.int8.pt [-embeddings]
    onmt_lma_quantize -model CK.pt -output CK.q4.pt -bits 4 [-bucket 64] [-embeddings]   # post-training
    onmt_lma_quantize -model QAT.pt -output QAT.q4.pt [-embeddings]   # a -quant_bits student: its own codes
"""

import sys
from pathlib import Path

import onmt.opts

from onmt_lma.bin.parser import CommandParser, user_errors_exit
from onmt_lma.base.checkpoint import load, save
from onmt_lma.base.files import refuse_overwriting
from onmt_lma.base.opts import int_type
from onmt_lma.deploy.quantize import POST_TRAINING_BUCKET, build_float_model, quantize_checkpoint
from onmt_lma.model.quantized_checkpoint import quantization_of


def get_parser():
    parser = CommandParser(prog="onmt_lma_quantize", description="onmt_lma_quantize: int8 or low-bit weights for CPU translation")
    onmt.opts.config_opts(parser)
    parser.add("--model", "-model", required=True, help="checkpoint to quantize (float32 or float16)")
    parser.add("--output", "-output", required=True, help="the int8 checkpoint to write")
    parser.add("--embeddings", "-embeddings", action="store_true",
               help="embedding tables quantized too: int8 rows, or with -bits (and for QAT) 4-bit blocks of 32")
    parser.add("--bits", "-bits", type=int_type("an integer from 2 to 8", lambda b: 2 <= b <= 8),
               help="post-training B-bit buckets (weight-only, round to nearest, no calibration data) instead "
                    "of int8; a -quant_bits checkpoint is written in its own bits")
    parser.add("--bucket", "-bucket", type=int_type("an integer >= 2", lambda n: n >= 2),
               help=f"values per bucket with -bits (default {POST_TRAINING_BUCKET}: ONNX Runtime's 4-bit "
                    "blocks need a power of 2 >= 16 that divides each layer's input size, or a multiple of it)")
    return parser


def main(argv=None):
    from onmt_lma.training import plugin  # noqa: F401  (installs: safe loading, LMA modules)

    parser = get_parser()
    args = parser.parse_args(argv)
    with user_errors_exit(parser):
        refuse_overwriting(args.output, {"-model": args.model})
        checkpoint = load(args.model)
        model = build_float_model(args.model)
        quantized = quantize_checkpoint(checkpoint, model, args.embeddings, args.bits, args.bucket)
        save(quantized, args.output)
    low_bit = quantization_of(quantized).low_bit
    what = f"{low_bit['bits']}-bit {low_bit['source']}" if low_bit else "int8"
    size_in, size_out = Path(args.model).stat().st_size, Path(args.output).stat().st_size
    if size_out < size_in:
        print(f"{args.output}: {what} ({size_out / 1e6:.1f} MB, {size_in / size_out:.2f}x smaller than {args.model})")
    else:
        print(f"{args.output}: {what}, and larger than its input: {size_out / 1e6:.1f} MB against "
              f"{size_in / 1e6:.1f} MB for {args.model} (its weights were smaller than {what} already: float16, "
              "or quantized); keep the input for deployment", file=sys.stderr)


if __name__ == "__main__":
    main()

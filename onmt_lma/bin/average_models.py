"""Average checkpoints, and strip a checkpoint for release.

    onmt_lma_average_models -models A.pt B.pt ... -output OUT.pt [-float16]

The mean of every floating-point tensor of the model and generator, LMA's
running statistics (``running_mean``, ``running_std``) included, so that the
averaged model computes with the averaged cut points (the paper's cut points with the
buffers of step 4).  Means are taken in float64.  The result holds the model,
generator, vocabularies and options of the last checkpoint, and no optimizer
state: it translates, it does not resume training.  With ``-float16`` the
tensors are stored in half precision (half the size; OpenNMT-py loads them into
a float32 model).  ``-release`` is ``-float16`` and also drops this machine's
absolute paths from the saved options (each becomes its last two parts:
``runs/teacher/model`` -> ``teacher/model``); one checkpoint with ``-release``
is a model ready to publish.

OpenNMT-py's own ``onmt_average_models`` cannot read checkpoints with today's
``torch.load`` (it has no allow-list for the options it pickles).
"""

import argparse

import onmt.opts
from onmt.utils.logging import init_logger, logger

from onmt_lma.base.checkpoint import CheckpointError, save
from onmt_lma.base.files import OutputError, refuse_overwriting
from onmt_lma.bin.parser import CommandParser
from onmt_lma.training.average import AverageError, average


def get_parser():

    parser = CommandParser(prog="onmt_lma_average_models", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    onmt.opts.config_opts(parser)
    parser.add("--models", "-models", "-m", nargs="+", required=True, help="checkpoints to average")
    parser.add("--output", "-output", "-o", required=True, help="where the averaged checkpoint goes")
    parser.add("--float16", "-float16", action="store_true", help="store tensors in half precision")
    parser.add("--release", "-release", action="store_true",
               help="-float16, and the options' absolute paths cut to their last two parts")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        refuse_overwriting(args.output, {f"-models {model}": model for model in args.models})
        save(average(args.models, args.float16, args.release), args.output)
    except (CheckpointError, OutputError, AverageError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    init_logger()
    logger.info("%s: mean of %d checkpoint(s)%s%s", args.output, len(args.models),
                ", float16" if args.float16 or args.release else "", ", for release" if args.release else "")


if __name__ == "__main__":
    main()

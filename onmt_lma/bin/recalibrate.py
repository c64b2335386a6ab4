"""Recompute LMA's running statistics of a trained model ("precise" test-time statistics).

    onmt_lma_recalibrate -model CK.pt -src train.de -tgt train.en -output OUT.pt
        [-batch_size 3192] [-batch_type tokens] [-max_sentences N] [-training_dropout] [-gpu 0]

At test time LMA cuts its segments with ``running_mean`` and ``running_std``,
exponential moving averages (momentum 0.99) of the batch statistics seen in
training (Xu et al. 2020, method section).  An averaged checkpoint holds the
mean of its checkpoints' averages, not the statistics of the averaged weights.
This command runs the model once over parallel text with teacher forcing,
dropout off (``-training_dropout``: on, as in training, when the moving averages were
taken) and every LMA layer computing its batch statistics as in training,
and stores in each layer the plain mean of those batch statistics (every batch
weighs the same, as in the moving average; the weights are not touched).  It is
the batch-normalization practice after weight averaging (Izmailov et al. 2018,
"bn_update").  Other tensors, the vocabularies and options are copied; the
output keeps the checkpoint's precision (float16 for a released model).
A model without LMA layers is refused: there is nothing to recalibrate.
On the released Multi30k LMA-8 students it moved BLEU by +0.14 on average
(``results/multi30k_converged/recalibration``): a diagnostic, not a step the
recipes need.
"""

import argparse

import onmt.opts
from onmt.utils.logging import init_logger, logger

from onmt_lma.base.checkpoint import CheckpointError
from onmt_lma.base.files import OutputError, refuse_overwriting
from onmt_lma.base.opts import int_type
from onmt_lma.bin.parser import CommandParser
from onmt_lma.evaluation.recalibrate import RecalibrationError, Sampling, recalibrate


def get_parser():


    parser = CommandParser(prog="onmt_lma_recalibrate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    onmt.opts.config_opts(parser)
    parser.add("--model", "-model", required=True, help="checkpoint with LMA layers (e.g. an averaged one)")
    parser.add("--src", "-src", required=True, help="source side of parallel text, e.g. the training corpus")
    parser.add("--tgt", "-tgt", required=True, help="target side, line-aligned with -src")
    parser.add("--output", "-output", "-o", required=True, help="the recalibrated checkpoint")
    parser.add("--batch_size", "-batch_size", type=int_type("an integer >= 1", lambda n: n >= 1), default=3192,
               help="batch size, as in training (the recipes: 3192 tokens)")
    parser.add("--batch_type", "-batch_type", choices=("tokens", "sents"), default="tokens")
    parser.add("--max_sentences", "-max_sentences", type=int_type("an integer >= 1", lambda n: n >= 1),
               help="stop after the batch in which N sentence pairs are reached")
    parser.add("--training_dropout", "-training_dropout", action="store_true",
               help="keep the model's dropout on, as in training (default off, as at test time)")
    parser.add("--gpu", "-gpu", type=int, default=-1, help="CUDA device, -1 for CPU")
    return parser


def main(argv=None):

    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        refuse_overwriting(args.output, {"-model": args.model, "-src": args.src, "-tgt": args.tgt})
        sampling = Sampling(args.gpu, args.batch_size, args.batch_type, args.max_sentences, args.training_dropout)
        statistics = recalibrate(args.model, args.src, args.tgt, args.output, sampling)
    except (CheckpointError, OutputError, RecalibrationError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    init_logger()
    logger.info("%s: %d LMA layers recalibrated", args.output, len(statistics))


if __name__ == "__main__":
    main()

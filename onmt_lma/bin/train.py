"""``onmt_lma_train``: ``onmt_train`` with the onmt-lma plugin.

Accepts every ``onmt_train`` option (command line or ``-config`` YAML) plus
the plugin's; unlike ``onmt_train``, an unknown option is an error (see
:class:`onmt_lma.bin.parser.CommandParser`).
"""

import onmt.bin.train
import onmt.opts

from onmt_lma.bin.parser import user_errors_exit
from onmt_lma.training.distill import add_kd_opts
from onmt_lma.bin.parser import CommandParser
from onmt_lma.training.qat import refuse_quantized_training_start


def get_parser():
    parser = CommandParser(description="onmt_lma_train: onmt_train with LMA activations")
    onmt.opts.train_opts(parser)
    add_kd_opts(parser)
    return parser


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(argv)
    with user_errors_exit(parser):
        if opt.train_from:
            refuse_quantized_training_start(opt.train_from)
        onmt.bin.train.train(opt)


if __name__ == "__main__":
    main()

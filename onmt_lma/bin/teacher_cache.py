"""``onmt_lma_teacher_cache``: the teacher's top-K distributions over a training corpus, computed once.

Reads the training corpora, vocabularies and transforms from the student's own
``-config`` (every ``onmt_lma_train`` option is accepted), runs the teacher
``-model`` once over every training pair with teacher forcing, and writes the
top ``-topk`` token ids and log-probabilities of each target position into
``-out`` (see :mod:`onmt_lma.training.kd_cache`); the student then trains with
``-kd_cache OUT`` instead of ``-kd_teacher``.  An interrupted build resumes.
"""

import onmt.opts
from onmt.utils.logging import init_logger

from onmt_lma.bin.parser import user_errors_exit
from onmt_lma.training.distill import add_kd_opts
from onmt_lma.training.kd_cache_build import add_cache_opts, build_cache
from onmt_lma.bin.parser import CommandParser


def get_parser():
    parser = CommandParser(description="onmt_lma_teacher_cache: a teacher's top-K distributions for -kd_cache")
    onmt.opts.train_opts(parser)
    add_kd_opts(parser)
    add_cache_opts(parser)
    return parser


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(argv)
    init_logger(opt.log_file)
    with user_errors_exit(parser):
        build_cache(opt)


if __name__ == "__main__":
    main()

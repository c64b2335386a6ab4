"""``onmt_lma_translate``: ``onmt_translate`` for onmt-lma (and plain) checkpoints.

The model is rebuilt from the checkpoint's own options; ``-lma_segments``,
``-lma_momentum`` and ``-pos_ffn_activation_fn`` may be given as a check and
must then match the checkpoint.
"""

import onmt.bin.translate
import onmt.opts
from onmt.utils.parse import ArgumentParser

from onmt_lma.bin import user_errors_exit
from onmt_lma.opts import add_lma_opts


def get_parser():
    parser = ArgumentParser(description="onmt_lma_translate: onmt_translate for LMA models")
    onmt.opts.translate_opts(parser)
    add_lma_opts(parser, for_translation=True)
    return parser


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(argv)
    with user_errors_exit(parser):
        _translate(opt)


def _translate(opt):
    if not opt.profile:
        onmt.bin.translate.translate(opt)
        return
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, profile_memory=True, with_stack=True) as prof:
        with record_function("Translate"):
            onmt.bin.translate.translate(opt)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


if __name__ == "__main__":
    main()

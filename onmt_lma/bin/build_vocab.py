"""``onmt_lma_build_vocab``: ``onmt_build_vocab``, with unknown options refused.

Reads the same ``-config`` YAML as training (the keys of other commands are
ignored, as ``onmt_build_vocab`` does; a key of no command is an error).
"""

import os

import onmt.bin.build_vocab
import onmt.opts

from onmt_lma.bin.parser import CommandParser


def get_parser():
    parser = CommandParser(description="onmt_lma_build_vocab: onmt_build_vocab")
    onmt.opts.data_prepare_opts(parser, build_vocab_only=True)
    return parser


def main(argv=None):
    parser = get_parser()  # -n_samp is not -n_sample
    opts = parser.parse_args(argv)
    # OpenNMT-py refuses an existing vocabulary only after counting the whole corpus, with a traceback
    existing = [v for v in (opts.src_vocab, opts.tgt_vocab) if v and os.path.exists(v)]
    if existing and not opts.overwrite:
        parser.exit(2, f"{parser.prog}: error: {existing[0]} exists: remove it, or give -overwrite to replace it\n")
    onmt.bin.build_vocab.build_vocab_main(opts)


if __name__ == "__main__":
    main()

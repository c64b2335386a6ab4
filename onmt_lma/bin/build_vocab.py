"""``onmt_lma_build_vocab``: ``onmt_build_vocab``, with unknown options refused."""

import onmt.bin.build_vocab

from onmt_lma.opts import refuse_abbreviations


def main(argv=None):
    parser = refuse_abbreviations(onmt.bin.build_vocab._get_parser())  # -n_samp is not -n_sample
    opts = parser.parse_args(argv)
    onmt.bin.build_vocab.build_vocab_main(opts)


if __name__ == "__main__":
    main()

"""``onmt_lma_build_vocab``: ``onmt_build_vocab``, with unknown options refused."""

import onmt.bin.build_vocab


def main(argv=None):
    opts = onmt.bin.build_vocab._get_parser().parse_args(argv)
    onmt.bin.build_vocab.build_vocab_main(opts)


if __name__ == "__main__":
    main()

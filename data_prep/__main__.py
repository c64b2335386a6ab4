"""``python -m data_prep``: prepare a German->English corpus for onmt-lma."""

import argparse
import sys
from pathlib import Path

from data_prep.pipeline import DEFAULT_VALID_SIZE, Options, prepare
from data_prep.sources import CORPORA
from data_prep.text import DataPrepError
from onmt_lma.base.opts import int_type

EPILOG = """corpora:
  ope       OpenNMT integration-test corpus: 200K train pairs, 6,003 test pairs, already
            Moses-tokenized; valid = last 2,000 train pairs (--valid-size)
  wmt13     WMT13 Europarl v7 De-En (training-parallel-europarl-v7.tgz): pairs with an empty
            side dropped, Moses-tokenized (-a), 90% train / 10% test in file order;
            valid = last 3,000 train pairs (--valid-size)
  multi30k  Multi30K task 1 raw captions: Moses-tokenized, its train / val / test_2016_flickr

--source takes a local directory or file:// URL holding the same files (for wmt13: the
.tgz, or the .tgz itself). A rerun with the same options skips finished work.
"""


positive_int = int_type("an integer >= 1", lambda n: n >= 1)
non_negative_int = int_type("an integer >= 0", lambda n: n >= 0)


def get_parser():
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Prepare a German->English corpus for onmt-lma: download (or copy), split, "
        "tokenize, vocabularies, data.yaml and manifest.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", choices=sorted(CORPORA), help="which corpus")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--source",
        help="where the corpus files are: URL, local directory or file:// URL "
        "(default: the public location, see the corpus list below)",
    )
    parser.add_argument(
        "--subword",
        choices=("none", "sentencepiece"),
        default="none",
        help="none: words, OpenNMT vocabularies capped at 50,000 (the paper's setting); "
        "sentencepiece: one joint unigram model trained on train, every split encoded",
    )
    parser.add_argument(
        "--vocab-size", type=positive_int, default=16000, help="SentencePiece pieces (default 16000)"
    )
    parser.add_argument(
        "--valid-size",
        type=positive_int,
        help="ope / wmt13: validation pairs carved from the end of train (default 2000 / 3000)",
    )
    parser.add_argument(
        "--max-length",
        type=non_negative_int,
        default=0,
        help="drop training pairs with a side longer than this many tokens (0: keep all)",
    )
    parser.add_argument(
        "--workers", type=positive_int, help="processes for tokenization (default: all cores)"
    )
    parser.add_argument("--log-file", default="", help="also log to this file (as OpenNMT-py's -log_file)")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.corpus == "multi30k" and args.valid_size is not None:
        parser.error("--valid-size: multi30k keeps its own validation split")
    if args.subword == "none" and "--vocab-size" in (argv if argv is not None else sys.argv):
        parser.error("--vocab-size applies to --subword sentencepiece")
    options = Options(
        corpus=args.corpus,
        source=args.source or CORPORA[args.corpus].default_source,
        subword=args.subword,
        vocab_size=args.vocab_size,
        valid_size=args.valid_size or DEFAULT_VALID_SIZE.get(args.corpus, 0),
        max_length=args.max_length,
        workers=args.workers or 0,
    )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out}: is a file, expected a folder (new or prepared by data_prep)")
    import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: silences onmt's import warnings)
    from onmt.utils.logging import init_logger  # here: --help and bad options answer without loading torch

    init_logger(args.log_file)
    try:
        prepare(options, args.out)
    except DataPrepError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()

"""``onmt_lma_distill_data``: sequence-level KD data from a teacher (Kim & Rush 2016).

Translates ``-src`` with the teacher ``-model`` (beam 5 by default) into
``-output``, with a progress bar; an interrupted run picks up where it stopped
(see :mod:`onmt_lma.training.seqkd`).  Accepts every ``onmt_translate`` option.
"""

import os

from onmt_lma.bin.parser import user_errors_exit

import onmt.opts
from onmt.inference_engine import InferenceEnginePY
from onmt.utils.logging import logger
from onmt.utils.parse import ArgumentParser

from onmt_lma.base.opts import int_type
from onmt_lma.bin.parser import CommandParser
from onmt_lma.base.files import refuse_overwriting, sha256_of
from onmt_lma.training.seqkd import distill_corpus, DistillDataError

#: options that change what the teacher writes, recorded with the output
TRANSLATION_OPTIONS = ("beam_size", "max_length", "min_length", "length_penalty", "alpha", "beta",
                       "coverage_penalty", "block_ngram_repeat", "ignore_when_blocking", "replace_unk",
                       "ban_unk_token", "random_sampling_topk", "random_sampling_topp", "random_sampling_temp",
                       "seed", "precision", "transforms", "src_subword_model", "tgt_subword_model")


def get_parser():
    parser = CommandParser(description="onmt_lma_distill_data: translate a corpus with a teacher")
    onmt.opts.translate_opts(parser)
    group = parser.add_argument_group("Sequence-level distillation (onmt-lma)")
    group.add(
        "--chunk_lines",
        "-chunk_lines",
        type=int_type("an integer >= 1", lambda n: n >= 1),
        default=1000,
        help="Lines translated and written at a time; an interruption loses at most one chunk.",
    )
    return parser


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(argv)
    with user_errors_exit(parser):
        if not os.path.isfile(opt.src):
            raise DistillDataError(f"-src {opt.src} does not exist")
        out_path = opt.output
        refuse_overwriting(out_path, {"-src": opt.src, **{f"-model {m}": m for m in opt.models}})
        ArgumentParser.validate_translate_opts(opt)
        ArgumentParser._get_all_transform_translate(opt)
        ArgumentParser._validate_transforms_opts(opt)
        ArgumentParser.validate_translate_opts_dynamic(opt)
        opt.output = os.devnull  # the engine's own writer; ours is resumable
        engine = InferenceEnginePY(opt)

        def translate_lines(lines):
            _, predictions = engine.infer_list(lines)
            return [n_best[0] for n_best in predictions]

        made_from = {"models_sha256": [sha256_of(path) for path in opt.models],
                     "options": {name: getattr(opt, name, None) for name in TRANSLATION_OPTIONS}}
        written = distill_corpus(opt.src, out_path, translate_lines, opt.chunk_lines, made_from=made_from)
        engine.terminate()
        logger.info("%s: complete (%d lines translated by this run)", out_path, written)


if __name__ == "__main__":
    main()

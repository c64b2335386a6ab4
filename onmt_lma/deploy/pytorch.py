"""OpenNMT-py's own translator on a checkpoint, given a :class:`~onmt_lma.deploy.decoding.Decoding`: the options
``onmt_lma_translate`` parses (the plugin's checks of the model options included), built and validated as
``onmt_translate`` validates them.  The server's ``pytorch`` engine, the evaluation worker and the studies
translate through it.
"""

import os

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
from onmt_lma.training import plugin  # noqa: F401  (installs: LMA models load, translation is checked)

import onmt.opts
from onmt.utils.parse import ArgumentParser

from onmt_lma.deploy.decoding import Decoding
from onmt_lma.model.options import add_lma_opts


def translation_parser():
    """``onmt_translate``'s options and the plugin's checks of the model options, as ``onmt_lma_translate`` has them."""
    parser = ArgumentParser()
    onmt.opts.translate_opts(parser)
    add_lma_opts(parser, for_translation=True)
    return parser


def translation_opts(model, decoding=Decoding(), gpu=-1, batch_size=1, batch_type="sents", extra=()):
    """Validated ``onmt_translate`` options for the checkpoint ``model``; ``extra``: more arguments (``-src`` and
    ``-output`` for ``infer_file``, ``-precision int8``; default ``-src``/``-output``: none, for ``infer_list``)."""
    args = ["-model", str(model), "-src", os.devnull, "-output", os.devnull, "-gpu", str(gpu),
            "-batch_size", str(batch_size), "-batch_type", batch_type, *decoding.onmt_args(), *map(str, extra)]
    opt = translation_parser().parse_args(args)
    ArgumentParser.validate_translate_opts(opt)
    ArgumentParser._get_all_transform_translate(opt)
    ArgumentParser._validate_transforms_opts(opt)
    ArgumentParser.validate_translate_opts_dynamic(opt)
    return opt

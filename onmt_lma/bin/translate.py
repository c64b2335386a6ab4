"""``onmt_lma_translate``: ``onmt_translate`` for onmt-lma (and plain) checkpoints.

The model is rebuilt from the checkpoint's own options; ``-lma_segments``,
``-lma_momentum`` and ``-pos_ffn_activation_fn`` may be given as a check and
must then match the checkpoint.

Unlike ``onmt_translate``, the output is line-aligned with the source: an
empty (or blank) source line gets an empty translation (``-n_best`` empty
lines) instead of being dropped, which shifted every later line against its
reference.  The output is written under a temporary name and renamed when
complete, so a failed run leaves an existing ``-output`` as it was; an ``-output``
that is an input (``-src``, ``-tgt``, ``-model``) or lies inside an input folder (an export) is refused
before anything runs.

``-engine native|onnx -model DIR`` (an ``onmt_lma_export`` folder) is translated by the
command's entry point, :mod:`onmt_lma.bin.translate_export`, without PyTorch; this module
translates checkpoints (its ``-engine``, ``-threads`` and ``-raw_text`` are listed here too,
so that one ``-config`` YAML serves both).
"""

import os
import tempfile
from pathlib import Path

import onmt.bin.translate
import onmt.opts

from onmt_lma.base.checkpoint import load as load_checkpoint
from onmt_lma.base.files import refuse_overwriting
from onmt_lma.bin.parser import CommandParser, user_errors_exit
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.engines import ENGINES as EXPORT_ENGINES
from onmt_lma.deploy.text import text_steps
from onmt_lma.model.options import add_lma_opts
from onmt_lma.training.seqkd import DistillDataError, read_lines


class TranslationInputError(DistillDataError):
    """Translation inputs or outputs that cannot be used (reported as one line)."""


def get_parser():
    parser = CommandParser(description="onmt_lma_translate: onmt_translate for LMA models")
    onmt.opts.translate_opts(parser)
    add_lma_opts(parser, for_translation=True)
    parser.add("--engine", "-engine", choices=("pytorch",) + EXPORT_ENGINES, default="pytorch",
               help="pytorch: OpenNMT-py's translator on the checkpoint; native: the compiled engine on an "
               "onmt_lma_export folder given as -model (the fastest); onnx: ONNX Runtime on its graphs "
               "(-precision int8: its int8 graphs)")
    parser.add("--threads", "-threads", "--onnx_threads", "-onnx_threads", dest="threads", type=int, default=0,
               help="-engine native or onnx: the intra-op threads (0: the engine's default, one per core)")
    parser.add("--raw_text", "-raw_text", action="store_true",
               help="-src is raw text and -output plain text: the text steps an export carries (or those of the "
               "prepared corpus the model was trained on) are applied and undone")
    return parser


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(argv)
    if opt.engine in EXPORT_ENGINES:  # the command's entry point (bin.translate_export) translates exports
        parser.fail(f"-engine {opt.engine}: an export is translated by onmt_lma.bin.translate_export.main")
    with user_errors_exit(parser):
        _translate(opt)


def check_files(opt):
    """Refuse, before the model loads, a missing -src or -tgt, an -output that would destroy an input (a
    source, a checkpoint, a file of an export folder), and a batch, beam or n-best that cannot work."""
    if opt.engine not in EXPORT_ENGINES and opt.threads:
        raise TranslationInputError(f"-threads {opt.threads}: only -engine {' and '.join(EXPORT_ENGINES)} take it")
    if opt.batch_size < 1:
        raise TranslationInputError(f"-batch_size {opt.batch_size}: expected an integer >= 1")
    Decoding.from_options(opt)  # its checks, before anything loads
    for option in ("src", "tgt"):
        path = getattr(opt, option, None)
        if path is not None and not os.path.isfile(path):
            raise TranslationInputError(f"-{option} {path}: no such file")
    output = Path(opt.output)
    if not output.parent.is_dir():
        raise TranslationInputError(f"-output {opt.output}: folder {output.parent} does not exist")
    inputs = {"-src": opt.src, "-tgt": opt.tgt}
    inputs.update({"-model" if len(opt.models) == 1 else f"-model {model}": model for model in opt.models})
    refuse_overwriting(opt.output, inputs)


def _translate(opt):
    """Translate the non-empty source lines, then put empty lines back in place; rename when complete."""
    check_files(opt)
    sources = read_lines(opt.src)
    steps = text_steps(opt.models[0]) if opt.raw_text else None
    if steps is not None:
        sources = [steps.encode(line) if line.split() else "" for line in sources]
    keep = [i for i, line in enumerate(sources) if line.split()]
    output = opt.output
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(output))) as tmp:
        opt.src, opt.output = os.path.join(tmp, "src"), os.path.join(tmp, "out")
        Path(opt.src).write_text("".join(sources[i] + "\n" for i in keep), encoding="utf-8")
        if opt.tgt is not None:
            targets = read_lines(opt.tgt)
            if len(targets) != len(sources):
                raise TranslationInputError(f"-tgt {opt.tgt} has {len(targets)} lines, -src {len(sources)}")
            opt.tgt = os.path.join(tmp, "tgt")
            Path(opt.tgt).write_text("".join(targets[i] + "\n" for i in keep), encoding="utf-8")
        if keep:
            _run(opt)
        else:  # nothing to translate (OpenNMT-py fails on an empty input): still refuse a bad model
            for model in opt.models:
                load_checkpoint(model)
        translated = read_lines(opt.output) if keep else []
        n_best = opt.n_best
        if len(translated) != len(keep) * n_best:
            raise RuntimeError(f"{len(translated)} output lines for {len(keep)} non-empty source lines "
                               f"(-n_best {n_best})")
        lines, position = [[""] * n_best for _ in sources], 0
        for i in keep:
            lines[i] = [steps.decode(line) if steps else line for line in translated[position:position + n_best]]
            position += n_best
        complete = os.path.join(tmp, "complete")
        Path(complete).write_text("".join(line + "\n" for group in lines for line in group), encoding="utf-8")
        os.replace(complete, output)


def _run(opt):
    if not opt.profile:
        onmt.bin.translate.translate(opt)
        return
    from torch.profiler import ProfilerActivity, profile, record_function  # here: only -profile needs it

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, profile_memory=True, with_stack=True) as prof:
        with record_function("Translate"):
            onmt.bin.translate.translate(opt)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


if __name__ == "__main__":
    main()

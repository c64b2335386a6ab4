"""``onmt_lma_evaluate``: evaluate checkpoints on a test set; one JSON file per checkpoint.

    onmt_lma_evaluate -model CK [CK ...] -corpus DIR [-out FILE|DIR] [-beam_size 5] [-gpu 0]
    onmt_lma_evaluate -model CK [CK ...] -src test.de -ref test.en [-ref_tok test.tok.en] [-corpus DIR] ...

``-corpus DIR`` alone: the test split of a corpus prepared by ``python -m
data_prep``.  ``-src``/``-ref``: any raw (untokenized) test set; the steps of
the model's corpus are applied to it (Moses tokenization, ``tokenizer.perl -a``
with escaping, then the corpus's SentencePiece model if it has one), read from
the prepared corpus ``-corpus`` names or, without it, the one whose
vocabularies the checkpoint was trained with.  The output is decoded and
detokenized back to plain text before scoring.

Fields (Xu et al. 2020, translation experiments):
  * ``bleu``: sacreBLEU on detokenized text against the plain-text reference,
    with its signature; ``chrf``: sacreBLEU's chrF (character 6-grams, beta 2),
    with its signature; ``bleu_tok``: BLEU on Moses-tokenized text against the
    tokenized reference (``test.ref.tok.en``, or ``-ref_tok``; null without one)
    with sacreBLEU's ``tokenize=none``, which computes what Moses
    ``multi-bleu.perl`` does (the paper's number);
  * ``ppl``: test perplexity of the gold references (teacher-forced), per
    target token of the model's vocabulary, end of sentence included;
  * ``params``, ``size_mb`` (checkpoint on disk; with ``-engine onnx`` the
    graphs used, with ``-engine native`` its weights, and the vocabularies and manifest);
  * ``speed``: the test set's translation (sentences/s, target tokens/s),
    one sentence at a time unless ``-eval_batch_size`` says otherwise;
  * ``decoding``: the search's options (``-beam_size`` 5, ``-length_penalty``,
    ... as ``onmt_translate`` names them and with its defaults);
  * ``memory``: while translating one sentence at a time, in a fresh process:
    on CUDA ``torch.cuda.max_memory_allocated`` (as the paper); on CPU the
    process's peak resident memory from loading the model to the end of
    translation (Linux ``VmHWM``, reset just before loading) minus its resident
    memory before loading, i.e. model + decoding memory without the
    Python/PyTorch runtime.

``-engine native`` and ``-engine onnx`` evaluate an export: the compiled engine
(:mod:`onmt_lma.deploy.native`) or the ONNX graphs on ONNX Runtime
(:mod:`onmt_lma.deploy.runtime`), on the CPU.  ``-model`` takes ``onmt_lma_export``
folders, or checkpoints, exported once beside them as ``CK.onnx/`` (the native
engine's weights, float32 and int8 graphs); results are written ``CK.onnx.eval.json``
(onnx), ``CK.onnx.native.eval.json`` (native); with ``-int8`` the int8 graphs (ONNX
Runtime's dynamic quantization), ``CK.onnx.int8.eval.json``, or the native engine's
linear layers as PyTorch's dynamic int8, ``CK.onnx.int8.native.eval.json``.  Perplexity then
comes from the engine's log-probabilities of the gold tokens (``score``).
"""

import argparse
import json
import tempfile
from pathlib import Path

import onmt.opts
from onmt.utils.logging import init_logger, logger

from onmt_lma.base.checkpoint import CheckpointError
from onmt_lma.base.errors import UserError
from onmt_lma.base.files import sha256_of
from onmt_lma.base.opts import int_type
from onmt_lma.bin import quantize
from onmt_lma.bin.parser import CommandParser
from onmt_lma.deploy import export
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.decoding import add_options as add_decoding_options
from onmt_lma.deploy.engines import ENGINES as EXPORT_ENGINES
from onmt_lma.deploy.manifest import ExportError, read_manifest
from onmt_lma.evaluation.evaluate import evaluate
from onmt_lma.evaluation.facts import kept_result
from onmt_lma.evaluation.measure import Translation
from onmt_lma.evaluation.test_sets import (CorpusMismatchError, EvaluationInputError, check_vocabulary,
                                           checkpoint_corpus, prepared_test_set, raw_test_set)


def get_parser():
    parser = CommandParser(prog="onmt_lma_evaluate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    onmt.opts.config_opts(parser)
    group = parser.add_argument_group("Evaluation (onmt-lma)")
    group.add("--model", "-model", dest="models", nargs="+", required=True, help="checkpoint(s) to evaluate")
    group.add("--corpus", "-corpus", help="prepared corpus (python -m data_prep): its test split, or, with -src, "
              "only its steps (tokenization, subwords); default with -src: the checkpoint's own corpus")
    group.add("--src", "-src", help="raw source test file (German), one sentence a line")
    group.add("--ref", "-ref", help="raw reference (English), line-aligned with -src")
    group.add("--ref_tok", "-ref_tok", help="Moses-tokenized reference, for tokenized (multi-bleu.perl) BLEU")
    group.add("--out", "-out", help="result JSON (one -model) or folder (several); default: beside each checkpoint, "
              "CK.eval.json (-corpus test split) or CK.<src name>.eval.json")
    group.add("--gpu", "-gpu", type=int, default=-1, help="CUDA device, -1 for CPU")
    group.add("--eval_batch_size", "-eval_batch_size", type=int_type("an integer >= 1", lambda n: n >= 1),
              default=1, help="sentences translated at a time (default 1: the paper's speed measure)")
    group.add("--engine", "-engine", choices=("pytorch",) + EXPORT_ENGINES, default="pytorch",
              help="pytorch: OpenNMT-py's translator; native: the compiled engine, onnx: ONNX Runtime, on "
              "onmt_lma_export folders (-model a folder, or a checkpoint, exported once beside it as CK.onnx/)")
    group.add("--int8", "-int8", action="store_true",
              help="evaluate each model's int8 version: -engine pytorch, onmt_lma_quantize -embeddings (written "
              "beside the checkpoint as CK.int8.pt and kept); -engine onnx, the export's int8 graphs; -engine native, "
              "its linear layers as PyTorch's dynamic int8")
    group.add("--force", "-force", action="store_true", help="replace existing results")
    group.add("--log_file", "-log_file", default="", help="also log to this file")
    add_decoding_options(parser.add_argument_group("Decoding (onmt_translate's options; the paper: -beam_size 5)"))
    return parser


def result_paths(models, test_name, out):
    """Where each checkpoint's JSON goes (refusing two checkpoints that would share one)."""
    suffix = ".eval.json" if test_name is None else f".{test_name}.eval.json"
    if out and len(models) == 1 and not Path(out).is_dir():
        return [Path(out)]
    paths = [Path(out) / (Path(m).name + suffix) if out else Path(str(m) + suffix) for m in models]
    clash = next((p for p in paths if paths.count(p) > 1), None)
    if clash:
        raise EvaluationInputError(f"two -model checkpoints would both write {clash}: give them different names, "
                                   "or evaluate them in separate calls with -out")
    return paths


def summary_table(rows):
    """Side-by-side table of results (markdown), one row per checkpoint."""
    lines = ["| checkpoint | activation | BLEU | chrF | tok. BLEU | ppl | sent/s | memory MB | params | size MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, r in rows:
        tok = f"{r['bleu_tok']['score']:.2f}" if r.get("bleu_tok") else "–"
        params = "–" if r["params"] is None else f"{r['params'] / 1e6:.2f} M"
        lines.append(f"| {model} | {r['model']['activation']} | {r['bleu']['score']:.2f} | {r['chrf']['score']:.2f} "
                     f"| {tok} | {r['ppl']:.2f} | {r['speed']['sentences_per_s']:.1f} | "
                     f"{r['memory']['peak_mb']:.0f} | {params} | {r['size_mb']:.1f} |")
    signatures = {r["bleu"]["signature"] for _, r in rows} | {r["chrf"]["signature"] for _, r in rows}
    return "\n".join(lines + [""] + sorted(signatures))


def int8_version(model, force=False):
    """``CK.int8.pt`` beside ``CK`` (made by onmt_lma_quantize -embeddings unless it is there)."""
    out = Path(model).with_suffix(".int8.pt")
    if force or not out.is_file():
        try:
            quantize.main(["-model", str(model), "-output", str(out), "-embeddings"])
        except SystemExit:  # its error is printed already
            raise EvaluationInputError(f"-int8: {model} could not be quantized (see the error above)") from None
    return str(out)


def export_of(model, engine, force=False):
    """An export folder as it is; for a checkpoint ``CK``, ``CK.onnx/`` beside it (onmt_lma_export with int8
    graphs), made again when missing, incomplete or exported from another version of ``CK``."""
    if Path(model).is_dir():
        return Path(model)
    out = Path(f"{model}.onnx")
    try:
        current = read_manifest(out)["checkpoint_sha256"] == sha256_of(model)
    except ExportError:  # none, of another version, or damaged: made again
        current = False
    if current and not force:
        return out
    try:  # built beside it and renamed into place; a folder there that is not an export is never replaced
        export.export(model, out, int8=True, force=True)
    except UserError as error:
        raise EvaluationInputError(f"-engine {engine}: {error}") from None
    return out


def run_command(opt):

    if (opt.src is None) != (opt.ref is None):
        raise EvaluationInputError("-src and -ref go together (a raw test set), or neither (-corpus's test split)")
    if opt.src is None and opt.corpus is None:
        raise EvaluationInputError("give -corpus DIR (its test split) or -src FILE -ref FILE (any raw test set)")
    if opt.ref_tok and opt.src is None:
        raise EvaluationInputError("-ref_tok goes with -src/-ref (a prepared corpus has its own)")
    translation = Translation(opt.engine, opt.int8, opt.gpu, opt.eval_batch_size, Decoding.from_options(opt))
    exported = opt.engine in EXPORT_ENGINES  # export folders
    if exported and opt.gpu >= 0:
        raise EvaluationInputError(f"-gpu {opt.gpu}: -engine {opt.engine} runs on the CPU")
    for model in opt.models:
        if exported and Path(model).is_dir():
            if not (Path(model) / "manifest.json").is_file():
                raise EvaluationInputError(f"-model {model}: a folder without manifest.json; make an export folder "
                                           "with onmt_lma_export")
        elif Path(model).is_dir():
            raise EvaluationInputError(f"-model {model} is a folder: an onmt_lma_export folder needs -engine native "
                                       "or onnx")
        elif not Path(model).is_file():
            raise EvaluationInputError(f"-model {model}: no such checkpoint")
    if exported:
        opt.models = [str(export_of(model, opt.engine, opt.force)) for model in opt.models]
    elif opt.int8:
        opt.models = [int8_version(model, opt.force) for model in opt.models]
    # an export's evaluations: DIR.eval.json (onnx), DIR.int8.eval.json (onnx, int8), DIR.native.eval.json
    suffix = (".int8" if exported and opt.int8 else "") + (".native" if opt.engine == "native" else "")
    names = [model + suffix for model in opt.models]
    paths = result_paths(names, None if opt.src is None else Path(opt.src).name, opt.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tests, corpora = {}, {}
        for model, name, out in zip(opt.models, names, paths):
            corpus = corpora[model] = opt.corpus if opt.src is None else (opt.corpus or checkpoint_corpus(model))
            if corpus is None:
                raise EvaluationInputError(
                    f"-model {model} was not trained on a corpus prepared by python -m data_prep: name the prepared "
                    "corpus whose tokenization and subwords apply with -corpus DIR")
            key = Path(corpus).resolve()
            if key not in tests:  # the raw files are tokenized once per corpus
                if opt.src is None:
                    tests[key] = prepared_test_set(corpus)
                else:
                    folder = Path(tmp) / str(len(tests))
                    folder.mkdir()
                    tests[key] = raw_test_set(opt.src, opt.ref, opt.ref_tok, corpus, folder)
            test = tests[key]
            check_vocabulary(model, test)  # every checkpoint refused before any translation
        for model, name, out in zip(opt.models, names, paths):
            corpus = corpora[model]
            test = tests[Path(corpus).resolve()]
            if out.exists() and not opt.force and kept_result(out, model, test, translation.decoding):
                logger.info("%s exists, made from these inputs: kept (replace it with -force)", out)
                result = json.loads(out.read_text())
            else:
                try:
                    result = evaluate(model, corpus, out, translation, test=test)
                except (CheckpointError, ExportError) as error:
                    raise EvaluationInputError(str(error)) from None
                logger.info("%s: BLEU %.2f, chrF %.2f, ppl %.2f, %.1f sent/s, memory %.0f MB", out,
                            result["bleu"]["score"], result["chrf"]["score"], result["ppl"],
                            result["speed"]["sentences_per_s"], result["memory"]["peak_mb"])
            rows.append((name, result))
    print(summary_table(rows))
    return rows


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(argv)
    init_logger(opt.log_file)
    try:
        run_command(opt)
    except UserError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()

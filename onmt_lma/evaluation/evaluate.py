"""One evaluation: a checkpoint (or an ``onmt_lma_export`` folder) on a test set, written as one JSON file.

The fields are listed in ``onmt_lma_evaluate -h`` (:mod:`onmt_lma.bin.evaluate`).
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onmt.utils.logging import logger

from onmt_lma.deploy.engines import open_export
from onmt_lma.evaluation.facts import (_git_commit, evaluation_inputs, export_facts, export_size_mb, model_facts,
                                       portable)
from onmt_lma.evaluation.measure import Translation, export_gold_perplexity, gold_perplexity
from onmt_lma.evaluation.scoring import postprocess, text_scores
from onmt_lma.evaluation.test_sets import EvaluationInputError, check_vocabulary, prepared_test_set


def evaluate(checkpoint, corpus_dir, out, translation=Translation(), test=None):
    """Evaluate ``checkpoint`` on ``test`` (default: the test split of ``corpus_dir``), translated as
    ``translation`` says; write ``out``.

    ``translation.engine`` "native" or "onnx": ``checkpoint`` is an onmt_lma_export folder, evaluated on that
    engine (with ``int8``: the ONNX engine's int8 graphs, the native engine's int8 products)."""
    engine, int8, gpu, beam = translation.engine, translation.int8, translation.gpu, translation.decoding.beam_size
    checkpoint, out = Path(checkpoint), Path(out)
    test = test or prepared_test_set(corpus_dir)
    exported = engine != "pytorch"  # an export folder
    if exported and gpu >= 0:
        raise EvaluationInputError(f"-gpu {gpu}: -engine {engine} runs on the CPU")
    if not (checkpoint.is_dir() and (checkpoint / "manifest.json").is_file() if exported else checkpoint.is_file()):
        raise EvaluationInputError(f"{'export folder' if exported else 'checkpoint'} {checkpoint} does not exist"
                                   + (" or has no manifest.json (make it with onmt_lma_export)" if exported else ""))
    manifest = json.loads((test.corpus_dir / "manifest.json").read_text())
    check_vocabulary(checkpoint, test)
    # an export's checks (files, vocabularies, the engine's refusals) as one line, before the worker; it then
    # scores the references
    translator = open_export(engine, checkpoint, int8) if exported else None
    started = time.time()
    sources = test.src.read_text(encoding="utf-8").splitlines()
    if len(test.ref_detok) != len(sources):
        raise EvaluationInputError(f"{test.name}: {len(test.ref_detok)} references for {len(sources)} sources")

    with tempfile.TemporaryDirectory() as tmp:
        hyp_path = Path(tmp) / "hyp"
        logger.info("%s: translating %s (%d sentences, beam %d)", checkpoint, test.name, len(sources), beam)
        worker = subprocess.run(
            [sys.executable, "-m", "onmt_lma.evaluation.measure", "--worker", str(checkpoint), str(test.src),
             str(hyp_path), "--translation", dataclasses.replace(translation, int8=exported and int8).to_json()],
            stdout=subprocess.PIPE, text=True,  # its progress and errors go to our stderr
        )
        if worker.returncode != 0:
            raise RuntimeError(f"translation of {test.name} with {checkpoint} failed: see the error above")
        run = json.loads(worker.stdout.strip().splitlines()[-1])
        hyps = hyp_path.read_text(encoding="utf-8").splitlines()

    if len(hyps) != len(sources):
        raise RuntimeError(f"{len(hyps)} translations for {len(sources)} test sentences")
    hyp_tok, hyp_detok = postprocess(hyps, test.corpus_dir)
    scores = text_scores(hyp_tok, hyp_detok, test.ref_tok, test.ref_detok)
    if exported:
        ppl, ppl_tokens = export_gold_perplexity(translator, test.src, test.tgt)
        (model, params), size_mb = export_facts(checkpoint, engine, int8), export_size_mb(checkpoint, engine, int8)
    else:
        ppl, ppl_tokens = gold_perplexity(checkpoint, test.src, test.tgt, gpu)
        (model, params), size_mb = model_facts(checkpoint), checkpoint.stat().st_size / 2**20
    if model["kd_teacher"]:
        model["kd_teacher"] = portable(model["kd_teacher"])
    target_tokens = sum(len(h.split()) for h in hyps)

    result = {
        "checkpoint": portable(checkpoint),
        "run_dir": portable(checkpoint.parent),
        "corpus": manifest["corpus"],
        "subword": manifest["options"]["subword"],
        "test": {"name": test.name, **{role: portable(path) for role, path in test.files.items()}},
        "test_sentences": len(sources),
        "model": model,
        "params": params,
        "size_mb": size_mb,
        **scores,
        "ppl": ppl,
        "ppl_tokens": ppl_tokens,
        "engine": engine,
        "beam": beam,
        "decoding": translation.decoding.as_dict(),
        "speed": {
            "batch": "one sentence at a time" if translation.batch_size == 1
            else f"{translation.batch_size} sentences at a time",
            "sentences_per_s": len(hyps) / run["seconds"],
            "target_tokens_per_s": target_tokens / run["seconds"],
            "seconds": run["seconds"],
        },
        "memory": run["memory"],
        "inputs": evaluation_inputs(checkpoint, test),
        "commit": _git_commit(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "evaluation_seconds": time.time() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # each file under a temporary name, renamed when complete; the JSON last: it marks the result done
    for path, text in ((out.parent / (out.stem + ".hyp.detok.en"), "\n".join(hyp_detok) + "\n"),
                       (out, json.dumps(result, indent=2) + "\n")):
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    return result

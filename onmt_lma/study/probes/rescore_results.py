#!/usr/bin/env python
"""Add chrF to collected results made before onmt_lma_evaluate had it, from their committed hypotheses.

    python -m onmt_lma.study.probes.rescore_results results/multi30k/runs [more folders ...] --data data/multi30k

For every ``<run>/<run>.eval.json`` with its hypotheses beside it: sacreBLEU is computed again
from the hypotheses and must equal the stored BLEU (the hypotheses are those the result was made from),
then chrF (with its signature) is added.  Nothing else changes; a result that already has chrF is left.
"""

import argparse
import json
import sys
from pathlib import Path

from onmt_lma.evaluation.scoring import text_scores


def hypotheses_of(result_file):
    """``test.hyp.detok.en`` (collected runs) or ``<name>.hyp.detok.en`` (as onmt_lma_evaluate writes it)."""
    for path in (result_file.parent / "test.hyp.detok.en", result_file.with_name(
            result_file.name[: -len(".json")] + ".hyp.detok.en")):
        if path.is_file():
            return path
    return None


def rescore(result_file, refs):
    result = json.loads(result_file.read_text())
    if result.get("chrf"):
        return "has chrF"
    hyps = hypotheses_of(result_file).read_text(encoding="utf-8").splitlines()
    if len(hyps) != len(refs):
        raise SystemExit(f"{result_file}: {len(hyps)} hypotheses for {len(refs)} references")
    scores = text_scores(None, hyps, None, refs)
    if abs(scores["bleu"]["score"] - result["bleu"]["score"]) > 1e-9:
        raise SystemExit(f"{result_file}: BLEU from its hypotheses {scores['bleu']['score']:.4f} differs from "
                         f"the stored {result['bleu']['score']:.4f}: not the hypotheses it was made from")
    items = list(result.items())
    position = [key for key, _ in items].index("bleu") + 1  # chrF next to BLEU, as onmt_lma_evaluate writes it
    result = dict(items[:position] + [("chrf", scores["chrf"])] + items[position:])
    partial = result_file.with_name(result_file.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(result_file)
    return f"chrF {scores['chrf']['score']:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the prepared corpus (its test.ref.detok.en)")
    args = parser.parse_args(argv)
    if not (args.data / "test.ref.detok.en").is_file():
        parser.error(f"--data {args.data}: no test.ref.detok.en (a corpus prepared by python -m data_prep)")
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder}: no such folder of collected runs")
    refs = (args.data / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()
    for folder in args.folders:
        for result_file in sorted(folder.glob("*/*.eval.json")):
            if hypotheses_of(result_file):
                print(f"{result_file}: {rescore(result_file, refs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

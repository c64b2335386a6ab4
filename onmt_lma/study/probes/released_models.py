#!/usr/bin/env python
"""The released models of a study on the test set: a table and example translations.

    python -m onmt_lma.study.probes.released_models [--models results/multi30k_converged/models]
        [--data data/multi30k] [--out runs/demo/released] [--examples 3] [--batch-size 32]

Checks every ``*.pt`` in MODELS against ``SHA256SUMS`` (a missing or changed
file is an error, nothing is evaluated), evaluates each with
``onmt_lma_evaluate`` (beam 5; sacreBLEU with its signature, test
perplexity, size, speed at ``--batch-size`` sentences a time on this machine's
CPU), keeps the JSON files in OUT (a rerun reuses them), and prints one table
and the first ``--examples`` test sentences with the reference and every
model's translation.  ``make demo`` runs it after its own short pipeline.
"""

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
from onmt_lma.base.files import sha256_of  # noqa: E402


class ReleaseError(RuntimeError):
    """Released models that cannot be trusted or evaluated."""


def verified_models(models_dir):
    """``[(name, path)]`` of the released models, each checked against SHA256SUMS."""
    models_dir = Path(models_dir)
    sums_file = models_dir / "SHA256SUMS"
    if not sums_file.is_file():
        raise ReleaseError(f"{sums_file} is missing: no released models to trust")
    expected = {}
    for line in sums_file.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name.strip()] = digest
    found = sorted(p.name for p in models_dir.glob("*.pt"))
    if sorted(expected) != found:
        raise ReleaseError(f"{models_dir}: SHA256SUMS lists {sorted(expected)}, the folder holds {found}")
    for name, digest in expected.items():
        actual = sha256_of(models_dir / name)
        if actual != digest:
            raise ReleaseError(f"{models_dir / name}: sha256 {actual} is not the released {digest}")
    # the teacher first, then the students by name
    return sorted(((Path(n).stem, models_dir / n) for n in expected), key=lambda item: (item[0] != "teacher", item[0]))


def describe(model):
    name = model["activation"]
    if name == "lma":
        name = f"LMA-{model['lma_segments']}" + (" continuous" if model.get("lma_continuous") else "")
    return f"{model['hidden_size']}-dim {name}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "results" / "multi30k_converged" / "models")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo" / "released")
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    from onmt_lma.evaluation import evaluate
    from onmt_lma.evaluation.measure import Translation

    try:
        models = verified_models(args.models)
    except ReleaseError as error:
        parser.exit(2, f"released_models: error: {error}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, path in models:
        out = args.out / f"{name}.eval.json"
        if not out.exists():
            print(f"[released] evaluating {name} (beam 5, {args.batch_size} sentences at a time)", flush=True)
            evaluate.evaluate(path, args.data, out, Translation(batch_size=args.batch_size))
        results[name] = json.loads(out.read_text())

    print(f"\nReleased models ({args.models.relative_to(REPO) if args.models.is_relative_to(REPO) else args.models}),"
          f" test_2016, beam 5, on this machine's CPU at {args.batch_size} sentences a time:\n")
    print("| model | what | BLEU | test ppl | parameters | file MB | sent/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {describe(r['model'])} | {r['bleu']['score']:.2f} | {r['ppl']:.2f} | {r['params']:,} "
              f"| {r['size_mb']:.1f} | {r['speed']['sentences_per_s']:.1f} |")
    signature = next(iter(results.values()))["bleu"]["signature"] if results else ""
    print(f"\nsacreBLEU signature: {signature}\n")
    sources = (args.data / "test.de").read_text(encoding="utf-8").splitlines()
    references = (args.data / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()
    hypotheses = {name: (args.out / f"{name}.eval.hyp.detok.en").read_text(encoding="utf-8").splitlines()
                  for name in results}
    width = max(len("reference"), *(len(name) for name in hypotheses))  # every model's name in full
    for i in range(min(args.examples, len(sources))):
        print(f"{'source':{width}s}  {sources[i]}")
        print(f"{'reference':{width}s}  {references[i]}")
        for name, lines in hypotheses.items():
            print(f"{name:{width}s}  {lines[i]}")
        print()


if __name__ == "__main__":
    main()

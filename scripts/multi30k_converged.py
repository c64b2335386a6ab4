#!/usr/bin/env python
"""The converged, paper-faithful Multi30k study (results/multi30k_converged): a thin wrapper of

    python -m onmt_lma.study.runs study studies/multi30k_converged.yaml [--plan|--collect|--release|--report]

with the commands of its REPRODUCE.md.  The plan (runs, the pilot's budget rule, evaluation) is
studies/multi30k_converged.yaml; how it runs is onmt_lma.study.budgeted.

    python scripts/multi30k_converged.py plan
    python scripts/multi30k_converged.py run [--gpu 0] [--parallel 2] [--kd-cache 8] [--deadline-min M]
    python scripts/multi30k_converged.py collect | release | report
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "studies" / "multi30k_converged.yaml"
MODES = {"plan": ["--plan"], "run": [], "collect": ["--collect"], "release": ["--release"], "report": ["--report"]}


def runs_arguments(argv=None):
    """The ``python -m onmt_lma.study.runs`` arguments of this script's ``argv``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=tuple(MODES))
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "multi30k_converged",
                        help="the study's runs folder (RUNS_ROOT/multi30k_converged)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared Multi30k")
    parser.add_argument("--results", type=Path, help="results folder (default: the plan's)")
    args, rest = parser.parse_known_args(argv)
    if args.runs.name != "multi30k_converged":
        parser.error(f"--runs {args.runs}: the plan's runs folder is RUNS_ROOT/multi30k_converged")
    if args.data.name != "multi30k":
        parser.error(f"--data {args.data}: expected a prepared corpus folder named multi30k")
    command = ["--data-root", str(args.data.parent), "--runs-root", str(args.runs.parent), "study", str(PLAN),
               *MODES[args.action], *rest]
    return command, args.results


def main(argv=None):
    command, results = runs_arguments(argv)
    if results is not None:
        import os

        os.environ["RESULTS"] = str(results.resolve())
    from onmt_lma.study import runs

    runs.main(command)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()

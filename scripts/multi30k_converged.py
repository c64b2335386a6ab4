#!/usr/bin/env python
"""The converged, paper-faithful Multi30k study (results/multi30k_converged): a thin wrapper of

    python -m onmt_lma.study.runs study PLAN [--plan|--collect|--release|--report]

with the commands of its REPRODUCE.md.  PLAN (runs, the pilot's budget rule, evaluation) is
studies/multi30k_converged.yaml (the main comparison and the diagnostics (a)-(e), run on one GPU) or,
with --plan, studies/multi30k_converged_cpu.yaml (the seed-1 pair on 2 CPU cores) or
studies/multi30k_converged_cpu_lr2x.yaml (READING's rule 4 on 2 CPU cores: ReLU at twice the peak and at the
authors' peak, seeds 2-3); how it runs is onmt_lma.study.budgeted.

    python scripts/multi30k_converged.py plan [--plan studies/multi30k_converged_cpu.yaml]
    python scripts/multi30k_converged.py run [--gpu 0] [--parallel 2] [--kd-cache 8] [--deadline-min M]
    python scripts/multi30k_converged.py collect | release | report
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLANS = tuple(REPO / "studies" / f"multi30k_converged{part}.yaml" for part in ("", "_cpu", "_cpu_lr2x"))
MODES = {"plan": ["--plan"], "run": [], "collect": ["--collect"], "release": ["--release"], "report": ["--report"]}


def runs_arguments(argv=None):
    """The ``python -m onmt_lma.study.runs`` arguments of this script's ``argv``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=tuple(MODES))
    parser.add_argument("--plan", type=Path, default=PLANS[0],
                        help=f"the plan: one of {', '.join(str(p.relative_to(REPO)) for p in PLANS)}")
    parser.add_argument("--runs", type=Path, help="the plan's runs folder (default: runs/<its runs_folder>)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared Multi30k")
    parser.add_argument("--results", type=Path, help="results folder (default: the plan's)")
    args, rest = parser.parse_known_args(argv)
    if args.plan.resolve() not in PLANS:
        parser.error(f"--plan {args.plan}: expected one of {', '.join(str(p) for p in PLANS)}")
    import yaml

    folder = yaml.safe_load(args.plan.read_text())["runs_folder"]  # the plan says where its runs are
    args.runs = args.runs or REPO / "runs" / folder
    if args.runs.name != folder:
        parser.error(f"--runs {args.runs}: the plan's runs folder is RUNS_ROOT/{folder}")
    if args.data.name != "multi30k":
        parser.error(f"--data {args.data}: expected a prepared corpus folder named multi30k")
    command = ["--data-root", str(args.data.parent), "--runs-root", str(args.runs.parent), "study", str(args.plan),
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

"""Study plans (``studies/*.yaml``): the corpus, the results folder, the runs in training order, an optional
budget (:mod:`.budgeted`) and steps (the study's own scripts, run by ``python -m onmt_lma.study.runs``).
"""

import dataclasses
import os
from pathlib import Path

import yaml

from onmt_lma.model.lma import DEFAULT_SEGMENTS


REPO = Path(__file__).resolve().parents[2]


#: local copies of raw corpora (tests, demos), else the corpus is downloaded
SHARED_DATA = Path(os.environ.get("LMA_DATA", REPO.parent / "shared" / "data"))


class StudyError(ValueError):
    """A plan or run that cannot be carried out (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a study: the teacher, or a student of ``size`` with ``activation``, ``seed``, ``segments``;
    a diagnostic's ``variant`` names it apart and adds its ``settings`` ((key, value) on top of the recipe)."""

    size: int = 0
    activation: str = "relu"
    seed: int = 1
    segments: int = DEFAULT_SEGMENTS
    teacher: bool = False
    variant: str = ""
    settings: tuple = ()
    part: str = "main"  # "main", or the diagnostic's letter
    what: str = ""  # what the variant changes, for reports

    @property
    def name(self):
        return "teacher" if self.teacher else student_name(self.size, self.activation, self.seed, self.segments,
                                                           variant=self.variant)


def student_name(size, activation, seed, segments=DEFAULT_SEGMENTS, distilled=True, variant=""):
    """``student64_lma_seed1``; other segment counts are named (``student64_lma12_seed1``), variants
    (``student64_lma_continuous_seed1``) and undistilled runs too (``..._nokd``)."""
    name = f"student{size}_{activation}" + ("" if segments == DEFAULT_SEGMENTS else str(segments))
    name += f"_{variant}" if variant else ""
    return f"{name}_seed{seed}" + ("" if distilled else "_nokd")


@dataclasses.dataclass(frozen=True)
class Step:
    """One of a study's own scripts (a probe, a rule's check, a table): ``python -m onmt_lma.study.probes.<module>
    ARGS``, run from the repository root."""

    name: str
    module: str
    args: tuple = ()
    what: str = ""

    def command(self, extra=()):
        import sys

        return [sys.executable, "-m", f"onmt_lma.study.probes.{self.module}", *self.args, *extra]


#: what a plan's ``steps`` entry holds
STEP_KEYS = ("module", "args", "what")


def load_steps(path, entries):
    """``{name: Step}`` of a plan's ``steps`` section, each module checked to be one of onmt_lma.study.probes."""
    import importlib.util

    steps = {}
    for name, entry in (entries or {}).items():
        if not isinstance(entry, dict) or set(entry) - set(STEP_KEYS) or "module" not in entry:
            raise StudyError(f"{path}: step {name!r}: expected {{module, args, what}} (module required), got {entry!r}")
        if importlib.util.find_spec(f"onmt_lma.study.probes.{entry['module']}") is None:
            raise StudyError(f"{path}: step {name!r}: no module onmt_lma.study.probes.{entry['module']}")
        steps[name] = Step(name, entry["module"], tuple(str(a) for a in entry.get("args") or ()), entry.get("what", ""))
    return steps


@dataclasses.dataclass
class Study:
    corpus: str
    results: Path
    runs: list
    label: str  # the plan's results folder, as commit messages name it
    kd_cache_topk: int = None  # students distil through the teacher's top-K cache (built once)
    runs_folder: str = None  # RUNS_ROOT/<this>/<run> (default: the corpus)
    budget: dict = None  # a budgeted study (onmt_lma.study.budgeted): the pilot's rule, checkpoints, averaging
    title: str = ""
    labels: dict = dataclasses.field(default_factory=dict)  # activation -> its name in reports
    steps: dict = dataclasses.field(default_factory=dict)  # name -> Step: the study's own scripts

    @property
    def students(self):
        return [run for run in self.runs if not run.teacher]

    def runs_dir(self, runs_root):
        return Path(runs_root) / (self.runs_folder or self.corpus)

    def activation_label(self, activation):
        return self.labels.get(activation, activation)

    def run_label(self, run):
        """``ReLU``, ``LMA-8, continuous``: the activation's label and what the variant changes."""
        return self.activation_label(run.activation) + (f", {run.what}" if run.what else "")


BUDGET_KEYS = ("pilot", "min_steps", "max_steps", "window", "tolerance", "every", "bleu_every", "average_last")


PLAN_FORMAT = ("corpus, results, runs (each 'teacher' or a group {size, activations, seeds; optional segments, "
               "part, variant, what, settings}); optional kd_cache, runs_folder, title, labels, budget, steps")


def load_plan(path):
    """A plan file: ``corpus``, ``results`` and ``runs`` in training order, each ``teacher`` or a group
    ``{size, activations, seeds, segments}`` (segments default to the paper's 8; a diagnostic group adds
    ``part``, ``variant``, ``what`` and ``settings``); optional ``kd_cache: K`` (students distil from the
    teacher's top-K cache), ``runs_folder``, ``title``, ``labels`` and ``budget`` (the pilot's rule
    of :mod:`onmt_lma.study.budgeted`, with all of :data:`BUDGET_KEYS`; ``fixed_by``: the repository path of
    another plan's ``BUDGET.json`` whose N this plan's runs take, its pilot being that plan's run)."""
    plan = yaml.safe_load(Path(path).read_text())
    try:
        runs = []
        for entry in plan["runs"]:
            if entry == "teacher":
                runs.append(Run(teacher=True))
                continue
            unknown = set(entry) - {"size", "activations", "seeds", "segments", "part", "variant", "what", "settings"}
            if unknown:
                raise KeyError(f"unknown keys {sorted(unknown)}")
            extra = dict(variant=str(entry.get("variant", "")), settings=tuple((entry.get("settings") or {}).items()),
                         part=str(entry.get("part", "main")), what=str(entry.get("what", "")))
            for seed in entry["seeds"]:
                for segments in entry.get("segments", [DEFAULT_SEGMENTS]):
                    runs.extend(Run(entry["size"], activation, seed, segments, **extra)
                                for activation in entry["activations"])
        budget = plan.get("budget")
        if budget is not None and set(budget) - {"fixed_by"} != set(BUDGET_KEYS):
            raise KeyError(f"budget needs exactly {', '.join(BUDGET_KEYS)} (and optionally fixed_by)")
        study = Study(plan["corpus"], Path(os.environ.get("RESULTS") or REPO / plan["results"]), runs,
                      plan["results"], plan.get("kd_cache"), plan.get("runs_folder"), budget,
                      plan.get("title", plan["results"]), dict(plan.get("labels") or {}), load_steps(path, plan.get("steps")))
    except (KeyError, TypeError, AttributeError) as error:
        raise StudyError(f"{path}: not a study plan ({PLAN_FORMAT}): {error!r}") from None
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: a run is planned twice ({sorted({n for n in names if names.count(n) > 1})})")
    if study.runs_folder and len(Path(study.runs_folder).parts) != 1:
        raise StudyError(f"{path}: runs_folder {study.runs_folder!r}: expected one folder name (RUNS_ROOT/<it>)")
    if study.runs_folder and budget is None:
        raise StudyError(f"{path}: runs_folder is for a budgeted study (with budget); a study without one trains "
                         f"in RUNS_ROOT/{study.corpus} as scripts/train_student.sh does")
    if budget is not None and budget.get("fixed_by"):
        if not (REPO / budget["fixed_by"]).is_file():
            raise StudyError(f"{path}: budget fixed_by {budget['fixed_by']!r}: no such file in the repository "
                             "(expected another plan's BUDGET.json)")
    elif budget is not None and budget["pilot"] not in names:
        raise StudyError(f"{path}: the budget's pilot {budget['pilot']!r} is not one of the runs (or give fixed_by: "
                         "the BUDGET.json of the plan whose pilot fixed N)")
    return study

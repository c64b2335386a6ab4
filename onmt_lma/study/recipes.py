"""Recipes: compose a run's OpenNMT-py config, and train it resumably.

A run's config is ``recipes/common.yaml`` + ``recipes/<corpus>/<model>.yaml`` +
the corpus's ``data.yaml`` (from ``python -m data_prep``) + the run's own
settings (activation, seed, teacher, where to save), later files overriding
earlier ones.  OpenNMT-py reads one ``-config`` file, so the result is written
to ``RUN_DIR/config.yaml``.

    python -m onmt_lma.study.recipes train CORPUS MODEL --data DIR --run-dir DIR [--set KEY=VALUE ...]
    python -m onmt_lma.study.recipes compose CORPUS MODEL --data DIR --run-dir DIR [--set ...]

``train`` never overwrites a finished run (``RUN_DIR/DONE``), resumes an
interrupted one from its latest checkpoint, and refuses a run directory whose
config differs from the one composed now.
"""

import argparse
import contextlib
import fcntl
import re
import sys
from pathlib import Path

import yaml

from data_prep.sources import CORPORA as PREPARED_CORPORA  # noqa: E402

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CORPORA = tuple(PREPARED_CORPORA)  # the corpora data_prep makes, each with its recipes
MODELS = ("teacher", "student256", "student128", "student64")


class RecipeError(ValueError):
    """A recipe, corpus or run directory that cannot be used."""


def recipe_files(corpus, model):
    if corpus not in CORPORA:
        raise RecipeError(f"unknown corpus {corpus!r}; valid: {', '.join(CORPORA)}")
    if model not in MODELS:
        raise RecipeError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    return [RECIPES / "common.yaml", RECIPES / corpus / f"{model}.yaml"]


def _load(path):
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path} does not exist") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{path}: expected a mapping of options")
    return content


def parse_setting(text):
    """``KEY=VALUE`` with VALUE read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def compose(corpus, model, data_dir, run_dir, settings=()):
    """The run's options as one dict, in override order."""
    config = {}
    for path in recipe_files(corpus, model):
        config.update(_load(path))
    data_yaml = Path(data_dir) / "data.yaml"
    if not data_yaml.is_file():
        raise RecipeError(
            f"{data_yaml} does not exist: prepare the corpus first (python -m data_prep {corpus} --out {data_dir})"
        )
    config.update(_load(data_yaml))
    run_dir = Path(run_dir).resolve()
    config.update(
        save_model=str(run_dir / "model"),
        log_file=str(run_dir / "train.log"),
        save_data=str(run_dir / "samples"),
    )
    config.update(dict(settings))
    return config


def write_config(config, path):
    text = "# composed by python -m onmt_lma.study.recipes; edit the recipes, not this file\n"
    text += yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    Path(path).write_text(text, encoding="utf-8")


def checkpoints(run_dir):
    """Checkpoints of ``run_dir`` by step, oldest first."""
    found = []
    for path in Path(run_dir).glob("model_step_*.pt"):
        match = re.fullmatch(r"model_step_(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_readable_checkpoint(run_dir):
    """The newest checkpoint of ``run_dir`` that loads; unreadable ones are skipped with a warning
    (a kill during a save by a version without atomic saves leaves a truncated file)."""
    from onmt.utils.logging import logger

    from onmt_lma.base.checkpoint import CheckpointError, load as load_checkpoint

    for path in reversed(checkpoints(run_dir)):
        try:
            load_checkpoint(path)
            return path
        except CheckpointError as error:
            logger.warning("skipping %s: %s", path.name, error)
    return None


@contextlib.contextmanager
def exclusive_lock(path, busy):
    """Hold the lock file ``path`` (no second process gets it); ``busy``: the error's message."""
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecipeError(busy) from None
        yield


def run_lock(run_dir):
    """Hold ``RUN_DIR/.lock`` so that no two processes train one run."""
    return exclusive_lock(Path(run_dir) / ".lock", f"{run_dir} is being trained by another process")


def train(corpus, model, data_dir, run_dir, settings=()):
    """Train (or resume, or skip) one run; returns its final checkpoint."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _train_locked(corpus, model, data_dir, run_dir, settings)


def _train_locked(corpus, model, data_dir, run_dir, settings):
    from onmt.utils.logging import init_logger, logger

    from onmt_lma.bin import train as train_cli

    init_logger(str(run_dir / "train.log"))  # what the recipe decides goes to the run's log too
    done = run_dir / "DONE"
    if done.exists():
        final = run_dir / done.read_text().strip()
        logger.info("%s: finished already (%s); remove the directory to retrain", run_dir, final)
        return final
    config = compose(corpus, model, data_dir, run_dir, settings)
    config_path = run_dir / "config.yaml"
    wanted = yaml.safe_dump(config, sort_keys=False)
    if config_path.exists():
        existing = yaml.safe_dump(_load(config_path), sort_keys=False)
        if existing != wanted:
            raise RecipeError(
                f"{config_path} was composed with other settings than now; "
                "remove the run directory to start again"
            )
    write_config(config, config_path)
    args = ["-config", str(config_path)]
    latest = latest_readable_checkpoint(run_dir)
    if latest:
        logger.info("%s: resuming from %s", run_dir, latest.name)
        args += ["-train_from", str(latest)]
    else:
        logger.info("%s: training %s %s, %s steps", run_dir, corpus, model, config["train_steps"])
    train_cli.main(args)
    final = run_dir / f"model_step_{config['train_steps']}.pt"
    if not final.exists():
        raise RecipeError(f"training ended without {final}: see {run_dir / 'train.log'}")
    done.write_text(final.name + "\n")
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_lma.study.recipes", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("compose", "train"))
    parser.add_argument("corpus", choices=CORPORA)
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--data", required=True, help="prepared corpus directory (with data.yaml)")
    parser.add_argument("--run-dir", required=True, help="where the run's files go")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run setting, e.g. pos_ffn_activation_fn=lma, seed=2, kd_teacher=PATH")
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.set]
        if args.action == "compose":
            config = compose(args.corpus, args.model, args.data, args.run_dir, settings)
            Path(args.run_dir).mkdir(parents=True, exist_ok=True)
            write_config(config, Path(args.run_dir) / "config.yaml")
            print(Path(args.run_dir) / "config.yaml")
        else:
            print(train(args.corpus, args.model, args.data, args.run_dir, settings))
    except RecipeError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())

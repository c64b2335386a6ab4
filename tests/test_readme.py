"""The README's command examples run as written, on a tiny configuration of the real Multi30k data, so that
the README cannot drift from the code: every ```bash block after '<!-- executed by tests/test_readme.py -->'
runs in order, with the example YAML, in a fresh folder; only sizes and step counts are made tiny (each
replacement must still find its text in the README)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from command_server import python_script
from conftest import REPO, CommandServer, shared_data

MARKER = "<!-- executed by tests/test_readme.py -->"
#: README text -> what the test runs instead (tiny sizes and step counts, the data at hand)
REPLACEMENTS = {
    "--source ../shared/data/multi30k": "--source {shared}/multi30k",
    "-train_steps 20000": "-train_steps 4",
    "-train_steps 30000": "-train_steps 6",
    "_step_20000.pt": "_step_4.pt",
    "_step_25000.pt": "_step_5.pt",
    "_step_30000.pt": "_step_6.pt",
    "-hidden_size 512 -word_vec_size 512 -layers 6": "-hidden_size 32 -word_vec_size 32 -layers 1",
}
#: the example YAML made tiny; everything else in it is run as written
TINY = {"layers": 1, "hidden_size": 16, "word_vec_size": 16, "transformer_ff": 32, "heads": 2,
        "batch_size": 512, "warmup_steps": 10, "save_checkpoint_steps": 1, "valid_steps": 1000,
        "bucket_size": 1024, "num_workers": 0, "max_length": 20}
LINES = {"train": 300, "valid": 30, "test": 30}  # the prepared corpus cut to this many lines per split


def readme():
    return (REPO / "README.md").read_text(encoding="utf-8")


def executed_commands(text):
    """The commands of the marked bash blocks, in order, continuation lines joined, comments dropped."""
    blocks = re.findall(re.escape(MARKER) + r"\n```bash\n(.*?)```", text, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_marked_blocks_hold_every_step_of_the_pipeline():
    commands = " ".join(executed_commands(readme()))
    for step in ("python -m data_prep", "onmt_lma_build_vocab", "-train_from", "onmt_lma_translate",
                 "onmt_lma_average_models", "onmt_lma_evaluate", "-kd_teacher", "onmt_lma_distill_data",
                 "onmt_lma_teacher_cache", "-kd_cache", "onmt_lma_quantize", "onmt_lma_export", "-engine native"):
        assert step in commands, step
    for text in REPLACEMENTS:
        assert text in commands, f"{text!r} is no longer in the README's examples: update REPLACEMENTS"


def cut_prepared_corpus(data):
    for split, count in LINES.items():
        names = [f"{split}.de", f"{split}.en"] + (["test.ref.tok.en", "test.ref.detok.en"] if split == "test" else [])
        for name in names:
            lines = (data / name).read_text(encoding="utf-8").splitlines()[:count]
            (data / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def run_as_bash_would(command, cwd, env):
    """``bash -c command``; a plain command of one of the venv's scripts (no shell syntax but a comment) is
    split as bash splits it and run by the tests' command server (the same argv, without ~2 s of imports)."""
    argv = shlex.split(command, comments=True)
    script = Path(sys.executable).parent / argv[0]
    if CommandServer.get() and script.is_file() and python_script(script) and not set(command.split("#")[0]) & set("|&;<>$`()*?[]{}~'\"\\"):
        return CommandServer.run([str(script), *argv[1:]], timeout=600, cwd=cwd, env=env)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_the_readme_examples_run_as_written(tmp_path):
    text = readme()
    example = yaml.safe_load(re.search(r"## Example.*?```yaml\n(.*?)```", text, re.S)[1])
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({**example, **TINY}, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in executed_commands(text):
        for old, new in REPLACEMENTS.items():
            command = command.replace(old, new.format(shared=shared_data()))
        result = run_as_bash_would(command, tmp_path, env)
        assert result.returncode == 0, f"README command failed: {command}\n{result.stderr[-3000:]}"
        if command.startswith("python -m data_prep"):
            cut_prepared_corpus(tmp_path / "data" / "multi30k")
    run = tmp_path / "run" / "multi30k"
    assert len((tmp_path / "hyp.en").read_text().splitlines()) == LINES["test"]
    assert len((tmp_path / "hyp.int8.en").read_text().splitlines()) == LINES["test"]
    assert (tmp_path / "hyp.native.en").read_text() == (tmp_path / "hyp.en").read_text()  # the same translations
    for name in ("student64_lma_step_6.pt", "student64_lma_avg.pt", "teacher_step_6.pt", "student64_lma_kd_step_6.pt",
                 "student64_lma_cached_step_6.pt", "teacher_top32/manifest.json", "student64_lma.int8.pt"):
        assert (run / name).is_file(), name
    for name in ("student64_lma_step_6.pt", "student64_lma_avg.pt"):
        result = json.loads((run / f"{name}.eval.json").read_text())
        assert result["test_sentences"] == LINES["test"] and 0 <= result["chrf"]["score"] <= 100
        assert result["model"]["activation"] == "lma" and not result["checkpoint"].startswith("/")
    distilled = tmp_path / "data" / "multi30k" / "train.distilled.en"
    assert len(distilled.read_text().splitlines()) == LINES["train"]
    assert (distilled.parent / "train.distilled.en.json").is_file()

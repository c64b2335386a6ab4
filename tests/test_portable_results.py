"""Committed results hold no absolute path of the machine they were made on (paths relative to the
repository or the run folder), so that they read the same on every clone."""

import re

import pytest

from conftest import REPO

#: an absolute path: "/" + at least two components, not inside a word, a URL ("//") or "~/"
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\-])/(?!/)[\w.+-]+/[\w.+/-]+")


def result_files():
    return sorted(p for p in (REPO / "results").rglob("*") if p.is_file())


def text_of(path):
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # plots, checkpoints
        return None


def absolute_paths(text):
    return [(number, match) for number, line in enumerate(text.splitlines(), 1)
            for match in ABSOLUTE_PATH.findall(line)]


def test_the_pattern_finds_absolute_paths_and_nothing_else():
    assert absolute_paths('"checkpoint": "/work/main/runs/x/model.pt"') == [(1, "/work/main/runs/x/model.pt")]
    assert absolute_paths("src_vocab: /home/me/data/vocab.de\nlog: C:/x") == [(1, "/home/me/data/vocab.de")]
    for fine in ("runs/multi30k/teacher/model_step_2000.pt", "674/735 tok/s", "Step 1020/ 6000",
                 "https://github.com/multi30k/dataset", "../shared/data/multi30k", "~/.cache/torch_extensions",
                 "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0", "a/b/c"):
        assert absolute_paths(fine) == [], fine


def test_no_committed_result_holds_an_absolute_path():
    files = result_files()
    if not files:
        pytest.skip("no results/ folder in this checkout")
    found = [f"{path.relative_to(REPO)}:{number}: {match}" for path in files if (text := text_of(path)) is not None
             for number, match in absolute_paths(text)]
    assert not found, "absolute paths in committed results:\n" + "\n".join(found[:20])

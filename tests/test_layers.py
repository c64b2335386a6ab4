"""The two floors: the plugin core (onmt_lma) never imports the study layer (onmt_lma.study)."""

import ast

from conftest import REPO


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_core_never_imports_the_study_layer():
    core = [p for p in (REPO / "onmt_lma").rglob("*.py") if "study" not in p.relative_to(REPO / "onmt_lma").parts]
    assert len(core) > 10
    offenders = [f"{p.relative_to(REPO)} imports {m}" for p in core for m in imported_modules(p)
                 if m.startswith("onmt_lma.study")]
    assert not offenders, offenders


def test_the_study_layer_builds_on_the_core():
    study = list((REPO / "onmt_lma" / "study").glob("*.py"))
    assert {p.name for p in study} >= {"recipes.py", "report.py", "plots.py", "benchmark.py"}
    assert any(m.startswith("onmt_lma.") and not m.startswith("onmt_lma.study")
               for p in study for m in imported_modules(p))

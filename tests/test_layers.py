"""The house: layers that import downwards only, no import cycle, modules of at most 400 lines, a short README
and few scripts (docs/architecture.md)."""

import ast

import pytest

from conftest import REPO

PACKAGE = REPO / "onmt_lma"
#: the packages the layers cover: onmt-lma's and data_prep (``python -m data_prep``), a layer of its own
PACKAGES = [PACKAGE, REPO / "data_prep"]
#: the layers, bottom first; a module may import from its own layer and those below
LAYERS = ["base", "data_prep", "model", "training", "deploy", "evaluation", "serve", "bin", "study"]
#: at most this many parameters a function of these layers takes (self and cls not counted)
MAX_PARAMETERS = 6
PARAMETER_LAYERS = ("deploy", "serve", "evaluation")
MAX_MODULE_LINES = 400


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return {module_name(p): p for package in PACKAGES for p in package.rglob("*.py")}


def imported_modules(path, known):
    """Every onmt_lma module ``path`` imports, at any depth of the file (a function's imports count too),
    resolved to the module that defines the name; importing ``a.b.c`` imports ``a`` and ``a.b`` first."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith(("onmt_lma", "data_prep")):
            found.add(name)
    own = module_name(path)
    parts = own.split(".")
    found |= {".".join(parts[:i]) for i in range(1, len(parts))}  # the parent packages
    found.discard(own)
    return found


def graph():
    known = modules()
    return {name: imported_modules(path, known) for name, path in known.items()}


def layer(name):
    parts = name.split(".")
    if parts[0] == "data_prep":
        return LAYERS.index("data_prep")
    if len(parts) == 1:
        return -1  # the package itself: imports nothing
    if parts[1] == "api":
        return LAYERS.index("bin")
    return LAYERS.index(parts[1])


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_is_in_a_layer():
    unplaced = [name for name in modules() if name.startswith("onmt_lma.")
                and name.split(".")[1] not in LAYERS + ["api"] and not name.split(".")[1].startswith("_")]
    assert not unplaced, f"modules outside the layers {LAYERS}: {unplaced}"
    assert len(modules()) > 40


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layers_import_downwards_only():
    upward = [f"{name} ({LAYERS[layer(name)] if layer(name) >= 0 else 'package'}) imports {other} "
              f"({LAYERS[layer(other)]})"
              for name, imported in graph().items() for other in imported
              if other != "onmt_lma" and layer(other) > layer(name)]
    assert not upward, upward


def test_the_core_never_imports_the_study_layer():
    offenders = [f"{name} imports {other}" for name, imported in graph().items() if ".study" not in name
                 for other in imported if other.startswith("onmt_lma.study")]
    assert not offenders, offenders


def test_a_package_init_imports_nothing_of_its_own():
    heavy = [name for name, imported in graph().items() if modules()[name].name == "__init__.py"
             and any(other.startswith(name + ".") for other in imported)]
    assert not heavy, heavy


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_at_most_400_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)}: {lines} lines; split it where a concern ends"


def test_scripts_are_few_and_the_readme_short():
    scripts = sorted(p.name for p in (REPO / "scripts").iterdir() if p.is_file())
    assert len(scripts) <= 10, scripts
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
    architecture = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert len(architecture.splitlines()) <= 80
    undocumented = [name for name in modules() if name.count(".") == 2 and f"`{name.split('.', 1)[1]}`" not in
                    architecture and not name.endswith("__init__")]
    assert not undocumented, f"docs/architecture.md lacks a line for {undocumented}"


def parameter_counts(path):
    """``(function, line, parameters)`` of every function and method in ``path`` (self and cls not counted)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x is not None]
            found.append((node.name, node.lineno, len([n for n in names if n not in ("self", "cls")])))
    return found


def test_no_function_of_deploy_serve_or_evaluation_takes_more_than_six_parameters():
    long = [f"{name}.{function} (line {line}): {count}" for name, path in modules().items()
            if name.split(".")[1:2] and name.split(".")[1] in PARAMETER_LAYERS
            for function, line, count in parameter_counts(path) if count > MAX_PARAMETERS]
    assert not long, f"more than {MAX_PARAMETERS} parameters (pass one value: a dataclass): {long}"


def test_the_parameter_count_sees_every_kind_of_parameter(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("class A:\n    def f(self, a, /, b, *c, d, **e): pass\ndef g(): pass\n")
    assert sorted(parameter_counts(source)) == [("f", 2, 5), ("g", 3, 0)]


def test_every_name_imported_from_the_package_exists():
    """``from onmt_lma.x import name`` anywhere (a function's imports too, which only run when called) names
    something that module has: a moved name breaks here, not on a user's first call."""
    import importlib

    missing = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in (
                    "onmt_lma", "data_prep"):
                module = importlib.import_module(node.module)
                missing += [f"{name} line {node.lineno}: {node.module}.{alias.name}" for alias in node.names
                            if not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in modules()]
    assert not missing, missing


def function_level_imports(path):
    """``(line number, line)`` of each import inside a function whose group carries no comment saying why it
    is not at the top (the comment on its line or on an import line of its group above it)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = set()
    for function in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    group, at = [], node.lineno - 1
                    while at >= 0 and (lines[at].strip().startswith(("import ", "from ")) or not lines[at].strip()):
                        group.append(lines[at])
                        at -= 1
                    if not any("#" in line for line in group):
                        found.add((node.lineno, lines[node.lineno - 1].strip()))
    return sorted(found)


def test_imports_are_at_the_top_or_say_why_not():
    """Imports at a module's top show its dependencies; one inside a function (start-up time, an optional
    library) says why.  The study layer's probes, scripts of their own, are left out."""
    unexplained = [f"{name} line {number}: {line}" for name, path in modules().items()
                   if not name.startswith("onmt_lma.study") for number, line in function_level_imports(path)]
    assert not unexplained, unexplained


def test_the_import_check_sees_an_unexplained_one(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    import json  # here: a reason\n    import os\n\ndef g():\n    import sys\n")
    assert function_level_imports(source) == [(6, "import sys")]


def test_every_module_that_imports_opennmt_py_silences_its_warnings_first():
    """``onmt_lma.base.onmt_import`` before a module's first OpenNMT-py import (the commands: ``onmt_lma.bin``'s
    package does it), so that a library user's import prints none of OpenNMT-py's known warnings."""
    late = []
    for name, path in modules().items():
        if name.startswith("onmt_lma.bin"):
            continue
        imported = []
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.append(node.module)
        first = next((i for i, module in enumerate(imported) if module.split(".")[0] == "onmt"), None)
        if first is not None and "onmt_lma.base.onmt_import" not in imported[:first]:
            late.append(name)
    assert not late, late

"""The package's layers as ARCHITECTURE.md draws them: no import upward, and the portable core it lists is what the
guide's scripts reach, importing nothing beyond what the guide's Python 3.7 host has."""
import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "convmixer_suite"
LAYERS = ("util", "model", "guide", "precision", "runtimes", "run", "bench", "tools", "commands")
GUIDE_ENTRIES = ("convmixer_net.py", "convmixer_pth2onnx.py", "convmixer_preprocess.py", "convmixer_infer.py",
                 "convmixer_eval_acc.py", "convmixer_classify.py", "test/parse.py")
GUIDE_HOST_LIBRARIES = {"numpy", "PIL", "tqdm", "torch", "onnx"}


def dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict:
    return {dotted(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(tree, module_level_only: bool) -> set:
    """Every module an import statement names (``from a.b import c`` gives ``a.b`` and ``a.b.c``); with
    ``module_level_only``, those that run on import (not inside functions or classes)."""
    nodes = []

    def collect(body):
        for node in body:
            nodes.append(node)
            for field in ("body", "orelse", "finalbody"):
                if isinstance(node, (ast.If, ast.Try)) and hasattr(node, field):
                    collect(getattr(node, field))
            for handler in getattr(node, "handlers", []):
                collect(handler.body)

    if module_level_only:
        collect(tree.body)
    else:
        nodes = list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> "str | None":
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "convmixer_suite" and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside the layers' folders: {loose}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(LAYERS), f"folders ARCHITECTURE.md does not name: {sorted(folders - set(LAYERS))}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, path in package_modules().items():
        own = layer_of(module)
        if own is None:
            continue
        for name in imported_names(ast.parse(path.read_text()), module_level_only=False):
            other = layer_of(name)
            if other and LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{module} imports {name}")
    assert not upward, "imports upward:\n" + "\n".join(sorted(set(upward)))


def test_library_does_not_import_the_scripts():
    for module, path in package_modules().items():
        scripts = {n for n in imported_names(ast.parse(path.read_text()), module_level_only=False)
                   if re.match(r"convmixer_(?!suite)\w+$", n.split(".")[0])}
        assert not scripts, f"{module} imports top-level scripts {scripts}"


def declared_portable_core() -> set:
    """The modules ARCHITECTURE.md lists under "The portable core": ``- `folder/``` (all of it) or
    ``- `folder/`: `a`, `b``` (those)."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## The portable core", 1)[1].split("\n## ", 1)[0]
    modules = {"convmixer_suite"}
    all_modules = package_modules()
    for folder, listed in re.findall(r"^- `(\w+)/`(?::(.*))?$", section, re.M):
        assert folder in LAYERS, f"ARCHITECTURE.md's portable core names an unknown folder {folder}/"
        prefix = f"convmixer_suite.{folder}"
        modules.add(prefix)
        if listed:
            names = {f"{prefix}.{name}" for name in re.findall(r"`(\w+)`", listed)}
            missing = names - set(all_modules)
            assert not missing, f"ARCHITECTURE.md lists modules that do not exist: {sorted(missing)}"
            modules |= names
        else:
            modules |= {m for m in all_modules if m.startswith(prefix + ".")}
    assert len(modules) > 10, "ARCHITECTURE.md's portable core list was not found"
    return modules


def reached_from_guide_entries() -> set:
    """The package modules the guide's scripts import when they start (module-level imports, followed)."""
    all_modules = package_modules()
    reached, todo = set(), [REPO / entry for entry in GUIDE_ENTRIES]
    seen = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(ast.parse(path.read_text()), module_level_only=True):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in all_modules:
                    reached.add(prefix)
                    todo.append(all_modules[prefix])
    return reached


def test_the_portable_core_is_what_the_guide_reaches():
    declared, reached = declared_portable_core(), reached_from_guide_entries()
    assert reached <= declared, f"the guide's scripts reach modules outside the portable core: " \
                                f"{sorted(reached - declared)} (list them in ARCHITECTURE.md, or import them later)"
    listed_only = {m for m in declared - reached if m.count(".") >= 2 and layer_of(m) not in ("util", "model", "guide")}
    assert not listed_only, f"ARCHITECTURE.md lists modules the guide's scripts do not reach: {sorted(listed_only)}"


@pytest.mark.parametrize("module", sorted(declared_portable_core()))
def test_portable_core_imports_only_what_the_guide_host_has(module):
    path = package_modules()[module]
    outside = set()
    for name in imported_names(ast.parse(path.read_text()), module_level_only=True):
        top = name.split(".")[0]
        if top != "convmixer_suite" and top not in sys.stdlib_module_names and top not in GUIDE_HOST_LIBRARIES:
            outside.add(top)
        if top == "convmixer_suite" and layer_of(name) and name not in declared_portable_core() \
                and name.rpartition(".")[0] not in declared_portable_core():
            outside.add(name)
    assert not outside, f"{module} imports at module level what the guide's host may lack: {sorted(outside)}"

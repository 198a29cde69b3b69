"""pyproject.toml and the requirements files pin the same packages, and the package ships its data files."""
import fnmatch
import importlib
import re
import tomllib
from pathlib import Path

from conftest import REPO

EXTRA_FILES = {"bench": "requirements-bench.txt", "dist": "requirements-dist.txt", "test": "requirements-test.txt"}


def pins(path: Path) -> set:
    """The pinned requirements of a file and of the files it includes with -r."""
    found = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found |= pins(path.parent / line[3:].strip())
        elif line:
            found.add(line)
    return found


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def extra_pins(name: str) -> set:
    """An extra's pins, with the extras it names (convmixer-suite[bench,dist]) expanded."""
    found = set()
    for requirement in project()["optional-dependencies"][name]:
        nested = re.fullmatch(r"convmixer-suite\[(.+)\]", requirement)
        if nested:
            for other in nested.group(1).split(","):
                found |= extra_pins(other)
        else:
            found.add(requirement)
    return found


def test_dependencies_are_requirements_txt():
    assert set(project()["dependencies"]) == pins(REPO / "requirements.txt")


def test_each_extra_is_its_requirements_file():
    base = pins(REPO / "requirements.txt")
    for extra, file in EXTRA_FILES.items():
        assert extra_pins(extra) == pins(REPO / file) - base, extra


def test_every_data_file_of_the_package_is_package_data():
    """A non-editable install copies only what package-data names: the class table, the native sources, the report
    templates must all be matched by their package's patterns."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]
    data_files = [p for p in (REPO / "convmixer_suite").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert {"imagenet_classes.tsv", "depthwise_block.cpp", "evaluation.html.j2"} <= {p.name for p in data_files}
    for path in data_files:
        package = next(parent for parent in path.parents if (parent / "__init__.py").is_file())
        name = ".".join(package.relative_to(REPO).parts)
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns.get(name, ())), \
            f"{path.relative_to(REPO)} is not package data of {name}"
    assert config["py-modules"] == ["convmixer_net"]
    assert config["packages"]["find"]["include"] == ["convmixer_suite", "convmixer_suite.*"]


def test_every_command_is_installed():
    """One installed command per module of convmixer_suite/commands, each entering through its run()."""
    modules = sorted(p.stem for p in (REPO / "convmixer_suite" / "commands").glob("*.py") if p.stem != "__init__")
    scripts = project()["scripts"]
    assert scripts == {f"convmixer-{m.replace('_', '-')}": f"convmixer_suite.commands.{m}:run" for m in modules}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_the_gpu_requirements_are_requirements_txt_with_onnxruntime_gpu_in_place_of_onnxruntime():
    """onnxruntime and onnxruntime-gpu install the same module: the GPU file swaps one for the other, and nothing
    installs both (no file includes it, no extra lists onnxruntime-gpu beside the project's onnxruntime)."""
    gpu = pins(REPO / "requirements-gpu.txt")
    # requirements.txt's pins for the Python a GPU machine runs (markers for older ones dropped)
    cpu = {p.partition(";")[0].strip() for p in pins(REPO / "requirements.txt")
           if not p.partition(";")[2] or ">=" in p.partition(";")[2]}
    assert {p for p in gpu if not p.startswith("onnxruntime")} == {p for p in cpu if not p.startswith("onnxruntime")}
    assert [p.split("==")[0] for p in gpu if p.startswith("onnxruntime")] == ["onnxruntime-gpu"]
    included = {line.split()[1] for path in REPO.glob("requirements*.txt") for line in path.read_text().splitlines()
                if line.startswith("-r ")}
    assert "requirements-gpu.txt" not in included
    assert not any("onnxruntime-gpu" in p for extra in project()["optional-dependencies"] for p in extra_pins(extra))

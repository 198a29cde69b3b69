"""The machine's other CPythons for the tests, and the guide's Python 3.7 environment built once and cached.

The interpreters come from pyenv (``$PYENV_ROOT``, else ``~/.pyenv``) or PATH. The guide's environment is a
virtual environment of Python 3.7 with exactly the guide's pins, built on first use under the test cache
(``$CONVMIXER_TEST_CACHE``, else ``~/.cache/convmixer-suite-tests``), named by a hash of the interpreter and the
pins, and reused while a ``ready`` marker, written last, says it is complete.
"""
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

GUIDE_PYTHON = (3, 7)
# The guide's section 2, with the numpy of its day and the protobuf onnx 1.10.2 needs.
GUIDE_PINS = ("torch==1.5.0", "torchvision==0.6.0", "onnx==1.10.2", "Pillow==9.0.1", "numpy==1.21.6",
              "protobuf==3.20.3")
BUILD_TIMEOUT_S = 1800


def pyenv_pythons() -> dict:
    """{(major, minor): interpreter path} for every CPython 3 pyenv has, the newest patch of each."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = {}
    for folder in sorted(root.glob("3.*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)]):
        m = re.fullmatch(r"3\.(\d+)\.\d+", folder.name)
        python = folder / "bin" / "python3"
        if m and python.is_file():
            found[(3, int(m.group(1)))] = python
    return found


def find_python(version: tuple):
    """An interpreter of ``version`` (major, minor), from pyenv or PATH, or None."""
    python = pyenv_pythons().get(version) or shutil.which("python%d.%d" % version)
    if python and run_version(python) == version:
        return Path(python)
    return None


def run_version(python) -> tuple:
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return ()
    return tuple(map(int, out.stdout.split())) if out.returncode == 0 else ()


def missing(reason: str):
    """No such Python here: a skip with its reason, but a failure under CI, where it must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


def cache_root() -> Path:
    return Path(os.environ.get("CONVMIXER_TEST_CACHE") or Path.home() / ".cache" / "convmixer-suite-tests")


def guide_venv() -> Path:
    """The folder of the guide's Python 3.7 virtual environment, built with ``GUIDE_PINS`` when not cached."""
    python = find_python(GUIDE_PYTHON)
    if python is None:
        missing("no Python %d.%d on this machine (pyenv or PATH)" % GUIDE_PYTHON)
    key = hashlib.sha256("\n".join((str(python.resolve()),) + GUIDE_PINS).encode()).hexdigest()[:12]
    venv = cache_root() / f"guide-py37-{key}"
    ready = venv / "ready"
    if ready.is_file():
        return with_versioned_name(venv)
    shutil.rmtree(venv, ignore_errors=True)  # an earlier build that did not finish
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Built in place: a virtual environment's scripts (pip3.7 among them) name its folder, so it cannot move.
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *GUIDE_PINS], check=True, timeout=BUILD_TIMEOUT_S)
    ready.write_text("\n".join(GUIDE_PINS) + "\n")
    return with_versioned_name(venv)


def with_versioned_name(venv: Path) -> Path:
    """The guide calls its interpreter python3.7, a name that Python 3.7's venv does not create."""
    versioned = venv / "bin" / ("python%d.%d" % GUIDE_PYTHON)
    if not versioned.exists():
        versioned.symlink_to("python")
    return venv

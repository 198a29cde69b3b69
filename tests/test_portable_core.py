"""The modules the guide's scripts run on compile with every CPython this machine has, from the guide's 3.7 on.

Compiling catches the syntax a newer Python added (an assignment expression, a star in a yield); running the
guide's commands under Python 3.7 (test_guide_python37) catches the library calls.
"""
import subprocess

import pytest
from conftest import REPO
from old_pythons import GUIDE_PYTHON, missing, pyenv_pythons

COMPILE_ALL = """
import sys
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        compile(f.read(), path, "exec", dont_inherit=True)
"""


def sources() -> list:
    names = ["convmixer_net.py", *(p.name for p in REPO.glob("convmixer_*.py")),
             *(f"test/{p.name}" for p in (REPO / "test").glob("*.py"))]
    names += [str(p.relative_to(REPO)) for p in (REPO / "convmixer_suite").rglob("*.py")]
    return sorted(set(names))


PYTHONS = {version: python for version, python in pyenv_pythons().items() if version >= GUIDE_PYTHON}


@pytest.mark.parametrize("version", sorted(PYTHONS) or [GUIDE_PYTHON], ids=lambda v: "python%d.%d" % v)
def test_every_module_compiles(version):
    if version not in PYTHONS:
        missing("no pyenv CPython from %d.%d on here" % GUIDE_PYTHON)
    result = subprocess.run([str(PYTHONS[version]), "-c", COMPILE_ALL, *sources()], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr

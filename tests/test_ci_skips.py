"""Under CI=true a skip for want of a package that requirements-test.txt installs (or of g++, which .ci/run
installs) fails the run: a broken install must not read as a skip. Run on pytest itself, with this suite's
conftest as a plugin."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, ci_requirement_skipped, required_distributions

SKIPS = '''
import pytest

def test_required_package():
    pytest.skip("could not import 'nncf': No module named 'nncf'")

def test_optional_runtime():
    pytest.skip("optional runtime not installed: ncnn, pnnx (pip install -r requirements-runtimes.txt)")

@pytest.mark.skipif(True, reason="no C++ compiler (g++) here")
def test_compiler():
    pass

def test_hardware():
    pytest.skip("this CPU has no bf16")
'''
MODULE_SKIP = '''
import pytest
pytest.skip("could not import 'mlperf_loadgen': broken", allow_module_level=True)

def test_never():
    pass
'''


def run_pytest(tmp_path, ci: bool, name="test_skips.py", text=SKIPS):
    (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), **({"CI": "true"} if ci else {}))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "conftest", "-p", "no:cacheprovider",
                           name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_outside_ci_every_skip_stays_a_skip(tmp_path):
    result = run_pytest(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1].startswith("4 skipped")
    module = run_pytest(tmp_path, ci=False, name="test_module_skip.py", text=MODULE_SKIP)
    # exit status 5: no test ran
    assert module.returncode == 5 and module.stdout.splitlines()[-1].startswith("1 skipped"), module.stdout


def test_under_ci_a_skip_for_what_ci_installs_fails_the_run(tmp_path):
    result = run_pytest(tmp_path, ci=True)
    assert result.returncode == 1, result.stdout
    last = result.stdout.splitlines()[-1]
    assert last.startswith("1 failed, 2 skipped, 1 error"), result.stdout
    assert "FAILED test_skips.py::test_required_package" in result.stdout
    assert "ERROR test_skips.py::test_compiler" in result.stdout  # at setup: a skipif mark
    assert "CI=true: skipped for want of nncf, which CI installs" in result.stdout
    module = run_pytest(tmp_path, ci=True, name="test_module_skip.py", text=MODULE_SKIP)
    assert module.returncode != 0 and "ERROR test_module_skip.py" in module.stdout, module.stdout


@pytest.mark.parametrize("reason, missing", [
    ("could not import 'openvino': No module named 'openvino'", "openvino"),
    ("could not import 'ray.data': broken", "ray.data"),
    ("could not import 'mlperf_loadgen': x", "mlperf_loadgen"),
    ("not installed: openvino, nncf", "openvino"),
    ("optional runtime not installed: iree.compiler, iree.runtime (pip install -r requirements-runtimes.txt)", None),
    ("this machine has a CUDA GPU", None),
])
def test_what_a_skip_lacks_is_read_from_its_reason(reason, missing):
    assert ci_requirement_skipped(reason) == missing


def test_the_requirements_ci_installs_include_the_included_files():
    names = required_distributions()
    assert {"torch", "onnxruntime", "openvino", "nncf", "matplotlib", "mlcommons-loadgen", "ray", "pytest"} <= names
    assert "ncnn" not in names  # requirements-runtimes.txt: optional, not installed by CI


def test_ci_run_installs_g_plus_plus_when_missing_and_runs_the_tests_with_ci_true(tmp_path):
    """.ci/run in a copy whose test command is a stand-in, on a PATH without g++: apt-get (through sudo, as a user
    who is not root) installs it, then the tests run with CI=true."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / "test").mkdir()
    (repo / ".ci" / "run").write_text((REPO / ".ci" / "run").read_text())
    (repo / "test" / "run_tests.sh").write_text('echo "tests ran with CI=$CI"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "calls.log"
    stubs = {"apt-get": f'echo "apt-get $*" >> {log}', "sudo": f'echo "sudo" >> {log}; exec "$@"', "id": "echo 1000"}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    done = subprocess.run([shutil.which("bash"), str(repo / ".ci" / "run")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["==> installing g++ chromium (apt-get)", "tests ran with CI=true"]
    assert log.read_text().splitlines() == ["sudo", "apt-get update -qq", "sudo",
                                            "apt-get install -y -qq g++ chromium"]

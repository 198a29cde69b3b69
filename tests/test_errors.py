"""How a command line ends on an error (util.cli.run_main): a user's mistake in one line (exit 2), any other
failure in one line with its type and the way to its traceback (exit 1), the traceback with its causes under
--debug or CONVMIXER_DEBUG=1; and a runtime's failure keeps its cause."""
import sys
from pathlib import Path

import pytest

from convmixer_suite.runtimes import onnxruntime_backend
from convmixer_suite.runtimes.registry import create_backend
from convmixer_suite.util.cli import run_main
from convmixer_suite.util.errors import NotAvailable, SettingError, UserError

HINT = "(run with --debug or CONVMIXER_DEBUG=1 for the traceback)"


def ends(main, argv, capsys):
    """(exit status, stderr) of run_main(main, argv)."""
    with pytest.raises(SystemExit) as exited:
        run_main(main, argv)
    return exited.value.code, capsys.readouterr().err


def failing_runtime(argv):
    try:
        raise ValueError("the kernel's own complaint")
    except ValueError as exc:
        raise RuntimeError("model.onnx: the runtime could not start\nsecond line") from exc


def test_another_failure_is_one_line_with_its_type_and_the_hint(capsys, monkeypatch):
    monkeypatch.delenv("CONVMIXER_DEBUG", raising=False)
    status, err = ends(failing_runtime, [], capsys)
    assert status == 1 and "Traceback" not in err
    prog = Path(sys.argv[0]).name
    assert err.strip().splitlines() == [f"{prog}: error: RuntimeError: model.onnx: the runtime could not start {HINT}"]


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback_with_its_cause(capsys, monkeypatch, how):
    monkeypatch.delenv("CONVMIXER_DEBUG", raising=False)
    seen = []

    def main(argv):
        seen.append(argv)
        failing_runtime(argv)
    if how == "environment":
        monkeypatch.setenv("CONVMIXER_DEBUG", "1")
        argv = ["--model", "m.onnx"]
    else:
        argv = ["--model", "--debug", "m.onnx"]
    status, err = ends(main, argv, capsys)
    assert status == 1 and seen == [["--model", "m.onnx"]]
    assert err.count("Traceback (most recent call last)") == 2
    assert "ValueError: the kernel's own complaint" in err
    assert "The above exception was the direct cause of the following exception" in err
    assert err.strip().splitlines()[-1] == "second line" and HINT not in err


def test_a_user_error_is_still_one_line_with_status_2(capsys, monkeypatch):
    monkeypatch.delenv("CONVMIXER_DEBUG", raising=False)

    def main(argv):
        raise SettingError("device", "cuda:3: no such card", unavailable=True)
    status, err = ends(main, [], capsys)
    assert status == 2 and err.strip().endswith("error: --device cuda:3: no such card")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "--debug" not in err


def test_ctrl_c_is_130(capsys):
    def main(argv):
        raise KeyboardInterrupt
    status, err = ends(main, [], capsys)
    assert status == 130 and err.strip().endswith("interrupted")


def test_what_a_machine_lacks_is_a_user_error_marked_unavailable():
    assert issubclass(NotAvailable, UserError) and NotAvailable("x").unavailable
    assert not UserError("x").unavailable and not SettingError("device", "x").unavailable


class BrokenSession:
    def __init__(self, path, options, providers):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : a kernel failed\n  at line 2")


def test_a_runtime_failure_keeps_its_cause_and_is_not_a_user_error(small_onnx, monkeypatch, capsys):
    import onnxruntime
    fake = type("FakeOrt", (), {})()
    for name in ("__version__", "SessionOptions", "GraphOptimizationLevel", "get_available_providers"):
        setattr(fake, name, getattr(onnxruntime, name))
    fake.InferenceSession = BrokenSession
    monkeypatch.setattr(onnxruntime_backend, "import_library", lambda *args: fake)
    with pytest.raises(RuntimeError) as raised:
        create_backend("onnxruntime", small_onnx)
    assert not isinstance(raised.value, UserError)
    assert isinstance(raised.value.__cause__, RuntimeError) and "a kernel failed" in str(raised.value.__cause__)
    assert str(raised.value) == (f"{small_onnx}: onnxruntime could not start a session on CPUExecutionProvider: "
                                 f"RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : a kernel failed")
    monkeypatch.delenv("CONVMIXER_DEBUG", raising=False)
    status, err = ends(lambda argv: create_backend("onnxruntime", small_onnx), [], capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1 and err.strip().endswith(f"a kernel failed {HINT}")


def test_a_script_takes_debug_anywhere_without_its_parser_knowing_it(tmp_path):
    from conftest import run_script
    args = ("convmixer_infer.py", "--model", tmp_path / "missing.onnx", "--input", tmp_path, "--output", tmp_path / "o")
    plain = run_script(*args, env={"CONVMIXER_DEBUG": ""})
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        f"convmixer_infer.py: error: {tmp_path / 'missing.onnx'}: model file not found"]
    debug = run_script(*args[:3], "--debug", *args[3:], env={"CONVMIXER_DEBUG": ""})
    assert debug.returncode == 2 and debug.stderr.startswith("Traceback (most recent call last)")
    assert debug.stderr.strip().splitlines()[-1] == (
        f"convmixer_suite.util.errors.UserError: {tmp_path / 'missing.onnx'}: model file not found")


def test_debug_reaches_what_the_library_records_instead_of_raising(capsys, monkeypatch):
    """A benchmark configuration that fails is recorded, not raised: under --debug its traceback is logged too,
    and the flag's setting ends with the command."""
    import os

    from convmixer_suite.bench.loading import load_each
    monkeypatch.delenv("CONVMIXER_DEBUG", raising=False)
    lines = []

    def broken(name):
        raise RuntimeError(f"{name}: the runtime could not start")

    def benchmark(argv):
        assert argv == ["--quick"]
        loaded, skipped, failed = load_each(["a"], broken, lines.append)
        return 1 if failed else 0

    assert ends(benchmark, ["--quick"], capsys)[0] == 1
    assert lines == ["==> loading a", "    FAILED: RuntimeError: a: the runtime could not start"]
    lines.clear()
    assert ends(benchmark, ["--debug", "--quick"], capsys)[0] == 1
    assert lines[1] == "    FAILED: RuntimeError: a: the runtime could not start"
    assert lines[2].startswith("Traceback (most recent call last)") and "in broken" in lines[2]
    assert "CONVMIXER_DEBUG" not in os.environ

"""The project as a user installs it: ``pip install --no-deps .`` (not editable) from a copy of the repository into a
fresh venv that sees this Python's pinned libraries (--system-site-packages), then every command from an empty
folder outside the repository, with PYTHONPATH unset: the package must come from the venv's site-packages, every
command answers --help, and the README's quick start, the benchmark's engines check and a streaming evaluation run
there, each writing its files."""
import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
import torch
from conftest import REPO, offline_env, seeded_model, tracked_copy, write_photo_folder

COMMANDS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with the project installed from a copy of the repository (the copy is removed afterwards, so nothing
    can be imported from it); returns (bin folder, environment for its commands)."""
    root = tmp_path_factory.mktemp("installed")
    source = tracked_copy(root / "checkout")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root / "venv")],
                   check=True)  # pip and setuptools: this Python's, not an older copy in the venv
    bin_dir = root / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(offline_env(), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", RAY_AUTH_MODE="disabled")
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "--disable-pip-version-check", str(source)],
                             env=env, cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert install.returncode == 0, install.stderr
    shutil.rmtree(source)
    return bin_dir, env


def run(venv, cwd, *argv):
    bin_dir, env = venv
    return subprocess.run([str(bin_dir / argv[0]), *map(str, argv[1:])], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def ok(result):
    assert result.returncode == 0, (result.args, result.stderr[-2000:])
    return result


@pytest.fixture
def empty(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_package_comes_from_the_venv(venv, empty):
    bin_dir, _ = venv
    where = ok(run(venv, empty, "python", "-c", "import convmixer_suite, convmixer_net; "
                                                "print(convmixer_suite.__file__); print(convmixer_net.__file__)"))
    site = (bin_dir.parent / "lib").resolve()
    for path in where.stdout.split():
        assert path.startswith(str(site)) and "/site-packages/" in path, where.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(venv, empty, command):
    result = ok(run(venv, empty, command, "--help"))
    assert result.stdout.startswith(f"usage: {command} ")


def test_the_quick_start_runs_from_an_empty_folder(venv, empty):
    torch.save(seeded_model().state_dict(), empty / "small.pth.tar")
    images = write_photo_folder(empty / "imageNet" / "val")
    labels = empty / "imageNet" / "val_label.txt"
    labels.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(sorted(images.iterdir()))))
    ok(run(venv, empty, "convmixer-pth2onnx", "--source", "small.pth.tar", "--target", "small.onnx"))
    ok(run(venv, empty, "convmixer-preprocess", "--image-path", images, "--prep-image", "prep_image_bs1",
           "--workers", 1))
    infer = ok(run(venv, empty, "convmixer-infer", "--model", "small.onnx", "--input", "prep_image_bs1",
                   "--output", "result/outputs_bs1_om", "--outfmt", "TXT", "--threads", 1))
    assert "Inference average time" in infer.stdout
    ok(run(venv, empty, "convmixer-eval-acc", "--folder-davinci-target", "result/outputs_bs1_om/",
           "--annotation-file-path", labels, "--result-json-path", "result", "--json-file-name", "result_bs1.json"))
    accuracy = json.loads((empty / "result" / "result_bs1.json").read_text())
    assert accuracy["value"][0]["key"] == "Number of images" and accuracy["value"][0]["value"] == "7"
    parsed = ok(run(venv, empty, "convmixer-parse", "--result-file", "result/result_bs1.json"))
    assert parsed.stdout.startswith("top1:")

    stream = ok(run(venv, empty, "convmixer-stream-eval", "--model", "small.onnx", "--image-path", images,
                    "--annotation-file-path", labels, "--result-json-path", "stream", "--json-file-name",
                    "result_bs1.json", "--workers", 1, "--threads", 1))
    assert "Inference average time" in stream.stdout
    assert (empty / "stream" / "result_bs1.json").read_text() == (empty / "result" / "result_bs1.json").read_text()
    assert (empty / "stream" / "result_bs1_stream_summary.json").is_file()


def test_the_benchmark_engines_check_runs_from_an_empty_folder(venv, empty):
    pytest.importorskip("ray")
    ok(run(venv, empty, "convmixer-benchmark", "--quick", "--engines-check", "--engines-rounds", 1,
           "--engines-images", 2, "--out", "bench"))
    report = json.loads((empty / "bench" / "engines_check.json").read_text())
    assert report["same_json"] and set(report["configs"]) == {"local", "ray x1", "ray x2"}
    assert (empty / "bench" / "engines_check.md").is_file()


MISSING_INPUT = {
    "convmixer-pth2onnx": ["--source", "missing.pth", "--target", "x.onnx", "--no-download"],
    "convmixer-preprocess": ["--image-path", "missing", "--prep-image", "out"],
    "convmixer-infer": ["--model", "missing.onnx", "--input", "missing", "--output", "out"],
    "convmixer-eval-acc": ["--folder-davinci-target", "missing", "--annotation-file-path", "missing.txt",
                           "--result-json-path", "r", "--json-file-name", "r.json"],
    "convmixer-parse": ["--result-file", "missing.json"],
    "convmixer-stream-eval": ["--model", "missing.onnx", "--image-path", "missing", "--annotation-file-path",
                              "missing.txt", "--result-json-path", "r", "--json-file-name", "r.json"],
    "convmixer-classify": ["--model", "missing.onnx", "missing.jpg"],
    "convmixer-compare-runs": ["missing_a.json", "missing_b.json"],
    "convmixer-report": ["missing.json"],
}


@pytest.mark.parametrize("command", sorted(MISSING_INPUT))
def test_a_missing_input_is_one_line_naming_it_and_exit_2(venv, empty, command):
    result = run(venv, empty, command, *MISSING_INPUT[command])
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    # classify names each photo it cannot read, then ends when none could be read
    assert len(lines) == (2 if command == "convmixer-classify" else 1), result.stderr
    assert all(line.startswith(f"{command}: error: ") for line in lines) and "missing" in lines[0], result.stderr

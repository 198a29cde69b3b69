"""convmixer_infer.py: msame's output layout and log on every runtime, bad inputs, resume, the real-tool path."""
import json
import re

import numpy as np
import pytest
import torch

from conftest import FAKE_AIS_BENCH, export_small_onnx, fake_om, run_script

TIMESTAMP_RE = re.compile(r"^\d{8}_\d{6}$")


@pytest.fixture
def bin_folder(tmp_path):
    """Three batch files of two random images each, named as convmixer_preprocess.py names them."""
    folder = tmp_path / "prep"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for k in range(3):
        rng.standard_normal((2, 3, 224, 224)).astype(np.float32).tofile(folder / f"input_{k:05d}.bin")
    return folder


def reference(model, bin_path):
    batch = np.fromfile(bin_path, dtype=np.float32).reshape(-1, 3, 224, 224)
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def run_folder(output):
    """The one timestamp folder of a run: as with msame, nothing else is in --output."""
    entries = list(output.iterdir())
    assert len(entries) == 1 and entries[0].is_dir() and TIMESTAMP_RE.match(entries[0].name), entries
    return entries[0]


def summary_of(output):
    """The run's summary JSON, in <output>.runs/ beside the output folder."""
    folder = run_folder(output)
    return json.loads((output.with_name(output.name + ".runs") / f"{folder.name}_summary.json").read_text())


def infer(model, inputs, output, *extra, env=None):
    return run_script("convmixer_infer.py", "--model", model, "--input", inputs, "--output", output,
                      "--threads", "1", *extra, env=env)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_msame_layout_log_and_summary(backend, small_model, small_onnx, small_checkpoint, bin_folder, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = small_checkpoint if backend == "torch" else small_onnx
    output = tmp_path / "out"
    result = infer(model, bin_folder, output, "--backend", backend)
    assert result.returncode == 0, result.stderr

    folder = run_folder(output)
    assert sorted(p.name for p in folder.iterdir()) == [f"input_{k:05d}_output_0.txt" for k in range(3)]
    for k in range(3):
        lines = (folder / f"input_{k:05d}_output_0.txt").read_text().splitlines()
        assert len(lines) == 2 and all(line.endswith(" ") and not line.endswith("  ") for line in lines)
        values = np.array([line.split() for line in lines], dtype=np.float64)
        expected = reference(small_model, bin_folder / f"input_{k:05d}.bin")
        assert values.shape == (2, 1000)
        assert np.abs(values - expected).max() <= 1e-4 * np.abs(expected).max()  # 6 significant digits
        assert all(v == f"{float(v):g}" for v in lines[0].split())  # C's %g: 6 significant digits

    log = result.stdout
    starts = re.findall(r"^\[INFO\] start to process file:(.*)$", log, re.MULTILINE)
    assert starts == [str(bin_folder / f"input_{k:05d}.bin") for k in range(3)]
    times = [float(t) for t in re.findall(r"^Inference time: ([\d.]+)ms$", log, re.MULTILINE)]
    assert len(times) == 3
    mean = re.search(r"^Inference average time : ([\d.]+) ms$", log, re.MULTILINE)
    rest = re.search(r"^Inference average time without first time: ([\d.]+) ms$", log, re.MULTILINE)
    assert float(mean.group(1)) == pytest.approx(np.mean(times), abs=0.006)
    assert float(rest.group(1)) == pytest.approx(np.mean(times[1:]), abs=0.006)
    assert "%|" not in log and "inference:" not in log          # the progress bar is on stderr only
    assert "inference:" in result.stderr

    summary = summary_of(output)
    assert summary["backend"]["name"] == backend and summary["backend"]["version"]
    assert summary["batch_size"] == 2 and summary["threads"] == 1 and summary["precision"] == "fp32"
    assert summary["input"] == str(bin_folder.resolve()) and summary["num_images"] == 6
    assert summary["latency_ms"]["count"] == 3
    assert summary["latency_ms"]["min"] <= summary["latency_ms"]["median"] <= summary["latency_ms"]["p99"]
    assert summary["throughput_images_per_s"] == pytest.approx(2 * 1000 / np.mean(times[1:]), rel=0.05)

    (tmp_path / "log.txt").write_text(log)
    parsed = run_script("test/parse.py", "--result-file", tmp_path / "log.txt", "--batch-size", "2")
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.strip() == f"bs2 fps:{2 * 1000 / float(rest.group(1)):.3f}"


def test_bin_output_is_raw_float32(small_model, small_onnx, bin_folder, tmp_path):
    output = tmp_path / "out"
    assert infer(small_onnx, bin_folder, output, "--outfmt", "BIN").returncode == 0
    data = np.fromfile(run_folder(output) / "input_00001_output_0.bin", dtype="<f4").reshape(2, 1000)
    expected = reference(small_model, bin_folder / "input_00001.bin")
    assert np.abs(data - expected).max() <= 1e-4 * np.abs(expected).max()


def test_single_file_loop_and_comma_list(small_onnx, bin_folder, tmp_path):
    one = infer(small_onnx, bin_folder / "input_00002.bin", tmp_path / "a", "--loop", "3")
    assert one.returncode == 0, one.stderr
    assert len(re.findall(r"^Inference time: ", one.stdout, re.MULTILINE)) == 3
    # msame's closing lines for a looped single file: both averages with %f, and nothing after them
    assert re.search(r"Inference average time: \d+\.\d{6} ms\n"
                     r"Inference average time without first time: \d+\.\d{6} ms\n\Z", one.stdout)
    once = infer(small_onnx, bin_folder / "input_00002.bin", tmp_path / "c")
    assert once.returncode == 0, once.stderr
    assert re.search(r"\nInference average time: \d+\.\d{6} ms\n\Z", once.stdout)
    assert [p.name for p in run_folder(tmp_path / "a").iterdir()] == ["input_00002_output_0.txt"]

    listed = f"{bin_folder / 'input_00000.bin'},{bin_folder / 'input_00002.bin'}"
    two = infer(small_onnx, listed, tmp_path / "b")
    assert two.returncode == 0, two.stderr
    assert sorted(p.name for p in run_folder(tmp_path / "b").iterdir()) == \
        ["input_00000_output_0.txt", "input_00002_output_0.txt"]
    assert "Inference average time without first time" in two.stdout


@pytest.mark.parametrize("size_bytes, message", [
    (3 * 224 * 224 * 4 - 4, r"602108 bytes is not a whole number of 3x224x224 float32 images"),
    (0, r"0 bytes is not a whole number"),
])
def test_bad_bin_size_is_refused_naming_the_file(small_onnx, bin_folder, tmp_path, size_bytes, message):
    (bin_folder / "input_00003.bin").write_bytes(b"\0" * size_bytes)
    output = tmp_path / "out"
    result = infer(small_onnx, bin_folder, output)
    assert result.returncode == 2
    assert re.fullmatch(rf"convmixer_infer\.py: error: .*input_00003\.bin: {message}.*\n", result.stderr)
    assert not output.exists()  # checked before anything is written


def test_bin_not_matching_a_fixed_batch_is_refused(small_model, bin_folder, tmp_path):
    fixed = export_small_onnx(small_model, tmp_path / "bs4.onnx", batch_size=4)
    result = infer(fixed, bin_folder, tmp_path / "out")
    assert result.returncode == 2
    assert "input_00000.bin: 1204224 bytes holds 2 images, but the model takes batches of 4" in result.stderr


def test_resume_skips_finished_files_and_keeps_their_times(small_onnx, bin_folder, tmp_path):
    output = tmp_path / "out"
    first = infer(small_onnx, bin_folder, output)
    assert first.returncode == 0
    folder = run_folder(output)
    done = (folder / "input_00000_output_0.txt").read_text()
    # as if interrupted after the first file: the later outputs and their records are missing
    for k in (1, 2):
        (folder / f"input_{k:05d}_output_0.txt").unlink()
    record = tmp_path / "out.runs" / f"{folder.name}_latency_ms.tsv"
    record.write_text("".join(record.read_text().splitlines(keepends=True)[:2]))
    (folder / "input_00000_output_0.txt").write_text(done)

    resumed = infer(small_onnx, bin_folder, output, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert run_folder(output) == folder
    assert "1 of 3 file(s) already done" in resumed.stdout
    assert re.findall(r"start to process file:.*(input_\d+)\.bin", resumed.stdout) == ["input_00001", "input_00002"]
    assert (folder / "input_00000_output_0.txt").read_text() == done
    assert len(list(folder.iterdir())) == 3
    summary = summary_of(output)
    assert summary["latency_ms"]["count"] == 3 and summary["files_run_now"] == 2


def test_resume_refuses_a_folder_of_another_run(small_onnx, small_checkpoint, bin_folder, tmp_path):
    output = tmp_path / "out"
    assert infer(small_onnx, bin_folder, output).returncode == 0
    other = infer(small_checkpoint, bin_folder, output, "--backend", "torch", "--resume", "latest")
    assert other.returncode == 2 and "made by a different run" in other.stderr


def test_resume_of_a_missing_folder_is_an_error(small_onnx, bin_folder, tmp_path):
    result = infer(small_onnx, bin_folder, tmp_path / "out", "--resume", "20200101_000000")
    assert result.returncode == 2 and "no such run folder" in result.stderr


def test_loop_out_of_msame_range_is_refused(small_onnx, bin_folder, tmp_path):
    result = infer(small_onnx, bin_folder, tmp_path / "out", "--loop", "101")
    assert result.returncode == 2 and "--loop 101: must be 1..100" in result.stderr


def test_msame_backend_runs_the_real_tool_and_keeps_msame_layout(small_model, small_onnx, bin_folder, tmp_path,
                                                                  fake_msame):
    env, args_log = fake_msame
    om = fake_om(tmp_path / "small_bs2.om", small_onnx)
    output = tmp_path / "out"
    result = run_script("convmixer_infer.py", "--model", om, "--input", bin_folder, "--output", output,
                        "--device", "3", env=env)
    assert result.returncode == 0, result.stderr
    argv = json.loads(args_log.read_text())
    assert argv == ["--model", str(om), "--input", str(bin_folder), "--output", argv[5], "--outfmt", "TXT",
                    "--device", "3"]
    folder = run_folder(output)  # msame's own timestamp folder was renamed to ours, its temp folder removed
    values = np.loadtxt(folder / "input_00001_output_0.txt")
    expected = reference(small_model, bin_folder / "input_00001.bin")
    assert np.abs(values - expected).max() <= 1e-4 * np.abs(expected).max()
    assert "[INFO] model execute success" in result.stdout              # msame's own log passes through
    assert len(re.findall(r"^Inference average time : ", result.stdout, re.MULTILINE)) == 1
    summary = summary_of(output)
    assert summary["backend"]["name"] == "msame" and summary["latency_ms"]["count"] == 3


@pytest.mark.parametrize("dot_file", [False, True], ids=["batches-only", "with-manifest"])
def test_ais_bench_backend_output_is_renamed_to_msame_layout(small_model, small_onnx, bin_folder, tmp_path,
                                                             dot_file):
    """ais_bench reads every file of an input folder: a preprocessed folder's .manifest.json must not reach it
    (the stand-in fails on a file that is not whole images)."""
    if dot_file:
        (bin_folder / ".manifest.json").write_text('{"batch_size": 2}')
    package = tmp_path / "fake_site" / "ais_bench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_AIS_BENCH)
    om = fake_om(tmp_path / "small_bs2.om", small_onnx)
    output = tmp_path / "out"
    result = run_script("convmixer_infer.py", "--model", om, "--input", bin_folder, "--output", output,
                        "--backend", "ais_bench", env={"PYTHONPATH": str(tmp_path / "fake_site")})
    assert result.returncode == 0, result.stderr
    assert "throughput 1000*batchsize.mean(2)" in result.stdout
    folder = run_folder(output)
    assert sorted(p.name for p in folder.iterdir()) == [f"input_{k:05d}_output_0.txt" for k in range(3)]
    expected = reference(small_model, bin_folder / "input_00002.bin")
    assert np.abs(np.loadtxt(folder / "input_00002_output_0.txt") - expected).max() <= 1e-4 * np.abs(expected).max()
    assert "Inference average time : 2.50 ms" in result.stdout
    summary = summary_of(output)
    assert summary["backend"]["name"] == "ais_bench" and summary["latency_ms"]["mean"] == 2.5


def test_resume_refuses_outputs_without_a_run_record(small_onnx, bin_folder, tmp_path):
    output = tmp_path / "out"
    assert infer(small_onnx, bin_folder, output).returncode == 0
    folder = run_folder(output)
    (tmp_path / "out.runs" / f"{folder.name}_latency_ms.tsv").unlink()
    again = infer(small_onnx, bin_folder, output, "--resume", "latest")
    assert again.returncode == 2 and "holds outputs but no run record" in again.stderr


def test_logits_that_are_not_finite_stop_the_run_at_their_file_keeping_the_files_before(nan_onnx, bin_folder,
                                                                                           tmp_path):
    """A model that gives NaN for the dark images of input_00001.bin: one line naming the file and the count, no
    output for it or after it, no summary; the outputs before it stay."""
    batch = np.fromfile(bin_folder / "input_00001.bin", dtype=np.float32).reshape(2, 3, 224, 224)
    batch[1] = -2.1
    batch.tofile(bin_folder / "input_00001.bin")
    output = tmp_path / "out"
    result = infer(nan_onnx, bin_folder, output, "--backend", "onnxruntime")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        f"convmixer_infer.py: error: {bin_folder / 'input_00001.bin'}: 1000 of 2000 output values are not finite "
        f"(NaN or infinite), in 1 image(s); nothing written for it, and no summary; the outputs of the files before "
        f"it are kept for --resume latest, with the same model and settings"]
    assert [p.name for p in run_folder(output).iterdir()] == ["input_00000_output_0.txt"]
    assert not list((tmp_path / "out.runs").glob("*_summary.json"))


@pytest.mark.parametrize("case", ["empty folder", "missing file in a list", "loop 0", "negative limit", "nan limit"])
def test_bad_arguments_are_one_line_and_write_nothing(small_onnx, bin_folder, tmp_path, case):
    """Every precision refuses a --max-logit-error that is not a number of at least 0: fp32 took -1 and nan
    silently, and nan would pass any reduced model."""
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = bin_folder / "input_00009.bin"
    inputs, extra, message = {
        "empty folder": (empty, [], f"{empty}: no .bin files in this folder"),
        "missing file in a list": (f"{bin_folder / 'input_00000.bin'},{missing}", [],
                                   f"{missing}: input file not found"),
        "loop 0": (bin_folder / "input_00000.bin", ["--loop", "0"], "--loop 0: must be 1..100"),
        "negative limit": (bin_folder, ["--max-logit-error", "-0.1"],
                           "argument --max-logit-error: must be a number of at least 0, got -0.1"),
        "nan limit": (bin_folder, ["--max-logit-error", "nan"],
                      "argument --max-logit-error: must be a number of at least 0, got nan"),
    }[case]
    output = tmp_path / "out"
    result = infer(small_onnx, inputs, output, *extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("convmixer_infer.py: error: ") and message in last, result.stderr
    assert not output.exists()


def test_a_folder_of_another_run_names_how_to_start_over_in_both_ways_in(small_onnx, bin_folder, tmp_path):
    """msame run by hand into --output leaves outputs without our record; --resume latest picks that folder."""
    folder = tmp_path / "out" / "20200101_000000"
    folder.mkdir(parents=True)
    (folder / "input_00000_output_0.txt").write_text("1 2 3 \n")
    result = infer(small_onnx, bin_folder, tmp_path / "out", "--resume", "latest")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "it cannot be checked to be this run's; remove it, or start a new run (convmixer_infer.py: without --resume; "
        "test/eval_acc_perf.sh: --fresh=true)")

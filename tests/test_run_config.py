"""RunConfig: one description of a run, resolved once, and the one identity every resume compares."""
import dataclasses
import json
import hashlib

import numpy as np
import pytest

from conftest import run_script
from convmixer_suite.precision import fidelity
from convmixer_suite.util.errors import UserError
from convmixer_suite.run.records import check_identity
from convmixer_suite.run.config import RunConfig
from convmixer_suite.guide.run_folder import RunFolder
from convmixer_suite.guide.transform import DATA_CONFIG
from convmixer_suite.commands import stream_eval as stream_eval_command


def test_build_resolves_the_runtime_once_and_hashes_the_model(small_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig.build(small_onnx.relative_to(tmp_path), batch_size=2)
    assert config.backend == "onnxruntime" and config.model == str(small_onnx.relative_to(tmp_path))
    assert config.with_absolute_paths().model == config.as_dict()["model_path"] == str(small_onnx.resolve())
    assert config.model_sha256 == hashlib.sha256(small_onnx.read_bytes()).hexdigest()
    assert config.model_bytes == small_onnx.stat().st_size and config.data_config == DATA_CONFIG
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threads = 3
    backend = config.create_backend()
    assert backend.name == "onnxruntime" and backend.model_path.resolve() == small_onnx.resolve()


def test_build_refuses_a_missing_model_or_calibration_folder_in_one_line(small_onnx, tmp_path):
    with pytest.raises(UserError, match=r"^\S*missing\.onnx: model file not found$"):
        RunConfig.build(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match=r"^\S*nowhere: calibration folder not found \(--calib\)$"):
        RunConfig.build(small_onnx, calib=tmp_path / "nowhere")


@pytest.mark.parametrize("change", [dict(device="cuda:0"), dict(threads=2), dict(batch_size=4), dict(backend="openvino"),
                                    dict(precision="bf16"), dict(compile_mode="default"), dict(model_sha256="0" * 64),
                                    dict(data_config=dataclasses.replace(DATA_CONFIG, crop_pct=0.875))])
def test_every_field_that_decides_the_numbers_is_in_the_identity(small_onnx, change):
    base = RunConfig.build(small_onnx, batch_size=1)
    assert dataclasses.replace(base, **change).identity() != base.identity()


def test_the_calibration_belongs_to_the_identity_of_int8_only(small_onnx, calib_dir):
    fp32 = RunConfig.build(small_onnx, calib=calib_dir)
    assert fp32.identity() == dataclasses.replace(fp32, num_calib=5, calib=None).identity()
    int8 = dataclasses.replace(fp32, precision="int8")
    assert int8.identity() != dataclasses.replace(int8, num_calib=5).identity()
    assert int8.as_dict()["calib"] == str(calib_dir.resolve())


def test_a_model_of_another_batch_size_is_refused_in_one_line(tmp_path, small_model):
    from conftest import export_small_onnx
    onnx = export_small_onnx(small_model, tmp_path / "bs2.onnx", batch_size=2)
    with pytest.raises(UserError, match=r"bs2\.onnx: the model takes batches of 2, not --batch-size 4$"):
        RunConfig.build(onnx, batch_size=4).create_backend()


def test_the_stream_eval_options_build_the_same_config_again(small_onnx, calib_dir):
    config = RunConfig.build(small_onnx, precision="int8", threads=1, calib=calib_dir, num_calib=7, batch_size=3)
    args = stream_eval_command.parse_args(config.stream_eval_args() + [
        "--image-path", "i", "--annotation-file-path", "a", "--result-json-path", "r", "--json-file-name", "j.json"])
    assert RunConfig.from_args(args, batch_size=args.batch_size) == config


def test_the_runner_resume_names_what_differs_the_device_included(tmp_path):
    config = RunConfig(model="/m.onnx", model_sha256="a" * 64, model_bytes=1, backend="onnxruntime", batch_size=1)
    folder = tmp_path / "out" / "20260101_000000"
    first = RunFolder(folder, {**config.identity(), "outfmt": "TXT"}, "TXT")
    first.start()
    first.record(tmp_path / "input_0.bin", 1.5)
    assert first.earlier_latencies_ms() == {"input_0.bin": 1.5}
    on_gpu = dataclasses.replace(config, device="cuda:0", threads=4)
    with pytest.raises(UserError, match=r"made by a different run \(device, threads differ\); remove it"):
        RunFolder(folder, {**on_gpu.identity(), "outfmt": "TXT"}, "TXT").earlier_latencies_ms()
    first.record_path.write_text("# model=/m.onnx backend=onnxruntime precision=fp32 device=cpu outfmt=TXT\n")
    with pytest.raises(UserError, match=r"made by a different run \(its record is of an older format\)"):
        first.earlier_latencies_ms()


def test_the_streaming_records_compare_the_same_identity(tmp_path):
    config = RunConfig(model="/m.onnx", model_sha256="a" * 64, model_bytes=1, backend="onnxruntime", batch_size=1)
    (tmp_path / "identity.json").write_text(json.dumps(config.identity()))
    assert check_identity(tmp_path, config.identity())
    with pytest.raises(UserError, match=r"different run \(device differs\)"):
        check_identity(tmp_path, dataclasses.replace(config, device="cuda:1").identity())


def test_convmixer_infer_resume_with_other_threads_is_refused_and_writes_nothing(small_onnx, tmp_path):
    inputs = tmp_path / "bins"
    inputs.mkdir()
    for i in range(2):
        np.random.default_rng(i).standard_normal((1, 3, 224, 224)).astype(np.float32).tofile(inputs / f"in_{i}.bin")
    output = tmp_path / "out"
    common = ["--model", small_onnx, "--input", inputs, "--output", output]
    assert run_script("convmixer_infer.py", *common, "--threads", 1).returncode == 0
    outputs = sorted(output.rglob("*"))
    refused = run_script("convmixer_infer.py", *common, "--threads", 2, "--resume", "latest")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "made by a different run (threads differs)" in refused.stderr.strip().splitlines()[-1]
    assert sorted(output.rglob("*")) == outputs


def test_num_calib_reaches_the_quantizer_and_the_gate_keeps_the_rest_out(small_onnx, calib_dir):
    """Seven photos: --num-calib 3 calibrates on the first three; the gate takes the four beyond them."""
    config = RunConfig.build(small_onnx, backend="onnxruntime", precision="int8", calib=calib_dir, num_calib=3)
    backend = config.create_backend()
    record = json.loads(backend.run_path.with_name(backend.run_path.name + ".calib.json").read_text())
    assert record["num_calib"] == 3 and len(record["images"]) == 3
    held_out, source = fidelity.held_out_samples(backend, fallback=None)()
    assert len(held_out) == 4 and "held out of calibration" in source


@pytest.mark.parametrize("script", ["convmixer_infer.py", "convmixer_stream_eval.py"])
def test_a_num_calib_below_one_is_refused_in_one_line(script, small_onnx, tmp_path):
    io = (["--input", tmp_path, "--output", tmp_path / "out"] if script == "convmixer_infer.py" else
          ["--image-path", tmp_path, "--annotation-file-path", tmp_path / "l.txt", "--result-json-path", tmp_path,
           "--json-file-name", "r.json"])
    refused = run_script(script, "--model", small_onnx, *io, "--precision", "int8", "--num-calib", 0)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith("argument --num-calib: must be at least 1, got 0")
    assert not (tmp_path / "out").exists()

"""int8 parameters chosen for the CPU class, and the fidelity gate of every reduced precision."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_script
from convmixer_suite.precision import fidelity
from convmixer_suite.precision import int8 as precision
from convmixer_suite.util.errors import UserError
from convmixer_suite.precision.cpu_info import int8_class, this_int8_class

ZEN3 = ["fma", "avx2"]
ZEN4 = ["fma", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"]
ALDER_LAKE = ["fma", "avx2", "avx_vnni"]
SAPPHIRE_RAPIDS = ZEN4 + ["amx_bf16", "amx_int8", "amx_tile"]


@pytest.mark.parametrize("flags, cap, expected", [
    (ZEN3, None, "avx2"), (ZEN4, None, "vnni"), (ALDER_LAKE, None, "vnni"), (SAPPHIRE_RAPIDS, None, "amx"),
    (ZEN4, "AVX2", "avx2"), (ZEN4, "avx512_core", "avx2"), (SAPPHIRE_RAPIDS, "AVX512_CORE_VNNI", "vnni"),
    (ZEN4, "AVX2_VNNI", "avx2"),  # 256-bit VNNI kernels need AVX-VNNI, which a Zen 4 lacks
    (ALDER_LAKE, "AVX2_VNNI", "vnni"), (ZEN3, "AVX512_CORE_AMX", "avx2"), (ZEN4, "ALL", "vnni")])
def test_int8_class_follows_the_flags_and_the_onednn_cap(flags, cap, expected):
    assert int8_class(flags, cap) == expected


def test_a_misspelt_onednn_cap_is_one_line():
    with pytest.raises(UserError, match="ONEDNN_MAX_CPU_ISA=AVX3"):
        int8_class(ZEN4, "AVX3")


@pytest.mark.parametrize("cpu_class, nncf_fix, reduce_range", [
    ("avx2", "enable", True), ("vnni", "first_layer_only", False), ("amx", "first_layer_only", False)])
def test_quantizer_settings_per_cpu_class(cpu_class, nncf_fix, reduce_range):
    assert precision.quantizer_settings("nncf", cpu_class) == {"overflow_fix": nncf_fix}
    assert precision.quantizer_settings("qdq", cpu_class) == {"reduce_range": reduce_range}


@pytest.mark.parametrize("total, num_calib, calibrated, held_out", [
    (7, 5, 5, 2), (7, 6, 6, 1), (7, 300, 4, 3), (300, 300, 292, 8), (1000, 300, 300, 8), (2, 300, 1, 1)])
def test_held_out_rows_are_the_last_ones_and_never_calibrate(total, num_calib, calibrated, held_out):
    rows = list(range(total))
    cal, held = precision.split_rows(rows, num_calib, "prep")
    assert cal == rows[:calibrated] and held == rows[total - held_out:]
    assert not set(cal) & set(held)


def test_one_image_cannot_be_both_calibration_and_check():
    with pytest.raises(UserError, match="prep: 1 image"):
        precision.split_rows([0], 300, "prep")


def test_the_cache_key_and_record_follow_the_cpu_class(small_onnx, calib_dir, monkeypatch):
    for_vnni = precision.int8_model(small_onnx, "onnxruntime", calib_dir, num_calib=5, cpu_class="vnni")
    for_avx2 = precision.int8_model(small_onnx, "onnxruntime", calib_dir, num_calib=5, cpu_class="avx2")
    assert for_vnni != for_avx2
    record = json.loads(for_avx2.with_name(for_avx2.name + ".calib.json").read_text())
    assert record["cpu_class"] == "avx2" and record["settings"] == {"reduce_range": True}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # what this machine's class is then, whatever the CPU
    assert precision.int8_model(small_onnx, "onnxruntime", calib_dir, num_calib=5) == for_avx2


def infer(small_onnx, calib_dir, out, *extra):
    return run_script("convmixer_infer.py", "--model", small_onnx, "--input", calib_dir, "--output", out,
                      "--backend", "onnxruntime", "--precision", "int8", "--calib", calib_dir, *extra)


def test_the_gate_refuses_beyond_the_limit_in_one_line_and_writes_nothing(small_onnx, calib_dir, tmp_path):
    result = infer(small_onnx, calib_dir, tmp_path / "out", "--max-logit-error", "1e-9")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "above --max-logit-error 1e-09; nothing written" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.runs").exists()


def test_the_gate_figures_reach_the_log_and_summary_and_are_measured_once(small_onnx, calib_dir, tmp_path):
    result = infer(small_onnx, calib_dir, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("[INFO] fidelity:"))
    assert f"CPU class {this_int8_class()}" in line and "held-out images" in line and "ms" not in line
    summary = json.loads(next((tmp_path / "out.runs").glob("*_summary.json")).read_text())
    figures = summary["fidelity"]
    assert figures["precision"] == "int8" and figures["passed"] and figures["images"] == 3  # 7 photos: 4 + 3
    assert 0 < figures["max_logit_error"] < 0.05 and figures["limit_max_logit_error"] == 0.02
    cached = list(small_onnx.parent.glob("small.int8-onnxruntime-*.onnx.fidelity-*.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = infer(small_onnx, calib_dir, tmp_path / "out2")
    assert again.returncode == 0 and cached[0].stat().st_mtime_ns == mtime  # read back, not measured again
    assert line in again.stdout


def test_fp32_has_no_gate(small_onnx, calib_dir, tmp_path):
    result = run_script("convmixer_infer.py", "--model", small_onnx, "--input", calib_dir, "--output", tmp_path / "o")
    assert result.returncode == 0 and "fidelity" not in result.stdout
    assert json.loads(next((tmp_path / "o.runs").glob("*_summary.json")).read_text())["fidelity"] is None


def test_the_stream_gate_stops_before_any_record_and_keeps_its_figures(small_onnx, calib_dir, photo_folder, tmp_path):
    labels = tmp_path / "val_label.txt"
    labels.write_text("".join(f"{p.name} 1\n" for p in sorted(photo_folder.iterdir())))
    args = ["convmixer_stream_eval.py", "--model", small_onnx, "--image-path", photo_folder, "--annotation-file-path",
            labels, "--json-file-name", "result_bs1.json", "--backend", "onnxruntime", "--precision", "int8",
            "--calib", calib_dir, "--workers", "1"]
    refused = run_script(*args, "--result-json-path", tmp_path / "r1", "--max-logit-error", "0")
    assert refused.returncode == 2 and "nothing written" in refused.stderr
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").iterdir())
    passed = run_script(*args, "--result-json-path", tmp_path / "r2")
    assert passed.returncode == 0, passed.stderr
    summary = json.loads((tmp_path / "r2" / "result_bs1_stream_summary.json").read_text())
    assert summary["fidelity"]["passed"] and summary["fidelity"]["images"] == 3


def test_the_gate_without_calib_uses_the_runs_first_images(small_onnx, calib_dir):
    ov = pytest.importorskip("openvino")
    from convmixer_suite.runtimes.registry import create_backend
    backend = create_backend("openvino", small_onnx, precision="bf16")
    inputs = sorted(calib_dir.glob("input_*.bin"))
    figures = fidelity.gate(backend, lambda: fidelity.samples_from_batch_files(inputs, backend.input_shape),
                            announce=lambda line: None)
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert figures is None  # bf16 fell back to fp32: nothing to check
    else:
        assert figures["images"] == 7 and figures["precision"] == "bf16"  # the padding row left out
        assert 0 < figures["max_logit_error"] < 0.02


def test_avx2_kernels_saturate_without_the_overflow_fix(small_onnx, calib_dir, monkeypatch):
    """On an AVX2-only CPU (or with ONEDNN_MAX_CPU_ISA=AVX2) the VNNI machines' NNCF settings give wrong logits:
    what the AVX2 class's settings are there for. OpenVINO's convolutions must really run AVX2 kernels."""
    if this_int8_class() != "avx2":
        pytest.skip("runs where the int8 class is avx2: natively, or in the ONEDNN_MAX_CPU_ISA=AVX2 subprocess below")
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from convmixer_suite.runtimes.registry import create_backend
    x, _ = precision.held_out_images(calib_dir)
    reference = create_backend("onnxruntime", small_onnx).predict(x)
    errors = {}
    for cpu_class in ("vnni", "avx2"):
        monkeypatch.setattr(precision, "this_int8_class", lambda: cpu_class)
        backend = create_backend("openvino", small_onnx, precision="int8", calib_dir=calib_dir)
        errors[cpu_class] = fidelity.compare_logits(backend.predict(x), reference)[0]
        runtime = backend.requests[len(x)].get_compiled_model().get_runtime_model()
        kernels = {op.get_rt_info()["primitiveType"].astype(str) for op in runtime.get_ordered_ops()
                   if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
        assert any("avx2" in k for k in kernels) and not any("avx512" in k for k in kernels), kernels
    assert errors["avx2"] < 0.02 < 0.05 < errors["vnni"], errors


def test_int8_is_right_with_the_avx2_only_kernels_on_any_cpu():
    """The int8 tests of both routes, and the saturation check above, in a process whose oneDNN kernels stop at
    AVX2 (OpenVINO's CPU plugin honours ONEDNN_MAX_CPU_ISA; ONNX Runtime's own kernels do not, but its
    parameters follow the detected class all the same)."""
    pytest.importorskip("openvino")
    selected = ("test_qdq_int8_builds_once_and_stays_close_to_fp32 or test_nncf_int8_builds_ir_once_and_stays_close"
                "_to_fp32 or test_avx2_kernels_saturate_without_the_overflow_fix")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selected,
                             str(Path(REPO, "tests", "test_precision.py")), str(Path(REPO, "tests", "test_fidelity.py"))],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout[-3000:]


def test_one_nan_logit_fails_the_gate_and_its_record_says_why(small_onnx, calib_dir):
    """One NaN in the reduced model's logits: max |diff| is NaN, and NaN > limit is false; the gate must still
    refuse, from the figures it measures and from the record it reads back."""
    from convmixer_suite.runtimes.registry import create_backend
    backend = create_backend("onnxruntime", small_onnx, precision="int8", calib_dir=calib_dir, num_calib=5)
    predict = backend.predict

    def one_nan(batch):
        logits = predict(batch)
        logits[0, 7] = np.nan
        return logits
    backend.predict = one_nan
    held_out = fidelity.held_out_samples(backend, None)
    for _ in ("measured", "read back"):
        with pytest.raises(UserError) as refused:
            fidelity.gate(backend, held_out, limit=0.5, announce=lambda line: None)
        assert str(refused.value) == (f"int8 on onnxruntime (CPU class {this_int8_class()}) against fp32: 1 logits "
                                      f"are not finite (NaN or infinite) on 2 held-out images; nothing written. "
                                      f"Try the other int8 backend (--backend onnxruntime or openvino), bf16, or fp32")
    record = json.loads(fidelity.cached_record_path(backend, held_out()[0]).read_text())
    assert record["non_finite_logits"] == 1
    figures = fidelity.Fidelity(**record)
    assert figures.as_dict(0.5)["passed"] is False
    assert figures.as_dict(0.5)["failed_because"].startswith("1 logits are not finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_figure_that_is_not_finite_never_passes(bad):
    reference = np.arange(8, dtype=np.float32).reshape(2, 4)
    reduced = reference.copy()
    reduced[1, 2] = bad
    error, _ = fidelity.compare_logits(reduced, reference)
    assert math.isnan(error)
    figures = fidelity.Fidelity("fp16", "onnxruntime", "cuda:0", "avx2", error, 1.0, 2, 2, "x")
    assert figures.failure(1e9) == "max |diff| / max |logit| is nan"

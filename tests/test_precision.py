"""int8 static quantization (both routes), its cache, and OpenVINO's bf16 precision, on the small ConvMixer."""
import json

import numpy as np
import pytest

from conftest import run_script
from convmixer_suite.precision import int8 as precision
from convmixer_suite.runtimes.registry import create_backend
from convmixer_suite.util.errors import UserError


def photos(calib_dir):
    return np.concatenate([np.fromfile(p, dtype=np.float32).reshape(-1, 3, 224, 224)
                           for p in sorted(calib_dir.glob("input_*.bin"))])[:7]


def assert_close_to_fp32(small_onnx, calib_dir, backend_name):
    x = photos(calib_dir)
    reference = create_backend("onnxruntime", small_onnx).predict(x)
    got = create_backend(backend_name, small_onnx, precision="int8", calib_dir=calib_dir).predict(x)
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 6 / 7
    assert np.abs(got - reference).max() / np.abs(reference).max() < 0.05
    assert not np.array_equal(got, reference)  # it really is another (quantized) model


def test_qdq_int8_builds_once_and_stays_close_to_fp32(small_onnx, calib_dir):
    import onnx
    path = precision.int8_model(small_onnx, "onnxruntime", calib_dir, num_calib=5)
    assert path.parent == small_onnx.parent and path.name.startswith("small.int8-onnxruntime-")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = json.loads(path.with_name(path.name + ".calib.json").read_text())
    assert record["images"] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 6)]
    mtime = path.stat().st_mtime_ns
    assert precision.int8_model(small_onnx, "onnxruntime", calib_dir, num_calib=5) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert precision.int8_model(small_onnx, "onnxruntime", calib_dir, num_calib=4) != path
    assert not list(small_onnx.parent.glob(".*tmp*")) and not list(small_onnx.parent.glob(".small*"))
    assert_close_to_fp32(small_onnx, calib_dir, "onnxruntime")


def test_calibration_leaves_out_padding_rows(small_onnx, calib_dir):
    samples, names = precision.read_calibration(calib_dir, 100)
    assert len(samples) == 7 and len(names) == 7  # 8 rows in the files, one of them padding
    assert all(s.shape == (1, 3, 224, 224) and np.abs(s).max() > 0 for s in samples)


def test_nncf_int8_builds_ir_once_and_stays_close_to_fp32(small_onnx, calib_dir):
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    path = precision.int8_model(small_onnx, "openvino", calib_dir, num_calib=6)
    assert path.suffix == ".xml" and path.with_suffix(".bin").is_file()
    ops = {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}
    assert "FakeQuantize" in ops and "Erf" not in ops  # quantized, with GELU fused before quantization
    mtime = path.stat().st_mtime_ns
    assert precision.int8_model(small_onnx, "openvino", calib_dir, num_calib=6) == path
    assert path.stat().st_mtime_ns == mtime
    assert_close_to_fp32(small_onnx, calib_dir, "openvino")


def test_int8_refusals_name_the_problem(small_onnx, calib_dir, tmp_path):
    with pytest.raises(UserError, match="--calib"):
        precision.int8_model(small_onnx, "onnxruntime", None)
    with pytest.raises(UserError, match="torch"):
        precision.int8_model(small_onnx, "torch", calib_dir)
    with pytest.raises(UserError, match="not found"):
        precision.int8_model(small_onnx, "onnxruntime", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no preprocessed images"):
        precision.int8_model(small_onnx, "onnxruntime", empty)
    (calib_dir / "input_00001.bin").write_bytes(b"\0" * 100)
    with pytest.raises(UserError, match="input_00001.bin"):
        precision.int8_model(small_onnx, "onnxruntime", calib_dir)


def test_int8_run_keeps_the_msame_log_clean(small_onnx, calib_dir, tmp_path):
    """The quantizers' progress goes to stderr: the stdout log holds only msame-style lines."""
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    result = run_script("convmixer_infer.py", "--model", small_onnx, "--input", calib_dir, "--output",
                        tmp_path / "out", "--backend", "openvino", "--precision", "int8", "--calib", calib_dir)
    assert result.returncode == 0, result.stderr
    assert "int8: quantizing" in result.stderr
    for line in result.stdout.splitlines():
        assert line.startswith(("[INFO]", "Inference time:", "Inference average time")), line
    assert len(list((tmp_path / "out").glob("*/input_*_output_0.txt"))) == 4


def test_openvino_bf16_runs_bf16_where_the_cpu_has_it(small_onnx, calib_dir):
    ov = pytest.importorskip("openvino")
    x = photos(calib_dir)
    reference = create_backend("onnxruntime", small_onnx).predict(x)
    backend = create_backend("openvino", small_onnx, precision="bf16")
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert backend.precision == ("bf16" if has_bf16 else "fp32")
    got = backend.predict(x)
    assert has_bf16 != np.allclose(got, reference, rtol=0, atol=1e-6)  # bf16 rounding shows, fp32 does not
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 6 / 7
    assert np.abs(got - reference).max() / np.abs(reference).max() < 0.02


@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
def test_a_damaged_onnx_is_one_line_before_quantizing(small_onnx, calib_dir, tmp_path, backend_name):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(small_onnx.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"damaged.onnx: not a readable ONNX model \("):
        precision.int8_model(damaged, backend_name, calib_dir)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("damaged")) == ["damaged.onnx"]


def test_the_quantizer_s_warnings_are_dropped_at_their_source_and_the_root_logger_is_left_as_it_was(
        small_onnx, calib_dir, tmp_path, caplog):
    """ONNX Runtime's quantizer warns on the root logger for every rank-1 weight: those records are dropped by
    where they come from while it runs; the root logger's level, and what anything else logs, are untouched."""
    import logging
    model = tmp_path / "fresh.onnx"
    model.write_bytes(small_onnx.read_bytes())  # nothing cached beside it: the quantizer runs
    root = logging.getLogger()
    level, filters = root.level, list(root.filters)
    caplog.set_level(logging.DEBUG)
    with precision.rank1_per_channel_warnings_silenced():
        logging.getLogger("convmixer_suite.test").warning("ours still shows")
        logging.warning("a root warning of ours still shows")
    precision.int8_model(model, "onnxruntime", calib_dir, num_calib=5)
    messages = [r.getMessage() for r in caplog.records]
    assert "ours still shows" in messages and "a root warning of ours still shows" in messages
    assert not [m for m in messages if "out-of-range" in m]
    assert (root.level, root.filters) == (logging.DEBUG, filters)  # caplog's level, set before
    caplog.set_level(level)
    assert logging.getLogger("onnxruntime.quantization").level == logging.NOTSET

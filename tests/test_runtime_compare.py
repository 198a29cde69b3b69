"""convmixer_suite.tools.runtime_compare: the depthwise-alone model, the summary and its fastest configuration, and
the survey's backends (convmixer_suite.tools.extra_backends: ncnn via pnnx, IREE) against ONNX Runtime on a small
ConvMixer (skipped where a runtime is missing)."""
import importlib.util
import shutil

import numpy as np
import pytest
import torch

from convmixer_net import ArchSpec
from convmixer_suite.tools import extra_backends
from convmixer_suite.tools import runtime_compare as rc
from convmixer_suite.util.errors import UserError

SPEC = ArchSpec("convmixer_16_2_ks5_p28", 16, 2, 5, 28)  # a feature map of 8x8


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a submodule whose package is missing
        return False


def needs(*modules):
    missing = [m for m in modules if not installed(m)]
    return pytest.mark.skipif(bool(missing), reason=f"optional runtime not installed: {', '.join(missing)} "
                                                    f"(pip install -r requirements-runtimes.txt)")


def ort_run(path, x):
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_depthwise_model_is_the_chain_of_depthwise_convolutions(tmp_path):
    import onnx
    from onnx import numpy_helper
    path = rc.build_depthwise_onnx(SPEC, tmp_path / "dw.onnx")
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(str(path)).graph.initializer}
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    expected = torch.from_numpy(x)
    for i in range(SPEC.depth):
        expected = torch.nn.functional.conv2d(expected, weights[f"dw{i}.weight"], weights[f"dw{i}.bias"],
                                              padding=SPEC.kernel_size // 2, groups=SPEC.dim)
    np.testing.assert_allclose(ort_run(path, x), expected.numpy(), rtol=1e-4, atol=1e-5)
    torch_chain = extra_backends.TorchDepthwiseBackend(path, threads=torch.get_num_threads(),
                                                        input_shape=(16, 8, 8)).load()
    np.testing.assert_allclose(torch_chain.predict(x), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert rc.depthwise_macs(SPEC) == 2 * 25 * 16 * 64


def fake_times():
    return {rc.REFERENCE: [100.0, 110.0, 90.0], rc.PRODUCTION: [40.0, 41.0], rc.CEILING: [30.0, 30.0],
            "ncnn-fp32": [20.0, 20.0], "dw:ncnn-fp32": [5.0]}


def test_summary_never_calls_a_configuration_beyond_the_limit_fastest():
    fid = {rc.REFERENCE: {"max_rel_diff": 0.0, "top1_agreement": 1.0, "within_limit": True},
           rc.PRODUCTION: {"max_rel_diff": 0.01, "top1_agreement": 1.0, "within_limit": True},
           "ncnn-fp32": {"max_rel_diff": 0.05, "top1_agreement": 0.5, "within_limit": False}}  # faster, but 5% off
    report = rc.summarize(fake_times(), fid, {name: "x 1" for name in fake_times()})
    rows = {r["config"]: r for r in report["rows"]}
    assert rows[rc.PRODUCTION]["efficiency"] == pytest.approx(30.0 / 40.5)
    assert rows[rc.PRODUCTION]["speedup_vs_fp32_default"] == pytest.approx(100.0 / 40.5)
    assert "efficiency" not in rows["dw:ncnn-fp32"]  # a part of the model has no fidelity or efficiency
    assert report["fastest"] == {"config": rc.PRODUCTION, "efficiency": pytest.approx(30.0 / 40.5),
                                 "speedup": pytest.approx(100.0 / 40.5)}
    text = rc.markdown({**report, "cpu": "test CPU", "load_before": [1], "load_after": [1], "threads": 2,
                        "iters": 3, "num_fidelity": 2, "limit": 0.02, "skipped": {"iree-fp32": "not installed"},
                        "failed": {"ncnn-fp32": "ToolError: pnnx failed (exit 1)"},
                        "depthwise_macs": 1e6})
    assert "0.05 (over 2%)" in text and "| 0.01 | 1.00 |" in text
    assert "Fastest within 2%: openvino-int8: 0.74 of the same-run int8 ceiling's speed, 2.47x the fp32 default." in text
    assert "Not loaded (this machine lacks it):\n- iree-fp32: not installed" in text
    assert "FAILED to load:\n- ncnn-fp32: ToolError: pnnx failed (exit 1)" in text
    assert "target" not in text.lower()  # measured ratios, no verdicts


def test_an_unknown_configuration_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="unknown nope"):
        rc.run_comparison(["nope"], SPEC, tmp_path / "work")
    assert not (tmp_path / "work").exists()


@needs("ncnn", "pnnx")
def test_ncnn_via_pnnx_agrees_with_onnxruntime(small_onnx, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    runner = extra_backends.NcnnBackend(small_onnx, threads=1).load()
    expected = ort_run(small_onnx, x)
    got = runner.predict(x)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-3  # pnnx stores fp16 weights
    assert runner.convert() == runner.convert()  # cached: the second call converts nothing


@needs("iree.compiler", "iree.runtime")
def test_iree_agrees_with_onnxruntime(tmp_path):
    path = rc.build_depthwise_onnx(SPEC, tmp_path / "dw.onnx")
    x = np.random.default_rng(2).standard_normal((2, 16, 8, 8)).astype(np.float32)
    runner = extra_backends.IreeBackend(path, threads=1, input_shape=(16, 8, 8)).load()
    np.testing.assert_allclose(runner.predict(x).reshape(x.shape), ort_run(path, x), rtol=1e-4, atol=1e-5)


@needs("openvino", "nncf")
def test_openvino_variant_leaves_the_depthwise_convolutions_out_of_int8(small_onnx, tmp_path, monkeypatch):
    import openvino as ov

    from convmixer_suite.precision import int8 as precision
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):  # batch files without a manifest: precision.read_calibration takes every row
        rng.standard_normal((1, 3, 224, 224)).astype(np.float32).tofile(calib / f"input_{i:05d}.bin")
    variant = extra_backends.OpenVinoVariant(small_onnx, threads=1, calib_dir=calib, num_calib=2,
                                             nncf_options=rc.DEPTHWISE_FP32).load()
    model = ov.Core().read_model(str(variant.run_path))
    grouped = [op for op in model.get_ops() if op.get_type_name() == "GroupConvolution"]
    pointwise = [op for op in model.get_ops() if op.get_type_name() == "Convolution"]
    assert grouped and all(op.input_value(0).get_node().get_type_name() != "FakeQuantize" for op in grouped)
    assert any(op.input_value(0).get_node().get_type_name() == "FakeQuantize" for op in pointwise)
    assert variant.predict(rng.standard_normal((1, 3, 224, 224)).astype(np.float32)).shape == (1, 1000)
    calls = []
    monkeypatch.setattr(precision, "int8_model", lambda *args, **kwargs: calls.append((args, kwargs)) or "production.xml")
    properties_only = extra_backends.OpenVinoVariant(small_onnx, threads=1, calib_dir=calib, num_calib=2,
                                                     properties={"PERFORMANCE_HINT": "LATENCY"})
    assert properties_only.onnx_for_precision().name == "production.xml"  # the production model, not a new variant
    assert calls == [((small_onnx, "openvino", calib, 2), {"sample_shape": (3, 224, 224), "nncf_options": {}})]


@needs("openvino", "nncf")
@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")
def test_the_depthwise_op_configurations_run_the_backend_and_its_copy(small_onnx, tmp_path):
    """openvino-int8-dw-op is the openvino-dwop backend; -copy the same model with a copy in each half-block."""
    from convmixer_suite.runtimes.depthwise_op import OP_TYPE
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        rng.standard_normal((1, 3, 224, 224)).astype(np.float32).tofile(calib / f"input_{i:05d}.bin")
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    logits = {}
    for name, compute in (("openvino-int8-dw-op", "block"), ("openvino-int8-dw-op-copy", "copy")):
        runner = rc.make_backend(name, {"model": small_onnx}, tmp_path, 1, {"model": calib}, None, 2)
        ops = [op for op in runner.model.get_ops() if op.get_type_name() == OP_TYPE]
        assert len(ops) == 2 and all(op.get_attributes()["compute"] == compute for op in ops)
        assert runner.name == "openvino-dwop" and "own depthwise op" in runner.version
        logits[compute] = runner.predict(x)
    assert logits["block"].shape == (1, 1000) and not np.allclose(logits["block"], logits["copy"])


@pytest.mark.parametrize("argv, message", [
    (["--out", "FILE"], "--out {}: cannot be used as a folder (File exists)"),
    (["--checkpoint", "MISSING"], "{}: checkpoint not found"),
])
def test_the_command_line_refuses_bad_paths_in_one_line(tmp_path, argv, message):
    import subprocess
    import sys
    a_file, missing = tmp_path / "a_file", tmp_path / "missing.pth"
    a_file.write_text("not a folder")
    path = {"FILE": a_file, "MISSING": missing}[argv[1]]
    argv = [argv[0], str(path)] + ([] if argv[0] == "--out" else ["--out", str(tmp_path / "out")])
    result = subprocess.run([sys.executable, "-m", "convmixer_suite.tools.runtime_compare", *argv, "--configs",
                             "onnxruntime-fp32"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"runtime_compare.py: error: {message.format(path)}"]

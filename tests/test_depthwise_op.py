"""Our own depthwise half-block operation for OpenVINO and the channels-last ConvMixer built around it
(convmixer_suite.runtimes.depthwise_op, native/depthwise_block.cpp): built with the machine's compiler, equal to PyTorch's
half-block with each kernel, the channels-last model equal to the exported .onnx in fp32 and within the 2% limit
in int8, and one-line refusals where no compiler is found or the model is not a ConvMixer."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import export_small_onnx, seeded_model
from convmixer_suite.runtimes import depthwise_op
from convmixer_suite.util.errors import UserError
from convmixer_suite.precision.cpu_info import cpu_info

pytest.importorskip("openvino")
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")
FLAGS = set(cpu_info()["flags"])
KERNELS = [pytest.param("avx2", marks=pytest.mark.skipif("avx2" not in FLAGS, reason="no AVX2")),
           pytest.param("avx512", marks=pytest.mark.skipif("avx512f" not in FLAGS, reason="no AVX-512"))]


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    return depthwise_op.extension_path(tmp_path_factory.mktemp("native"))


def core_with(extension):
    return depthwise_op.core_with_extension(extension)


def half_block_reference(x, taps, bias, scale, shift, pre):
    """PyTorch's Residual(Conv2d(groups=C, padding="same"), GELU, BatchNorm as scale and shift) on x + pre."""
    per_channel = (1, -1, 1, 1)
    xt = torch.from_numpy(x) + torch.from_numpy(pre).view(per_channel)
    conv = torch.nn.functional.conv2d(xt, torch.from_numpy(taps)[:, None], torch.from_numpy(bias),
                                      padding=taps.shape[-1] // 2, groups=x.shape[1])
    y = torch.nn.functional.gelu(conv) * torch.from_numpy(scale).view(per_channel)
    return (xt + y + torch.from_numpy(shift).view(per_channel)).numpy()


def run_one_node(extension, tmp_path, x, parts, isa, compute="block"):
    """The operation alone on NCHW ``x`` (transposed to channels last and back)."""
    import openvino as ov
    import openvino.opset13 as ops
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    parameter = ops.parameter(list(x_last.shape), np.float32, name="x")
    node = depthwise_op.depthwise_block(parameter.output(0), *parts, isa=isa, compute=compute)
    depthwise_op.save_ir(ov.Model([ops.result(node.output(0))], [parameter], "half_block"), tmp_path / "m.xml")
    compiled = core_with(extension).compile_model(str(tmp_path / "m.xml"), "CPU", {"INFERENCE_NUM_THREADS": 2})
    return compiled(x_last)[0].transpose(0, 3, 1, 2)


def random_parts(rng, channels, k):
    def small(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return ((rng.standard_normal((channels, k, k)) / k).astype(np.float32), small(channels),
            1 + small(channels), small(channels), small(channels))


@needs_compiler
@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize("shape, k", [((2, 32, 17, 23), 5), ((1, 16, 9, 9), 7), ((1, 48, 12, 12), 3),
                                      ((1, 16, 5, 3), 9)])
def test_the_operation_is_pytorchs_half_block(extension, tmp_path, isa, shape, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal(shape).astype(np.float32)
    parts = random_parts(rng, shape[1], k)
    expected = half_block_reference(x, *parts)
    got = run_one_node(extension, tmp_path, x, parts, isa)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-5
    np.testing.assert_array_equal(run_one_node(extension, tmp_path, x, parts, isa, compute="copy"), x)


@needs_compiler
def test_the_build_is_cached_and_named_by_its_inputs(extension):
    assert extension.is_file() and depthwise_op.extension_path(extension.parent) == extension
    assert not list(extension.parent.glob(".*tmp*"))  # no half-written library left beside it


def test_a_missing_compiler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(UserError, match=r"^CXX=.*no-such-g\+\+: no C\+\+ compiler found .*apt-get install g\+\+"):
        depthwise_op.extension_path(tmp_path / "native")
    assert not (tmp_path / "native").exists()


@pytest.mark.parametrize("flags, cap, isa", [
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, None, "avx512"),  # Zen 4, Zen 5
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX2", "avx2"),                  # capped as the AVX2 tests cap oneDNN
    ({"avx2", "avx512f"}, "avx512_core", "avx512"),
    ({"avx2"}, None, "avx2"),                                               # Zen 3
    (set(), None, None),                                                    # no kernel at all
])
def test_the_kernel_follows_the_cpu_and_the_isa_cap(flags, cap, isa):
    assert depthwise_op.kernel_isa(flags, cap) == isa


def ort_logits(onnx_path, x):
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@needs_compiler
def test_the_channels_last_model_is_the_onnx_model(extension, small_onnx, tmp_path):
    """fp32 throughout: the rebuilt graph (patches x weights, matrix products on tokens, our operation, the
    BatchNorm shifts moved into it) computes what the exported model computes."""
    model = depthwise_op.channels_last_model(depthwise_op.convmixer_layers(small_onnx), depthwise_op.this_kernel_isa())
    depthwise_op.save_ir(model, tmp_path / "cl.xml")
    core = core_with(extension)
    ops = [op.get_type_name() for op in core.read_model(str(tmp_path / "cl.xml")).get_ops()]
    assert ops.count(depthwise_op.OP_TYPE) == 2 and "GroupConvolution" not in ops
    compiled = core.compile_model(str(tmp_path / "cl.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(6).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = ort_logits(small_onnx, x)
    assert np.abs(compiled(x)[0] - expected).max() / np.abs(expected).max() < 1e-5


@needs_compiler
@pytest.mark.parametrize("compute", ["block", "copy"])
def test_the_int8_channels_last_model_is_cached_and_within_the_limit(extension, small_onnx, tmp_path, compute):
    """precision.int8_model with the operation: quantized once (its .calib.json names the operation), within
    the 2% limit of fp32 with it, far from it with the copy in its place (so the operation is what runs)."""
    from convmixer_suite.precision import int8 as precision
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(5)
    for i in range(10):
        rng.standard_normal((1, 3, 224, 224)).astype(np.float32).tofile(calib / f"input_{i:05d}.bin")
    op = depthwise_op.DepthwiseOp(depthwise_op.this_kernel_isa(), compute, extension.parent)
    target = precision.int8_model(small_onnx, "openvino", calib, 8, depthwise_op=op)
    assert ".int8-openvino-dwop-" in target.name and target.with_suffix(".bin").is_file()
    record = json.loads(target.with_name(target.name + ".calib.json").read_text())
    assert record["depthwise_op"] == op.params() and len(record["images"]) == 8
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    compiled = op.core().compile_model(str(target), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])
    expected = ort_logits(small_onnx, x)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 0.02 if compute == "block" else error > 0.05
    assert precision.int8_model(small_onnx, "openvino", calib, 8, depthwise_op=op) == target  # reused


@needs_compiler
def test_other_models_are_refused_in_one_line(extension, tmp_path):
    odd = export_small_onnx(seeded_model(dim=24), tmp_path / "dim24.onnx")
    with pytest.raises(UserError, match=r"needs a multiple of 16 channels, not 24"):
        depthwise_op.channels_last_model(depthwise_op.convmixer_layers(odd), "avx2")
    from convmixer_net import ArchSpec
    from convmixer_suite.tools.runtime_compare import build_depthwise_onnx
    chain = build_depthwise_onnx(ArchSpec("chain", 16, 2, 3, 28), tmp_path / "chain.onnx")
    with pytest.raises(UserError, match=r"chain.onnx: not a ConvMixer as convmixer_pth2onnx.py exports it"):
        depthwise_op.convmixer_layers(chain)


def photo_batch(calib_dir):
    return np.concatenate([np.fromfile(p, dtype=np.float32).reshape(-1, 3, 224, 224)
                           for p in sorted(calib_dir.glob("input_*.bin"))])[:7]


@needs_compiler
def test_the_openvino_dwop_backend_is_int8_close_to_fp32(small_onnx, calib_dir):
    """The backend on seven photos at once (its batch-1 model reshaped to 7): as close to fp32 as the other
    int8 backends are held to (tests/test_precision.py), and another model than fp32."""
    from convmixer_suite.runtimes.registry import create_backend
    x = photo_batch(calib_dir)
    reference = create_backend("onnxruntime", small_onnx).predict(x)
    backend = create_backend("openvino-dwop", small_onnx, precision="int8", calib_dir=calib_dir, num_calib=5)
    got = backend.predict(x)
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 6 / 7
    assert np.abs(got - reference).max() / np.abs(reference).max() < 0.05
    assert not np.array_equal(got, reference)
    assert ".int8-openvino-dwop-" in backend.run_path.name and "own depthwise op" in backend.version
    assert list((small_onnx.parent / "convmixer_native").glob("libconvmixer_depthwise-*.so"))


@needs_compiler
def test_the_infer_script_runs_it_behind_the_fidelity_gate(small_onnx, calib_dir, tmp_path):
    from conftest import run_script
    result = run_script("convmixer_infer.py", "--model", small_onnx, "--input", calib_dir, "--output",
                        tmp_path / "out", "--backend", "openvino-dwop", "--precision", "int8", "--calib", calib_dir)
    assert result.returncode == 0, result.stderr
    assert "[INFO] fidelity: int8 on openvino-dwop" in result.stdout
    assert len(list((tmp_path / "out").glob("*/input_*_output_0.txt"))) == 4
    refused = run_script("convmixer_infer.py", "--model", small_onnx, "--input", calib_dir, "--output",
                         tmp_path / "fp32", "--backend", "openvino-dwop")
    assert refused.returncode == 2 and not (tmp_path / "fp32").exists()
    assert refused.stderr.strip().splitlines() == [
        "convmixer_infer.py: error: --precision fp32 is not available on the openvino-dwop backend (it runs int8)"]


@needs_compiler
def test_the_backend_warns_in_the_avx2_class(small_onnx, calib_dir, caplog, monkeypatch):
    """Where the int8 class is avx2 it says it is the slower choice there (the class itself is tested in
    test_fidelity.py's ONEDNN_MAX_CPU_ISA subprocess; here it is stubbed, not to cap this process's oneDNN)."""
    from convmixer_suite.runtimes import openvino_backend
    from convmixer_suite.precision import cpu_info
    monkeypatch.setattr(cpu_info, "this_int8_class", lambda: "avx2")
    caplog.set_level("WARNING", logger="convmixer_suite.runtimes.openvino_backend")
    openvino_backend.OpenVinoDepthwiseBackend(small_onnx, precision="int8", calib_dir=calib_dir, num_calib=5).load()
    assert "openvino-dwop on CPU class avx2 (no VNNI)" in caplog.text


@needs_compiler
@pytest.mark.parametrize("model", ["damaged", "dim24"])
def test_the_infer_script_refuses_a_model_it_cannot_rebuild_in_one_line(small_onnx, calib_dir, tmp_path, model):
    from conftest import run_script
    if model == "damaged":
        path = tmp_path / "damaged.onnx"
        path.write_bytes(small_onnx.read_bytes()[:5000])
        expected = r"damaged.onnx: not a readable ONNX model \("
    else:
        path = export_small_onnx(seeded_model(dim=24), tmp_path / "dim24.onnx")
        expected = r"needs a multiple of 16 channels, not 24$"
    result = run_script("convmixer_infer.py", "--model", path, "--input", calib_dir, "--output", tmp_path / "out",
                        "--backend", "openvino-dwop", "--precision", "int8", "--calib", calib_dir)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert re.search(expected, errors[0]), errors

"""Our own depthwise half-block operation for OpenVINO (convmixer_suite.depthwise_op, native/depthwise_block.cpp):
built with the machine's compiler, equal to PyTorch's half-block on odd shapes with both kernels, put in place of
every half-block of a small int8 ConvMixer, and refused in one line where no compiler is found."""
import shutil

import numpy as np
import pytest
import torch

from convmixer_suite import depthwise_op
from convmixer_suite.cli import UserError
from convmixer_suite.cpu_info import cpu_info

pytest.importorskip("openvino")
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) here")
FLAGS = set(cpu_info()["flags"])
KERNELS = [pytest.param("avx2", marks=pytest.mark.skipif("avx2" not in FLAGS, reason="no AVX2")),
           pytest.param("avx512_bf16", marks=pytest.mark.skipif("avx512_bf16" not in FLAGS, reason="no AVX512-BF16"))]
# bf16 products (8-bit mantissas) with fp32 sums; fp32 FMA otherwise
TOLERANCE = {"avx2": 1e-5, "avx512_bf16": 1e-2}


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    return depthwise_op.extension_path(tmp_path_factory.mktemp("native"))


def half_block_reference(x, taps, bias, scale, shift):
    """PyTorch's Residual(Conv2d(groups=C, padding="same"), GELU, BatchNorm folded to scale and shift)."""
    xt = torch.from_numpy(x)
    conv = torch.nn.functional.conv2d(xt, torch.from_numpy(taps)[:, None], torch.from_numpy(bias),
                                      padding=taps.shape[-1] // 2, groups=x.shape[1])
    per_channel = (1, -1, 1, 1)
    y = torch.nn.functional.gelu(conv) * torch.from_numpy(scale).view(per_channel)
    return (xt + y + torch.from_numpy(shift).view(per_channel)).numpy()


def run_one_node(extension, tmp_path, x, parts, isa, compute="block"):
    import openvino as ov
    import openvino.opset13 as ops
    parameter = ops.parameter(list(x.shape), np.float32, name="x")
    node = depthwise_op.depthwise_block(parameter.output(0), *parts, isa=isa, compute=compute)
    ov.save_model(ov.Model([ops.result(node.output(0))], [parameter], "half_block"), str(tmp_path / "m.xml"),
                  compress_to_fp16=False)
    core = ov.Core()
    core.add_extension(str(extension))
    compiled = core.compile_model(core.read_model(str(tmp_path / "m.xml")), "CPU", {"INFERENCE_NUM_THREADS": 2})
    return compiled(x)[0]


def random_parts(rng, channels, k):
    return ((rng.standard_normal((channels, k, k)) / k).astype(np.float32),
            (0.1 * rng.standard_normal(channels)).astype(np.float32),
            (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32),
            (0.1 * rng.standard_normal(channels)).astype(np.float32))


@needs_compiler
@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize("shape, k", [((2, 5, 17, 23), 5), ((1, 3, 9, 9), 7), ((1, 4, 40, 70), 3),
                                      ((1, 16, 32, 32), 9)])
def test_the_operation_is_pytorchs_half_block(extension, tmp_path, isa, shape, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal(shape).astype(np.float32)
    parts = random_parts(rng, shape[1], k)
    expected = half_block_reference(x, *parts)
    got = run_one_node(extension, tmp_path, x, parts, isa)
    assert np.abs(got - expected).max() / np.abs(expected).max() < TOLERANCE[isa]
    copied = run_one_node(extension, tmp_path, x, parts, isa, compute="copy")
    np.testing.assert_array_equal(copied, x)


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
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, None, "avx512_bf16"),  # Zen 4, Zen 5
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", "avx2"),                        # the kernels capped
    ({"avx2", "avx512f", "avx512_vnni"}, None, "avx2"),                           # AVX-512 without bf16
    ({"avx2"}, None, "avx2"),                                                      # Zen 3
    (set(), None, None),                                                           # no kernel at all
])
def test_the_kernel_follows_the_cpu_and_the_isa_cap(flags, cap, isa):
    assert depthwise_op.kernel_isa(flags, cap) == isa


@needs_compiler
@pytest.mark.parametrize("compute", ["block", "copy"])
def test_every_half_block_of_an_int8_convmixer_is_replaced(extension, small_onnx, tmp_path, compute):
    """The production int8 model of the small ConvMixer (BatchNorm shifts non-zero) with its two half-blocks
    replaced: within the 2% limit of fp32 with the operation, far from it with the copy (so the operation
    is what runs)."""
    import onnxruntime as ort
    import openvino as ov

    from convmixer_suite.precision import int8_model
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(5)
    for i in range(10):
        rng.standard_normal((1, 3, 224, 224)).astype(np.float32).tofile(calib / f"input_{i:05d}.bin")
    int8_xml = int8_model(small_onnx, "openvino", calib, 8)
    core = ov.Core()
    model = depthwise_op.fused_model(core, int8_xml, extension.parent, depthwise_op.this_kernel_isa(), compute)
    ops = [op.get_type_name() for op in model.get_ordered_ops()]
    assert ops.count(depthwise_op.OP_TYPE) == 2 and "GroupConvolution" not in ops
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    session = ort.InferenceSession(str(small_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": x})[0]
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 0.02 if compute == "block" else error > 0.05
    cached = list(extension.parent.glob(f"*.dwop-*-{compute}-*.xml"))
    assert len(cached) == 1  # written once, beside its .bin
    assert depthwise_op.fused_model(ov.Core(), int8_xml, extension.parent, depthwise_op.this_kernel_isa(),
                                    compute) is not None
    assert list(extension.parent.glob(f"*.dwop-*-{compute}-*.xml")) == cached


@needs_compiler
def test_a_model_without_half_blocks_is_refused_in_one_line(extension, tmp_path):
    import openvino as ov
    import openvino.opset13 as ops
    parameter = ops.parameter([1, 3, 8, 8], np.float32, name="x")
    ov.save_model(ov.Model([ops.result(ops.relu(parameter))], [parameter], "plain"), str(tmp_path / "plain.xml"))
    with pytest.raises(UserError, match=r"plain.xml: no depthwise half-block of ConvMixer's form found"):
        depthwise_op.fused_model(ov.Core(), tmp_path / "plain.xml", extension.parent, "avx2")

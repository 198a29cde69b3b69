"""ConvMixer's depthwise half-block as an OpenVINO operation of our own, in a channels-last int8 model.

``native/depthwise_block.cpp`` computes ``x + scale * gelu(depthwise_conv(x) + bias) + shift`` in one pass on
[N, H, W, C] tensors (fp32 FMA, AVX-512 or AVX2). This module builds it with the machine's C++ compiler against
the installed OpenVINO (cached, keyed by the source, OpenVINO's version and the compiler), and builds ConvMixer
around it from the exported .onnx: the patch embedding and the pointwise convolutions as matrix products on
[N, H*W, C], the half-blocks as our operation, then NNCF quantizes the matrix products to int8.

Why channels last: OpenVINO hands a custom operation plain tensors and converts its own layouts around it. In the
usual NCHW graph those conversions alone cost about as much as the depthwise convolutions they spare (measured
in docs/depthwise-op.md); [N, H*W, C] plain is the layout OpenVINO's int8 matrix products use anyway.

The model is written as IR (temporary names, then renamed) and read back through a Core that has the
extension, so that the nodes OpenVINO runs are the C++ ones. ``compute="copy"`` puts a copy (y = x) in place of
the half-blocks: the model's cost with them free, for convmixer_suite.tools.runtime_compare.
"""
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import NotAvailable, UserError

SOURCE = Path(__file__).parent / "native" / "depthwise_block.cpp"
OP_TYPE, OP_VERSION = "ConvMixerDepthwiseBlock", "convmixer"
COMPUTES = ("block", "copy")
# The classifier stays fp32 in int8: NNCF's int8 classifier was far outside the fidelity gate where every other
# product was well within it (docs/depthwise-op.md; tests/test_depthwise_op.py).
CLASSIFIER = "classifier"
CXX_HINT = "install a C++ compiler (Debian: apt-get install g++) or name one in CXX"
CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-DOV_THREAD=OV_THREAD_TBB")
# ONEDNN_MAX_CPU_ISA caps below AVX-512: the kernel follows them too, so the AVX2 path can be tested anywhere.
AVX2_CAPS = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2"}


def kernel_isa(flags, isa_cap=None):
    """``avx512``, ``avx2`` or None (no kernel) for a set of /proc/cpuinfo flags and an ONEDNN_MAX_CPU_ISA."""
    flags = set(flags)
    if "avx2" not in flags:
        return None
    capped = bool(isa_cap) and isa_cap.strip().lower() in AVX2_CAPS
    return "avx512" if "avx512f" in flags and not capped else "avx2"


def this_kernel_isa():
    from convmixer_suite.precision.cpu_info import cpu_info
    return kernel_isa(cpu_info()["flags"], os.environ.get("ONEDNN_MAX_CPU_ISA"))


def openvino_paths() -> tuple:
    """OpenVINO's headers, its runtime library and its TBB library, as the wheel lays them out."""
    import openvino
    root = Path(openvino.__file__).parent
    libs = root / "libs"
    runtime = sorted(libs.glob("libopenvino.so.*")) or sorted(libs.glob("libopenvino.so"))
    tbb = sorted(libs.glob("libtbb.so.*"))
    if not (root / "include").is_dir() or not runtime or not tbb:
        raise NotAvailable(f"{root}: this OpenVINO has no headers or libraries to build an extension against")
    return root / "include", runtime[0], tbb[0]


def compiler() -> str:
    name = os.environ.get("CXX", "g++")
    found = shutil.which(name)
    if not found:
        raise NotAvailable(f"CXX={name}: no C++ compiler found to build the depthwise operation; {CXX_HINT}")
    return found


def compiler_version(cxx: str) -> str:
    result = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else cxx


def extension_path(cache_dir) -> Path:
    """The built extension in ``cache_dir``: built on first use (under a temporary name, then renamed), reused
    while the source, OpenVINO and the compiler stay the same."""
    import openvino
    cxx = compiler()
    include, runtime, tbb = openvino_paths()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), openvino.get_version().encode(),
                                     compiler_version(cxx).encode(), " ".join(CXX_FLAGS).encode()])).hexdigest()[:12]
    cache_dir = Path(cache_dir)
    target = cache_dir / f"libconvmixer_depthwise-{key}.so"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    argv = [cxx, *CXX_FLAGS, f"-I{include}", str(SOURCE), str(runtime), str(tbb), f"-Wl,-rpath,{runtime.parent}",
            "-o", str(tmp)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{SOURCE}: the depthwise operation did not build with {cxx}: {last}")
    os.replace(tmp, target)
    return target


_CORES = {}  # extension file name (its key) -> the one Core of this process that loaded it


def core_with_extension(extension: Path):
    """The process's OpenVINO Core with this build of the extension, made on first use and kept: a Core that is
    dropped unloads the library under the op types it registered, and a second copy of the same build loaded
    from another folder registers them again; either crashed the process later (seen in the tests)."""
    import openvino as ov
    if extension.name not in _CORES:
        core = ov.Core()
        core.add_extension(str(extension))
        _CORES[extension.name] = core
    return _CORES[extension.name]


@functools.lru_cache(maxsize=None)
def node_class():
    """The Python side of the operation, for building graphs: same type and attributes as the C++ one, which
    OpenVINO instantiates when it reads the IR back."""
    import openvino as ov

    class DepthwiseBlockNode(ov.Op):
        class_type_info = ov.DiscreteTypeInfo(OP_TYPE, OP_VERSION)

        def __init__(self, inputs=None, attributes=None):
            super().__init__(self)
            self._attributes = dict(attributes or {"isa": "avx2", "compute": "block"})
            if inputs is not None:
                self.set_arguments(inputs)
                self.constructor_validate_and_infer_types()

        def get_type_info(self):
            return DepthwiseBlockNode.class_type_info

        def validate_and_infer_types(self):
            self.set_output_type(0, self.get_input_element_type(0), self.get_input_partial_shape(0))

        def clone_with_new_inputs(self, new_inputs):
            return DepthwiseBlockNode(new_inputs, self._attributes)

        def visit_attributes(self, visitor):
            visitor.on_attributes(self._attributes)
            return True

    return DepthwiseBlockNode


def depthwise_block(x, taps, bias, scale, shift, pre, isa: str, compute: str = "block"):
    """A node computing the half-block on ``x`` (an OpenVINO output, [N, H, W, C]); ``taps`` [C, k, k]."""
    import openvino.opset13 as ops
    taps = np.transpose(taps, (1, 2, 0))  # [k, k, C]: one vector of channels a tap
    constants = [ops.constant(np.ascontiguousarray(a, dtype=np.float32)).output(0)
                 for a in (taps, bias, scale, shift, pre)]
    return node_class()([x, *constants], {"isa": isa, "compute": compute})


# ---- ConvMixer from its .onnx ----------------------------------------------------------------------------

def onnx_values(graph) -> dict:
    """Every constant the graph names: initializers, Constant nodes, and Identity nodes of either."""
    from onnx import numpy_helper
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == 4:  # a tensor
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def batchnorm(node, values) -> tuple:
    """(scale, shift) of an inference BatchNormalization."""
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    gamma, beta, mean, var = (values[name].astype(np.float64) for name in node.input[1:5])
    scale = gamma / np.sqrt(var + eps)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def convmixer_layers(onnx_path) -> dict:
    """The weights of an exported ConvMixer, in order: {stem: (w, b, scale, shift), blocks: [{dw, dw_bias,
    dw_bn, pw, pw_bias, pw_bn}], head: (w, b), batch: its input's batch size, None where dynamic}. Any other
    graph is refused in one line."""
    from convmixer_suite.precision.int8 import load_onnx
    path = Path(onnx_path)
    graph = load_onnx(path).graph
    values = onnx_values(graph)
    layers = [n for n in graph.node if n.op_type in ("Conv", "BatchNormalization", "Gemm")]
    kinds = [n.op_type for n in layers]
    depth = (len(layers) - 3) // 4
    if depth < 1 or kinds != ["Conv", "BatchNormalization"] + ["Conv", "BatchNormalization"] * (2 * depth) + ["Gemm"]:
        raise UserError(f"{path}: not a ConvMixer as convmixer_pth2onnx.py exports it (its layers: "
                        f"{len(kinds)} Conv/BatchNormalization/Gemm in another order)")

    def conv(node):
        return values[node.input[1]].astype(np.float32), values[node.input[2]].astype(np.float32)

    stem_w, stem_b = conv(layers[0])
    blocks = []
    for d in range(depth):
        dw, bn1, pw, bn2 = layers[2 + 4 * d: 6 + 4 * d]
        (dw_w, dw_b), (pw_w, pw_b) = conv(dw), conv(pw)
        blocks.append({"dw": dw_w[:, 0], "dw_bias": dw_b, "dw_bn": batchnorm(bn1, values),
                       "pw": pw_w[:, :, 0, 0], "pw_bias": pw_b, "pw_bn": batchnorm(bn2, values)})
    head = layers[-1]
    head_w = values[head.input[1]].astype(np.float32)
    if not any(a.name == "transB" and a.i == 1 for a in head.attribute):
        head_w = head_w.T
    first = graph.input[0].type.tensor_type.shape.dim[0]
    return {"stem": (stem_w, stem_b, *batchnorm(layers[1], values)), "blocks": blocks,
            "head": (head_w, values[head.input[2]].astype(np.float32)),
            "batch": first.dim_value if first.HasField("dim_value") else None}


def channels_last_model(layers: dict, isa: str, compute: str = "block", image_size: int = 224):
    """ConvMixer on [N, H*W, C] tokens: the patch embedding as patches x weights, each pointwise convolution as a
    matrix product (OpenVINO fuses its bias, GELU and BatchNorm scale), each half-block our operation (which also
    takes the BatchNorm shift before it), the mean over tokens, the classifier. The batch axis is the .onnx's."""
    import openvino as ov
    import openvino.opset13 as ops
    stem_w, stem_b, scale, shift = layers["stem"]
    channels, patch = stem_w.shape[0], stem_w.shape[-1]
    if channels % 16:
        raise UserError(f"the depthwise operation needs a multiple of 16 channels, not {channels}")
    side = image_size // patch

    def tokens(h, *shape):
        return ops.reshape(h, ops.constant(np.array(shape, np.int64)), False)

    def product(h, weight, bias, bn_scale):  # weight [out, in]
        h = ops.add(ops.matmul(h, ops.constant(np.ascontiguousarray(weight)), False, True), ops.constant(bias))
        return ops.multiply(ops.gelu(h, "erf"), ops.constant(bn_scale))

    image = ops.parameter([layers.get("batch") or -1, 3, image_size, image_size], np.float32, name="image")
    h = tokens(image, -1, 3, side, patch, side, patch)  # -1: the batch
    h = ops.transpose(h, ops.constant(np.array([0, 2, 4, 1, 3, 5], np.int64)))  # the patches, (c, y, x) inside
    h = product(tokens(h, -1, side * side, 3 * patch * patch), stem_w.reshape(channels, -1), stem_b, scale)
    for block in layers["blocks"]:
        h = tokens(h, -1, side, side, channels)
        h = depthwise_block(h.output(0), block["dw"], block["dw_bias"], *block["dw_bn"], shift, isa, compute)
        h = product(tokens(h.output(0), -1, side * side, channels), block["pw"], block["pw_bias"], block["pw_bn"][0])
        shift = block["pw_bn"][1]
    h = ops.add(ops.reduce_mean(h, ops.constant(np.array([1], np.int64)), False), ops.constant(shift))
    head_w, head_b = layers["head"]
    logits = ops.matmul(h, ops.constant(np.ascontiguousarray(head_w)), False, True, name=CLASSIFIER)
    return ov.Model([ops.result(ops.add(logits, ops.constant(head_b)))], [image], "convmixer_channels_last")


def save_ir(model, target: Path) -> None:
    """The model as IR under ``target``, written under temporary names and renamed (.bin first)."""
    import openvino as ov
    tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


class DepthwiseOp:
    """The channels-last variant for convmixer_suite.precision.int8.int8_model: its cache parameters and its build."""

    def __init__(self, isa: str, compute: str, cache_dir):
        if compute not in COMPUTES:
            raise UserError(f"compute {compute}: one of {', '.join(COMPUTES)}")
        self.isa, self.compute = isa, compute
        self.extension = extension_path(cache_dir)

    def params(self) -> dict:
        return {"isa": self.isa, "compute": self.compute, "extension": self.extension.name}

    def core(self):
        return core_with_extension(self.extension)

    def quantize(self, onnx_path, samples, target: Path, settings: dict) -> None:
        """The fp32 channels-last model of ``onnx_path``, read back with the extension, quantized by NNCF with
        the int8 class's ``settings`` (the matrix products only: NNCF leaves an operation it does not know)."""
        from convmixer_suite.precision.int8 import quantize_nncf_model
        fp32 = Path(target).with_name(f"{Path(target).stem}.fp32.xml")
        save_ir(channels_last_model(convmixer_layers(onnx_path), self.isa, self.compute), fp32)
        try:
            quantize_nncf_model(self.core().read_model(str(fp32)), samples, Path(target), settings,
                                keep_fp32=(CLASSIFIER,))
        finally:
            fp32.unlink(missing_ok=True)
            fp32.with_suffix(".bin").unlink(missing_ok=True)

"""ConvMixer's depthwise half-block as an OpenVINO operation of our own (issue 13, item 3).

``native/depthwise_block.cpp`` computes ``x + scale * gelu(depthwise_conv(x) + bias) + shift`` in one pass
(bf16 products with fp32 sums where the CPU has AVX512-BF16, fp32 FMA on AVX2). This module builds it with the
machine's C++ compiler against the installed OpenVINO (cached, keyed by the source, OpenVINO's version and the
compiler), and puts it in place of each half-block of an int8 OpenVINO model: the depthwise convolution, its
bias, GELU, the folded BatchNorm and the residual sum, with the FakeQuantize nodes between them. The int8
pointwise convolutions stay OpenVINO's.

The rewritten model is written as IR (temporary names, then renamed) and read back through a Core that has the
extension, so that the nodes OpenVINO runs are the C++ ones. ``compute="copy"`` puts a copy (y = x) in their
place instead: the model's cost with the half-blocks free, which measures what OpenVINO's own layout
conversions around a custom operation cost (convmixer_suite.runtime_compare).
"""
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from convmixer_suite.cli import UserError

SOURCE = Path(__file__).parent / "native" / "depthwise_block.cpp"
OP_TYPE, OP_VERSION = "ConvMixerDepthwiseBlock", "convmixer"
COMPUTES = ("block", "copy")
CXX_HINT = "install a C++ compiler (Debian: apt-get install g++) or name one in CXX"
CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-DOV_THREAD=OV_THREAD_TBB")
# ONEDNN_MAX_CPU_ISA caps below AVX512-BF16: the kernel follows them too, so the AVX2 path can run anywhere.
AVX2_CAPS = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni"}


def kernel_isa(flags, isa_cap=None):
    """``avx512_bf16``, ``avx2`` or None (no kernel) for a set of /proc/cpuinfo flags and an ONEDNN_MAX_CPU_ISA."""
    flags = set(flags)
    if "avx2" not in flags:
        return None
    capped = bool(isa_cap) and isa_cap.strip().lower() in AVX2_CAPS
    return "avx512_bf16" if "avx512_bf16" in flags and not capped else "avx2"


def this_kernel_isa():
    from convmixer_suite.cpu_info import cpu_info
    return kernel_isa(cpu_info()["flags"], os.environ.get("ONEDNN_MAX_CPU_ISA"))


def openvino_paths() -> tuple:
    """OpenVINO's headers, its runtime library and its TBB library, as the wheel lays them out."""
    import openvino
    root = Path(openvino.__file__).parent
    libs = root / "libs"
    runtime = sorted(libs.glob("libopenvino.so.*")) or sorted(libs.glob("libopenvino.so"))
    tbb = sorted(libs.glob("libtbb.so.*"))
    if not (root / "include").is_dir() or not runtime or not tbb:
        raise UserError(f"{root}: this OpenVINO has no headers or libraries to build an extension against")
    return root / "include", runtime[0], tbb[0]


def compiler() -> str:
    name = os.environ.get("CXX", "g++")
    found = shutil.which(name)
    if not found:
        raise UserError(f"CXX={name}: no C++ compiler found to build the depthwise operation; {CXX_HINT}")
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
        raise UserError(f"{SOURCE}: the depthwise operation did not build with {cxx}: {last}")
    os.replace(tmp, target)
    return target


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


def depthwise_block(x, taps, bias, scale, shift, isa: str, compute: str = "block"):
    """A node computing the half-block on ``x`` (an OpenVINO output, [N, C, H, W]) with these constants."""
    import openvino.opset13 as ops
    constants = [ops.constant(np.ascontiguousarray(a, dtype=np.float32)).output(0)
                 for a in (taps, bias, scale, shift)]
    return node_class()([x, *constants], {"isa": isa, "compute": compute})


# ---- finding the half-blocks in an int8 model ------------------------------------------------------------

def constant_value(output):
    """The value of a constant subgraph (NNCF's compressed weights: Constant -> Convert -> Subtract/Multiply),
    or None where anything else feeds it."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data().astype(np.float32)
    if kind == "Convert":
        return constant_value(node.input_value(0))
    if kind in ("Multiply", "Subtract", "Add"):
        a, b = (constant_value(v) for v in node.input_values())
        if a is None or b is None:
            return None
        return {"Multiply": np.multiply, "Subtract": np.subtract, "Add": np.add}[kind](a, b)
    return None


def only_consumer(node):
    targets = list(node.output(0).get_target_inputs())
    return targets[0].get_node() if len(targets) == 1 else None


def past_quantizers(node):
    while node is not None and node.get_type_name() == "FakeQuantize":
        node = only_consumer(node)
    return node


def unquantized(output):
    node = output.get_node()
    return node.input_value(0) if node.get_type_name() == "FakeQuantize" else output


def per_channel_constant(node, channels: int):
    """The per-channel constant operand of an Add/Multiply, as [channels], or None."""
    for value in node.input_values():
        array = constant_value(value)
        if array is not None and array.size == channels:
            return array.reshape(channels)
    return None


def half_block(conv) -> dict:
    """The parts of the half-block that starts at GroupConvolution ``conv``: {x, taps, bias, scale, shift, end},
    or None where the graph is not x + [Multiply] [Add] GELU(erf)(depthwise(x) [+ bias]) with "same" padding."""
    attributes = conv.get_attributes()
    taps = constant_value(conv.input_value(1))
    if taps is None or taps.ndim != 5 or taps.shape[1:3] != (1, 1) or taps.shape[3] != taps.shape[4]:
        return None
    channels, k = taps.shape[0], taps.shape[-1]
    if (list(attributes.get("strides", [])) != [1, 1] or list(attributes.get("dilations", [])) != [1, 1]
            or k % 2 == 0 or list(attributes.get("pads_begin", [])) != [k // 2] * 2
            or list(attributes.get("pads_end", [])) != [k // 2] * 2):
        return None
    x = unquantized(conv.input_value(0))
    parts = {"x": x, "taps": taps.reshape(channels, k, k), "bias": np.zeros(channels, np.float32),
             "scale": np.ones(channels, np.float32), "shift": np.zeros(channels, np.float32)}
    node = only_consumer(conv)
    if node is not None and node.get_type_name() == "Add" and per_channel_constant(node, channels) is not None:
        parts["bias"] = per_channel_constant(node, channels)
        node = only_consumer(node)
    if node is None or node.get_type_name() != "Gelu" or node.get_attributes().get("approximation_mode") != "ERF":
        return None
    node = past_quantizers(only_consumer(node))
    for kind, name in (("Multiply", "scale"), ("Add", "shift")):
        if node is not None and node.get_type_name() == kind and per_channel_constant(node, channels) is not None:
            parts[name] = per_channel_constant(node, channels)
            node = past_quantizers(only_consumer(node))
    if node is None or node.get_type_name() != "Add" or not any(unquantized(v) == x for v in node.input_values()):
        return None
    parts["end"] = node
    return parts


def fuse_depthwise_blocks(model, isa: str, compute: str = "block") -> int:
    """Put the operation in place of every half-block ``half_block`` recognizes in ``model`` (in place); the
    number replaced."""
    replaced = 0
    for conv in [op for op in model.get_ordered_ops() if op.get_type_name() == "GroupConvolution"]:
        parts = half_block(conv)
        if parts is None:
            continue
        node = depthwise_block(parts["x"], parts["taps"], parts["bias"], parts["scale"], parts["shift"], isa, compute)
        parts["end"].output(0).replace(node.output(0))
        replaced += 1
    model.validate_nodes_and_infer_types()
    return replaced


def fused_model(core, int8_xml, cache_dir, isa: str, compute: str = "block"):
    """``int8_xml`` (an OpenVINO int8 IR) with its half-blocks replaced, as an IR in ``cache_dir`` (written once
    per input model, kernel, mode and source), read back through ``core`` with the extension added."""
    import openvino as ov
    extension = extension_path(cache_dir)
    core.add_extension(str(extension))
    int8_xml = Path(int8_xml)
    digest = hashlib.sha256(int8_xml.read_bytes() + int8_xml.with_suffix(".bin").read_bytes()).hexdigest()[:12]
    target = Path(cache_dir) / f"{int8_xml.stem}-{digest}.dwop-{isa}-{compute}-{extension.stem[-12:]}.xml"
    if not target.is_file():
        model = core.read_model(str(int8_xml))
        if fuse_depthwise_blocks(model, isa, compute) == 0:
            raise UserError(f"{int8_xml}: no depthwise half-block of ConvMixer's form found to replace")
        tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(tmp, target)
    return core.read_model(str(target))

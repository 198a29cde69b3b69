"""Other CPU runtimes and OpenVINO/NNCF variants beside the production openvino-int8, timed in one run (issue 13).

The question this answers: does any CPU runtime a user could pick run ConvMixer faster than the suite's
openvino-int8 within 2% of fp32, and how close does the fastest come to the same-run int8 ceiling (the
model's pointwise convolutions alone, convmixer_suite.bench.ceiling)? The gap between openvino-int8 and its ceiling
is the depthwise k x k convolutions, so beside the whole model the ``dw:`` configurations time the model's
``depth`` depthwise convolutions alone (one chain, on the feature map) in each runtime.

Every configuration is loaded and warmed up, then timed in alternation (A B C A B C …), each timed batch
after one untimed one (a runtime's threads keep spinning for a while after its run). Fidelity of each whole-
model configuration: max |diff| / max |logit| and top-1 agreement against onnxruntime fp32 (the fp32
default) on held-out generated pictures, never used for calibration.

The runtimes that are not product backends are small classes of the backends' shape (``load()``,
``predict(batch)``, ``name``, ``version``), each importing its library only when chosen:
ncnn (the model converted by pnnx), IREE (ONNX imported by iree-import-onnx, compiled for this CPU by
iree-compile). Converted models are cached in the work folder under names carrying the ONNX file's digest.

    python3 -m convmixer_suite.tools.runtime_compare --out ./runtime_compare      # ConvMixer-1536/20, seeded weights
    python3 -m convmixer_suite.tools.runtime_compare --configs onnxruntime-fp32,openvino-int8,ceiling:openvino-int8,ncnn-fp32

writes runtime_compare.json and runtime_compare.md into --out (models cached in --out/work). Optional runtimes:
``pip install -r requirements-runtimes.txt`` (a missing one is listed as not loaded, with the reason).
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from convmixer_suite.model.net import ARCHS, DEFAULT_ARCH
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import atomic_path, output_folder, write_text_atomic
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.precision.fidelity import compare_logits
from convmixer_suite.bench.profiling import profile_backend, profile_markdown

FIDELITY_LIMIT = 0.02          # the issue's "within 2% of fp32": max |diff| / max |logit|
TARGET_EFFICIENCY = 0.75       # issue 13 item 4: the fastest within the limit vs the same-run int8 ceiling
TARGET_SPEEDUP = 1.6           # … and vs the fp32 default
REFERENCE = "onnxruntime-fp32"
PRODUCTION = "openvino-int8"
CEILING = "ceiling:openvino-int8"
DEPTHWISE_PREFIX = "dw:"
NCNN_HINT = "pip install ncnn pnnx"
IREE_HINT = "pip install iree-base-compiler iree-base-runtime"
# iree-compile options beyond the defaults: convolutions turned channels-last, data tiling, ukernels.
IREE_NHWC_FLAGS = ("--iree-opt-data-tiling=true", "--iree-llvmcpu-enable-ukernels=all",
                   "--iree-preprocessing-pass-pipeline=builtin.module(util.func("
                   "iree-preprocessing-convert-conv-to-channels-last))")

# name -> (kind, options). kinds: backend (convmixer_suite.runtimes.backends), ov-variant (NNCF options / CPU
# properties of our own), dwop-copy (openvino-dwop with its half-blocks replaced by a copy: the cost of what is
# left), ncnn, iree, torch (depthwise alone only). A "dw:" name runs on the depthwise-alone model.
CONFIGS = {
    REFERENCE: ("backend", {"backend": "onnxruntime", "precision": "fp32"}),
    PRODUCTION: ("backend", {"backend": "openvino", "precision": "int8"}),
    CEILING: ("ceiling", {}),
    "openvino-int8-throughput": ("ov-variant", {"properties": {"PERFORMANCE_HINT": "THROUGHPUT"}}),
    "openvino-int8-dw-fp32": ("ov-variant", {"ignore_depthwise": True}),
    "openvino-int8-dw-bf16": ("ov-variant", {"ignore_depthwise": True, "hint": "bf16"}),
    "openvino-int8-mixed": ("ov-variant", {"preset": "MIXED"}),
    "openvino-int8-transformer": ("ov-variant", {"model_type": "TRANSFORMER"}),
    "openvino-int8-dw-op": ("backend", {"backend": "openvino-dwop", "precision": "int8"}),
    "openvino-int8-dw-op-copy": ("dwop-copy", {}),
    "ncnn-fp32": ("ncnn", {}),
    "iree-fp32": ("iree", {"flags": ()}),
    "iree-fp32-nhwc": ("iree", {"flags": IREE_NHWC_FLAGS}),
    "dw:onnxruntime-fp32": ("backend", {"backend": "onnxruntime", "precision": "fp32"}),
    "dw:openvino-fp32": ("backend", {"backend": "openvino", "precision": "fp32"}),
    "dw:openvino-bf16": ("backend", {"backend": "openvino", "precision": "bf16"}),
    "dw:openvino-int8": ("backend", {"backend": "openvino", "precision": "int8"}),
    "dw:ncnn-fp32": ("ncnn", {}),
    "dw:torch-fp32": ("torch", {"precision": "fp32"}),
    "dw:torch-bf16": ("torch", {"precision": "bf16"}),
    "dw:iree-fp32": ("iree", {"flags": ()}),
    "dw:iree-fp32-nhwc": ("iree", {"flags": IREE_NHWC_FLAGS}),
}


def digest_of(path: Path) -> str:
    from convmixer_suite.util.files import file_sha256
    return file_sha256(path)[:12]


def run_tool(argv, what: str) -> None:
    """Run a converter; a failure is one line with the end of its output."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UserError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")


# ---- the depthwise-alone model ---------------------------------------------------------------------------

def build_depthwise_onnx(spec, path: Path, seed: int = 0) -> Path:
    """``spec.depth`` depthwise k x k convolutions (groups = dim, 'same' padding) chained on the feature map,
    seeded weights of std 1/k (unit-scale activations through the chain); written once. Input as the ceiling's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convmixer_suite.bench.ceiling import CEILING_OPSET, feature_map_side
    path = Path(path)
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    dim, k, side = spec.dim, spec.kernel_size, feature_map_side(spec)
    nodes, weights = [], []
    for i in range(spec.depth):
        w = (rng.standard_normal((dim, 1, k, k)) / k).astype(np.float32)
        b = (rng.standard_normal(dim) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"dw{i}.weight"), numpy_helper.from_array(b, f"dw{i}.bias")]
        nodes.append(helper.make_node("Conv", [f"x{i}", f"dw{i}.weight", f"dw{i}.bias"], [f"x{i + 1}"],
                                      kernel_shape=[k, k], group=dim, pads=[k // 2] * 4, name=f"depthwise{i}"))
    nodes[0].input[0], nodes[-1].output[0] = "input", "output"
    shape = ["batch", dim, side, side]
    graph = helper.make_graph(nodes, f"depthwise_{spec.name}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
                              initializer=weights)
    # IR version 8 (opset 17's first): the onnxruntime inside pnnx reads at most IR 13, onnx.helper writes newer
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", CEILING_OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def depthwise_macs(spec) -> int:
    from convmixer_suite.bench.ceiling import feature_map_side
    return spec.depth * spec.kernel_size ** 2 * spec.dim * feature_map_side(spec) ** 2


# ---- runtimes that are not product backends --------------------------------------------------------------

class NcnnRunner:
    """ncnn on the ONNX model converted by pnnx (fp32 arithmetic; pnnx stores the weights as fp16).
    The ncnn wheel has no int8 calibration tools (ncnn2table / ncnn2int8), so fp32 only."""
    name = "ncnn"
    precision = "fp32"

    def __init__(self, onnx_path: Path, work: Path, threads: int, input_shape):
        self.onnx_path, self.work, self.threads, self.input_shape = Path(onnx_path), Path(work), threads, input_shape
        self.version = "unknown"

    def convert(self) -> tuple:
        """(param, bin) of the pnnx conversion, cached by the ONNX digest; the .bin is renamed into place first."""
        stem = self.work / f"{self.onnx_path.stem}-{digest_of(self.onnx_path)}.ncnn"
        param, weights = stem.with_suffix(".param"), stem.with_suffix(".bin")
        if param.is_file() and weights.is_file():
            return param, weights
        pnnx = import_optional("pnnx", "ncnn", NCNN_HINT)
        tmp = self.work / f".pnnx-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.chdir(tmp), contextlib.redirect_stdout(sys.stderr):  # pnnx writes its side files here
                pnnx.convert(str(self.onnx_path.resolve()), input_shapes=[[1, *self.input_shape]],
                             input_types=["f32"], ncnnparam=str(tmp / "m.param"), ncnnbin=str(tmp / "m.bin"))
        except FileNotFoundError:  # pnnx reports a failed conversion on stderr, then misses its own output files
            pass
        if not (tmp / "m.param").is_file():
            raise UserError(f"{self.onnx_path}: pnnx could not convert it (its messages are above)")
        os.replace(tmp / "m.bin", weights)
        os.replace(tmp / "m.param", param)
        shutil.rmtree(tmp, ignore_errors=True)
        return param, weights

    def load(self):
        ncnn = import_optional("ncnn", "ncnn", NCNN_HINT)
        self.ncnn, self.version = ncnn, ncnn.__version__
        param, weights = self.convert()
        self.net = ncnn.Net()
        self.net.opt.num_threads = self.threads
        self.net.load_param(str(param))
        self.net.load_model(str(weights))
        return self

    def predict(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in np.ascontiguousarray(batch, dtype=np.float32):
            with self.net.create_extractor() as ex:
                ex.input("in0", self.ncnn.Mat(image))
                _, out = ex.extract("out0")
                rows.append(np.array(out).reshape(-1))
        return np.stack(rows)


class IreeRunner:
    """IREE: the ONNX model with batch 1 fixed, upgraded to opset 17, imported by iree-import-onnx and compiled
    by iree-compile for the llvm-cpu backend and this CPU (``--iree-llvmcpu-target-cpu=host``), run on the
    local-task driver with ``threads`` workers."""
    name = "iree"
    precision = "fp32"
    IMPORT_OPSET = 17

    def __init__(self, onnx_path: Path, work: Path, threads: int, input_shape, flags=()):
        self.onnx_path, self.work, self.threads, self.input_shape = Path(onnx_path), Path(work), threads, input_shape
        self.flags = tuple(flags)
        self.version = "unknown"

    def compile(self) -> Path:
        import hashlib
        compiler = import_optional("iree.compiler", "iree", IREE_HINT)
        flag_key = hashlib.sha256(" ".join(self.flags).encode()).hexdigest()[:6]
        stem = f"{self.onnx_path.stem}-{digest_of(self.onnx_path)}"
        vmfb = self.work / f"{stem}.iree-{flag_key}.vmfb"
        if vmfb.is_file():
            return vmfb
        mlir = self.work / f"{stem}.b1.mlir"
        if not mlir.is_file():
            static = self.work / f"{stem}.b1.onnx"
            write_static_onnx(self.onnx_path, static, self.IMPORT_OPSET)
            with atomic_path(mlir) as tmp:
                run_tool([sys.executable, "-m", "iree.compiler.tools.import_onnx", static, "-o", tmp],
                         "iree-import-onnx")
        with atomic_path(vmfb) as tmp:
            compiler.compile_file(str(mlir), output_file=str(tmp), target_backends=["llvm-cpu"],
                                  extra_args=["--iree-llvmcpu-target-cpu=host", *self.flags])
        return vmfb

    def load(self):
        rt = import_optional("iree.runtime", "iree", IREE_HINT)
        self.version = importlib_version("iree-base-runtime")
        vmfb = self.compile()
        rt.flags.parse_flags(f"--task_topology_max_group_count={self.threads}")
        self.context = rt.SystemContext(config=rt.Config("local-task"))
        vm_module = rt.VmModule.mmap(self.context.instance, str(vmfb))
        self.context.add_vm_module(vm_module)
        entry = next((n for n in vm_module.function_names if not n.startswith("__") and "$" not in n), None)
        if entry is None:
            raise UserError(f"{vmfb}: the compiled module has no entry function")
        self.function = self.context.modules[vm_module.name][entry]
        return self

    def predict(self, batch: np.ndarray) -> np.ndarray:
        rows = [np.asarray(self.function(np.ascontiguousarray(image[None], dtype=np.float32)))
                for image in batch]
        return np.concatenate(rows).reshape(len(batch), -1)


class TorchDepthwiseRunner:
    """PyTorch eager (oneDNN's depthwise kernels) on the depthwise-alone model's own weights, fp32 or bf16
    (autocast): the depthwise path of the runtime that ran a single such layer fastest on the Zen 3."""
    name = "torch"

    def __init__(self, onnx_path: Path, threads: int, precision="fp32"):
        self.onnx_path, self.threads, self.precision = Path(onnx_path), threads, precision
        self.version = "unknown"

    def load(self):
        import onnx
        import torch
        from onnx import numpy_helper
        self.torch, self.version = torch, torch.__version__
        torch.set_num_threads(self.threads)
        model = onnx.load(str(self.onnx_path))
        weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
        self.layers = [(weights[n.input[1]], weights[n.input[2]]) for n in model.graph.node]
        return self

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            for weight, bias in self.layers:
                x = torch.nn.functional.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
        return x.float().numpy()


def write_static_onnx(source: Path, target: Path, opset: int) -> None:
    """``source`` with its batch axis fixed to 1, converted to ``opset`` (IREE's importer wants opset >= 17)."""
    import onnx
    from onnx import version_converter
    model = onnx.load(str(source))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model = version_converter.convert_version(model, opset)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))


def import_optional(module: str, runtime: str, hint: str):
    from convmixer_suite.util.libraries import import_library
    return import_library(module, runtime, hint)


def importlib_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


class OpenVinoVariant:
    """openvino-int8 made with other NNCF options (depthwise convolutions left out of int8, another preset
    or model type) or compiled with other CPU plugin properties; the IR is cached by the ONNX digest, the
    calibration folder and the options."""
    name = "openvino"
    precision = "int8"

    def __init__(self, onnx_path: Path, work: Path, threads: int, calib_dir, num_calib: int, ignore_depthwise=False,
                 hint="f32", preset=None, model_type=None, properties=None):
        self.onnx_path, self.work, self.threads = Path(onnx_path), Path(work), threads
        self.calib_dir, self.num_calib = calib_dir, num_calib
        self.nncf_options = {"ignore_depthwise": ignore_depthwise, "preset": preset, "model_type": model_type}
        self.hint, self.properties = hint, dict(properties or {})
        self.version = "unknown"

    def quantized_ir(self) -> Path:
        import hashlib
        import json

        from convmixer_suite.precision.int8 import int8_model, read_calibration
        if not any(self.nncf_options.values()):  # CPU properties only: the production model itself
            return Path(int8_model(self.onnx_path, "openvino", self.calib_dir, self.num_calib))
        samples, _ = read_calibration(self.calib_dir, self.num_calib)
        key = hashlib.sha256(json.dumps(self.nncf_options, sort_keys=True).encode() + str(len(samples)).encode()
                             + Path(self.calib_dir).resolve().as_posix().encode()).hexdigest()[:8]
        target = self.work / f"{self.onnx_path.stem}-{digest_of(self.onnx_path)}.int8-variant-{key}.xml"
        if not target.is_file():
            print(f"[INFO] quantizing an int8 variant {self.nncf_options} -> {target.name}", file=sys.stderr)
            with contextlib.redirect_stdout(sys.stderr):
                quantize_variant(self.onnx_path, samples, target, **self.nncf_options)
        return target

    def load(self):
        """Compiled on the CPU; ``core``, ``model``, ``ov_device``, ``ov_config`` and ``input_shape`` as the
        openvino backend has them, so convmixer_suite.bench.profiling reads this one too."""
        ov = import_optional("openvino", "openvino", "pip install openvino nncf")
        self.version = ov.get_version()
        self.core, self.ov_device, self.input_shape = ov.Core(), "CPU", (3, 224, 224)
        self.ov_config = {"INFERENCE_PRECISION_HINT": self.hint, "INFERENCE_NUM_THREADS": self.threads,
                          **self.properties}
        self.model = self.core.read_model(str(self.quantized_ir()))
        self.request = self.core.compile_model(self.model, self.ov_device, self.ov_config).create_infer_request()
        return self

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def quantize_variant(onnx_path: Path, samples, target: Path, ignore_depthwise=False, preset=None,
                     model_type=None) -> None:
    """NNCF as convmixer_suite.precision.int8 runs it (after OpenVINO's offline fusions), with other options;
    the .bin is renamed into place before the .xml."""
    import nncf
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations
    model = ov.Core().read_model(str(onnx_path))
    apply_moc_transformations(model, cf=True)
    options = {}
    if ignore_depthwise:  # ONNX Conv with group = channels becomes OpenVINO's GroupConvolution
        options["ignored_scope"] = nncf.IgnoredScope(types=["GroupConvolution"])
    if preset:
        options["preset"] = getattr(nncf.QuantizationPreset, preset)
    if model_type:
        options["model_type"] = getattr(nncf.ModelType, model_type)
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), fast_bias_correction=True,
                              **options)
    tmp_xml = target.with_name(f".{target.stem}.tmp{os.getpid()}.xml")
    ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
    os.replace(tmp_xml.with_suffix(".bin"), target.with_suffix(".bin"))
    os.replace(tmp_xml, target)


# ---- loading, timing, fidelity ---------------------------------------------------------------------------

def make_runner(name, models: dict, work: Path, threads: int, calib: dict, spec, num_calib: int):
    """The loaded runner of configuration ``name`` (``models``: {"model": onnx, "dw": depthwise onnx};
    ``calib``: {"model": image calibration folder, "dw": feature-map calibration folder})."""
    from convmixer_suite.runtimes.backends import create_backend
    from convmixer_suite.bench.ceiling import ceiling_input_shape, load_ceilings
    kind, options = CONFIGS[name]
    part = "dw" if name.startswith(DEPTHWISE_PREFIX) else "model"
    onnx_path = models[part]
    input_shape = ceiling_input_shape(spec) if part == "dw" else (3, 224, 224)
    if kind == "ceiling":
        loaded, skipped = load_ceilings({PRODUCTION: ("openvino", "int8")}, spec, work, threads=threads,
                                        num_calib=32, log=lambda line: print(line, file=sys.stderr))
        if skipped:
            raise UserError(skipped[PRODUCTION])
        return loaded[PRODUCTION]
    if kind == "backend":
        return create_backend(options["backend"], onnx_path, threads=threads, precision=options["precision"],
                              calib_dir=calib[part], input_shape=input_shape)
    if kind == "dwop-copy":
        from convmixer_suite.runtimes.backends import OpenVinoDepthwiseBackend

        class DepthwiseCopy(OpenVinoDepthwiseBackend):
            compute = "copy"
        return DepthwiseCopy(onnx_path, threads=threads, precision="int8", calib_dir=calib[part],
                             input_shape=input_shape).load()
    if kind == "ov-variant":
        return OpenVinoVariant(onnx_path, work, threads, calib[part], num_calib, **options).load()
    if kind == "ncnn":
        return NcnnRunner(onnx_path, work, threads, input_shape).load()
    if kind == "torch":
        return TorchDepthwiseRunner(onnx_path, threads, **options).load()
    return IreeRunner(onnx_path, work, threads, input_shape, **options).load()


def time_interleaved(runners: dict, inputs: dict, iters: int, warmup: int, log=print) -> dict:
    """{name: [ms, …]}: ``warmup`` untimed batches each, then ``iters`` rounds A B C …, each timed batch
    after one untimed one."""
    for name, runner in runners.items():
        for _ in range(warmup):
            runner.predict(inputs[name])
    times = {name: [] for name in runners}
    for round_index in range(iters):
        started_round = time.perf_counter()
        for name, runner in runners.items():
            runner.predict(inputs[name])
            started = time.perf_counter()
            runner.predict(inputs[name])
            times[name].append((time.perf_counter() - started) * 1000.0)
        seconds = time.perf_counter() - started_round
        left = seconds * (iters - round_index - 1)
        log(f"    round {round_index + 1}/{iters}: {seconds:.0f} s; about {left:.0f} s left")
    return times


def fidelity_of(outputs: dict, reference: str = REFERENCE) -> dict:
    """Per configuration: max |diff| / max |logit| and top-1 agreement against ``reference``'s logits."""
    ref = outputs[reference]
    figures = {name: compare_logits(out, ref) for name, out in outputs.items()}
    return {name: {"max_rel_diff": relative, "top1_agreement": agree / len(ref), "num_images": len(ref)}
            for name, (relative, agree) in figures.items()}


def summarize(times: dict, fid: dict, versions: dict) -> dict:
    """Rows (median ms, min ms, fidelity, efficiency vs the ceiling, speed-up vs the fp32 default) and the
    issue's target checks on the fastest whole-model configuration within the limit."""
    median = {name: float(np.median(t)) for name, t in times.items()}
    ceiling_ms = median.get(CEILING)
    rows = []
    for name, t in times.items():
        row = {"config": name, "version": versions[name], "median_ms": median[name], "min_ms": float(np.min(t)),
               "max_ms": float(np.max(t)), "iterations": len(t), **fid.get(name, {})}
        if name in fid:
            row["within_limit"] = row["max_rel_diff"] <= FIDELITY_LIMIT
            row["efficiency"] = ceiling_ms / median[name] if ceiling_ms else None
            row["speedup_vs_fp32_default"] = median[REFERENCE] / median[name] if REFERENCE in median else None
        rows.append(row)
    eligible = [r for r in rows if r.get("within_limit") and r["config"] != REFERENCE]
    fastest = min(eligible, key=lambda r: r["median_ms"]) if eligible else None
    target = None
    if fastest is not None and fastest.get("efficiency") and fastest.get("speedup_vs_fp32_default"):
        target = {"fastest": fastest["config"], "efficiency": fastest["efficiency"],
                  "efficiency_met": fastest["efficiency"] >= TARGET_EFFICIENCY,
                  "speedup": fastest["speedup_vs_fp32_default"],
                  "speedup_met": fastest["speedup_vs_fp32_default"] >= TARGET_SPEEDUP}
    return {"rows": rows, "target": target}


def markdown(report: dict) -> str:
    """The result as Markdown tables: whole model, then the depthwise-alone chain."""
    lines = [f"CPU: {report['cpu']}; load average before/after: {report['load_before']} / {report['load_after']}",
             f"Batch 1, {report['threads']} threads, {report['iters']} interleaved rounds; fidelity on "
             f"{report['num_fidelity']} held-out images vs {REFERENCE}.", "",
             "| configuration | version | median ms | min–max ms | max \\|diff\\|/max \\|logit\\| | top-1 agree "
             "| efficiency vs ceiling | x fp32 default |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    depthwise = ["", "| depthwise chain alone | version | median ms | min–max ms | GMAC/s |",
                 "|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        spread = f"{r['min_ms']:.1f}–{r['max_ms']:.1f}"
        if r["config"].startswith(DEPTHWISE_PREFIX):
            depthwise.append(f"| {r['config']} | {r['version']} | {r['median_ms']:.1f} | {spread} | "
                             f"{report['depthwise_macs'] / (r['median_ms'] * 1e6):.0f} |")
            continue
        fid = (f"{r['max_rel_diff']:.2g}{'' if r['within_limit'] else ' (over 2%)'} | {r['top1_agreement']:.2f}"
               if "max_rel_diff" in r else " | ")
        eff = f"{r['efficiency']:.2f}" if r.get("efficiency") else ""
        speed = f"{r['speedup_vs_fp32_default']:.2f}" if r.get("speedup_vs_fp32_default") else ""
        lines.append(f"| {r['config']} | {r['version']} | {r['median_ms']:.1f} | {spread} | {fid} | {eff} | {speed} |")
    return "\n".join(lines + (depthwise if len(depthwise) > 3 else []) + verdict_lines(report["target"])
                     + skipped_and_profiles(report)) + "\n"


def verdict_lines(target) -> list:
    if not target:
        return ["", "no configuration within the limit had a ceiling and a reference to compare with"]
    met = {True: "met", False: "NOT met"}
    return ["", f"Fastest within 2%: {target['fastest']}: efficiency {target['efficiency']:.2f} (target "
                f"{TARGET_EFFICIENCY}: {met[target['efficiency_met']]}), {target['speedup']:.2f}x the fp32 default "
                f"(target {TARGET_SPEEDUP}: {met[target['speedup_met']]})."]


def skipped_and_profiles(report) -> list:
    skipped = [f"- {name}: {why}" for name, why in report["skipped"].items()]
    profiles = []
    for name, rows in report.get("profiles", {}).items():
        profiles += [""] + profile_markdown(name, rows, limit=8)
    return (["", "Not loaded:"] + skipped if skipped else []) + profiles


# ---- the whole run ---------------------------------------------------------------------------------------

def prepare_models(spec, work: Path, checkpoint, seed: int, num_calib: int, log=print) -> tuple:
    """({"model": onnx, "dw": depthwise onnx}, {"model": calibration folder, "dw": feature-map folder}, checkpoint);
    seeded random weights unless ``checkpoint``; every file written once and reused."""
    from convmixer_suite.bench.ceiling import write_calibration
    from convmixer_suite.model.checkpoint import load_model
    from convmixer_suite.model.export import export_verified
    if checkpoint is None:
        checkpoint = seeded_checkpoint(spec, seed, work)
    else:
        held = load_model(checkpoint)[1].name
        if held != spec.name:
            raise UserError(f"{checkpoint}: holds {held}, not --arch {spec.name}")
    onnx_path = work / f"{spec.name}-{digest_of(checkpoint)}.onnx"
    if not onnx_path.is_file():
        log(f"==> exporting {checkpoint} to {onnx_path}")
        export_verified(load_model(checkpoint)[0], onnx_path)
    calib = work / f"calib_{num_calib}"
    preprocess_generated(work / f"calib_pictures_{num_calib}", calib, num_calib, CALIB_FIRST_INDEX)
    dw_calib = write_calibration(spec, work / f"ceiling_calib_{spec.name}_32", 32)  # the ceiling's own folder
    models = {"model": onnx_path, "dw": build_depthwise_onnx(spec, work / f"depthwise_{spec.name}.onnx")}
    return models, {"model": calib, "dw": dw_calib}, checkpoint


def seeded_checkpoint(spec, seed: int, work: Path) -> Path:
    """Seeded random weights of ``spec`` (PyTorch's default initialisation) as a state dict; written once."""
    import torch
    path = work / f"RANDOM_WEIGHTS_{spec.name}_seed{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        with atomic_path(path) as tmp:
            torch.save(spec.build().eval().state_dict(), tmp)
    return path


CALIB_FIRST_INDEX = 100_000  # generated calibration pictures never coincide with the fidelity pictures (0, 1, …)


def generated_pictures(folder: Path, count: int, first_index: int) -> Path:
    from convmixer_suite.guide.samples import sample_picture
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        if not path.is_file():
            with atomic_path(path) as tmp:
                sample_picture(first_index + i, (500, 375)).save(tmp, format="JPEG", quality=90)
    return folder


def preprocess_generated(pictures: Path, out: Path, count: int, first_index: int) -> None:
    """Generated pictures preprocessed by convmixer_preprocess.py (batch 1), the form --calib takes."""
    generated_pictures(pictures, count, first_index)
    script = Path(__file__).resolve().parents[2] / "convmixer_preprocess.py"
    run_tool([sys.executable, script, "--image-path", pictures, "--prep-image", out, "--batch-size", "1",
              "--workers", "1"], "convmixer_preprocess.py")


def fidelity_images(work: Path, count: int) -> np.ndarray:
    from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch
    paths, _ = list_images(generated_pictures(work / f"fidelity_pictures_{count}", count, 0))
    return load_batch(paths[:count], EvalTransform())[0]


def load_runners(names, models, calib, work, threads, spec, num_calib, log=print) -> tuple:
    """{name: loaded runner} and {name: why it was not loaded}; the reference must load."""
    loaded, skipped = {}, {}
    for name in names:
        log(f"==> loading {name}")
        try:
            loaded[name] = make_runner(name, models, work, threads, calib, spec, num_calib)
        except Exception as exc:  # a converter or compiler of an optional runtime failing is a result too
            if name == REFERENCE:
                raise
            skipped[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log(f"    not loaded: {skipped[name]}")
    return loaded, skipped


def run_comparison(names, spec, work: Path, *, checkpoint=None, seed=0, threads=2, iters=5, warmup=1,
                   num_calib=64, num_fidelity=4, profile=False, log=print) -> dict:
    """The whole comparison; returns the report that ``markdown`` prints."""
    from convmixer_suite.bench.ceiling import ceiling_input
    from convmixer_suite.precision.cpu_info import cpu_info, describe_cpu
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise UserError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    models, calib, checkpoint = prepare_models(spec, work, checkpoint, seed, num_calib, log)
    runners, skipped = load_runners(names, models, calib, work, threads, spec, num_calib, log)
    images = fidelity_images(work, num_fidelity)
    log(f"==> fidelity on {num_fidelity} held-out pictures")
    whole = [n for n in runners if n != CEILING and not n.startswith(DEPTHWISE_PREFIX)]
    fid = fidelity_of({n: np.concatenate([runners[n].predict(images[i:i + 1]) for i in range(len(images))])
                       for n in whole})
    feature_map = ceiling_input(spec, 1)
    inputs = {n: images[:1] if n in whole else feature_map for n in runners}
    log(f"==> timing {len(runners)} configurations interleaved, {iters} rounds")
    times = time_interleaved(runners, inputs, iters, warmup, log)
    profiles = {}
    if profile:
        for name in (n for n in whole if runners[n].name == "openvino"):
            log(f"==> layer profile of {name}")
            profiles[name] = profile_backend(runners[name], images[:1])
    info = cpu_info()
    report = summarize(times, fid, {n: f"{r.name} {r.version.split('-')[0]}" for n, r in runners.items()})
    report.update(cpu=describe_cpu(info), cpu_info=info, load_before=[round(x, 2) for x in load_before],
                  load_after=[round(x, 2) for x in os.getloadavg()], threads=threads, iters=iters, warmup=warmup,
                  num_calib=num_calib, num_fidelity=num_fidelity, arch=spec.name, checkpoint=str(checkpoint),
                  skipped=skipped, depthwise_macs=depthwise_macs(spec), models={k: str(v) for k, v in models.items()},
                  profiles=profiles)
    return report


# ---- command line ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runtime_compare", help="folder for the report and the work files")
    p.add_argument("--arch", choices=list(ARCHS), default=DEFAULT_ARCH)
    p.add_argument("--checkpoint", default=None, help="real weights (default: seeded random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--iters", type=positive_int, default=5, help="interleaved timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per configuration first (default 1)")
    p.add_argument("--num-calib", type=positive_int, default=64, help="generated calibration pictures (default 64)")
    p.add_argument("--num-images", type=positive_int, default=4, help="held-out fidelity pictures (default 4)")
    p.add_argument("--profile", action="store_true", help="after the timing, a layer-by-layer profile of each "
                                                          "whole-model OpenVINO configuration")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = output_folder(args.out, "--out")
    report = run_comparison(
        [c for c in args.configs.split(",") if c], ARCHS[args.arch], out / "work",
        checkpoint=Path(args.checkpoint) if args.checkpoint else None, seed=args.seed, threads=args.threads,
        iters=args.iters, warmup=args.warmup, num_calib=args.num_calib, num_fidelity=args.num_images,
        profile=args.profile, log=lambda line: print(line, flush=True))
    text = markdown(report)
    write_text_atomic(out / "runtime_compare.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "runtime_compare.md", text)
    print(text)


if __name__ == "__main__":
    run_main(main, modern_stack=True)

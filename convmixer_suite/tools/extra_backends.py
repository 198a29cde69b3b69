"""Backends of the runtime survey (convmixer_suite.tools.runtime_compare) that are not the product's: each a
``Backend`` (``load()``, ``predict(batch)``, ``describe()``), importing its library only when loaded.

- ``NcnnBackend``: ncnn on the ONNX model converted by pnnx;
- ``IreeBackend``: IREE, the ONNX model imported by iree-import-onnx and compiled by iree-compile for this CPU;
- ``TorchDepthwiseBackend``: PyTorch eager on a chain of depthwise convolutions (the survey's depthwise-alone model);
- ``OpenVinoVariant``: openvino-int8 quantized with other NNCF settings or compiled with other CPU properties;
- ``OpenVinoDepthwiseCopy``: openvino-dwop with its half-blocks replaced by a copy (the cost of what is left).

Converted models are cached beside the ONNX model, under names carrying its digest.
"""
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from convmixer_suite.runtimes.base import Backend, check_batch
from convmixer_suite.runtimes.openvino_backend import OpenVinoBackend, OpenVinoDepthwiseBackend
from convmixer_suite.util.errors import ToolError
from convmixer_suite.util.files import atomic_path, file_sha256
from convmixer_suite.util.libraries import import_library

NCNN_HINT = "pip install ncnn pnnx"
IREE_HINT = "pip install iree-base-compiler iree-base-runtime"


def cached_stem(onnx_path: Path) -> str:
    """``<stem>-<12 hex digits of the file's SHA-256>``: the name of what is made from it."""
    return f"{onnx_path.stem}-{file_sha256(onnx_path)[:12]}"


def run_converter(argv, what: str) -> None:
    """Run a converter; a failure is one line with the end of its output."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ToolError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")


def distribution_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


class NcnnBackend(Backend):
    """ncnn on the ONNX model converted by pnnx (fp32 arithmetic; pnnx stores the weights as fp16).
    The ncnn wheel has no int8 calibration tools (ncnn2table / ncnn2int8), so fp32 only."""
    name = "ncnn"

    def convert(self) -> tuple:
        """(param, bin) of the pnnx conversion, cached by the ONNX digest; the .bin is renamed into place first."""
        stem = self.model_path.with_name(f"{cached_stem(self.model_path)}.ncnn")
        param, weights = stem.with_suffix(".param"), stem.with_suffix(".bin")
        if param.is_file() and weights.is_file():
            return param, weights
        pnnx = import_library("pnnx", "ncnn", NCNN_HINT)
        tmp = self.model_path.parent / f".pnnx-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.chdir(tmp), contextlib.redirect_stdout(sys.stderr):  # pnnx writes its side files here
                pnnx.convert(str(self.model_path.resolve()), input_shapes=[[1, *self.input_shape]],
                             input_types=["f32"], ncnnparam=str(tmp / "m.param"), ncnnbin=str(tmp / "m.bin"))
        except FileNotFoundError:  # pnnx reports a failed conversion on stderr, then misses its own output files
            pass
        if not (tmp / "m.param").is_file():
            raise ToolError(f"{self.model_path}: pnnx could not convert it (its messages are above)")
        os.replace(tmp / "m.bin", weights)
        os.replace(tmp / "m.param", param)
        shutil.rmtree(tmp, ignore_errors=True)
        return param, weights

    def _load(self):
        ncnn = import_library("ncnn", "ncnn", NCNN_HINT)
        self.ncnn, self.version = ncnn, ncnn.__version__
        param, weights = self.convert()
        self.net = ncnn.Net()
        if self.threads:
            self.net.opt.num_threads = self.threads
        self.net.load_param(str(param))
        self.net.load_model(str(weights))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in check_batch(batch, self.input_shape):
            with self.net.create_extractor() as ex:
                ex.input("in0", self.ncnn.Mat(image))
                _, out = ex.extract("out0")
                rows.append(np.array(out).reshape(-1))
        return np.stack(rows)


class IreeBackend(Backend):
    """IREE: the ONNX model with batch 1 fixed, upgraded to opset 17, imported by iree-import-onnx and compiled
    by iree-compile for the llvm-cpu backend and this CPU (``--iree-llvmcpu-target-cpu=host``) with ``flags``
    beside it, run on the local-task driver with ``threads`` workers."""
    name = "iree"
    IMPORT_OPSET = 17

    def __init__(self, model_path, *, flags=(), **options):
        super().__init__(model_path, **options)
        self.flags = tuple(flags)

    def compile(self) -> Path:
        compiler = import_library("iree.compiler", "iree", IREE_HINT)
        flag_key = hashlib.sha256(" ".join(self.flags).encode()).hexdigest()[:6]
        stem = cached_stem(self.model_path)
        vmfb = self.model_path.with_name(f"{stem}.iree-{flag_key}.vmfb")
        if vmfb.is_file():
            return vmfb
        mlir = self.model_path.with_name(f"{stem}.b1.mlir")
        if not mlir.is_file():
            static = self.model_path.with_name(f"{stem}.b1.onnx")
            write_static_onnx(self.model_path, static, self.IMPORT_OPSET)
            with atomic_path(mlir) as tmp:
                run_converter([sys.executable, "-m", "iree.compiler.tools.import_onnx", static, "-o", tmp],
                              "iree-import-onnx")
        with atomic_path(vmfb) as tmp:
            compiler.compile_file(str(mlir), output_file=str(tmp), target_backends=["llvm-cpu"],
                                  extra_args=["--iree-llvmcpu-target-cpu=host", *self.flags])
        return vmfb

    def _load(self):
        rt = import_library("iree.runtime", "iree", IREE_HINT)
        self.version = distribution_version("iree-base-runtime")
        vmfb = self.compile()
        if self.threads:
            rt.flags.parse_flags(f"--task_topology_max_group_count={self.threads}")
        self.context = rt.SystemContext(config=rt.Config("local-task"))
        vm_module = rt.VmModule.mmap(self.context.instance, str(vmfb))
        self.context.add_vm_module(vm_module)
        entry = next((n for n in vm_module.function_names if not n.startswith("__") and "$" not in n), None)
        if entry is None:
            raise ToolError(f"{vmfb}: the compiled module has no entry function")
        self.function = self.context.modules[vm_module.name][entry]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        rows = [np.asarray(self.function(image[None])) for image in check_batch(batch, self.input_shape)]
        return np.concatenate(rows).reshape(len(batch), -1)


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


class TorchDepthwiseBackend(Backend):
    """PyTorch eager (oneDNN's depthwise kernels) on a chain of depthwise convolutions read from its ONNX model
    (one Conv node each: input, weight, bias), fp32 or bf16 (autocast): the depthwise path of the runtime that ran
    a single such layer fastest on the Zen 3."""
    name = "torch"
    supported_precisions = ("fp32", "bf16")

    def _load(self):
        import onnx
        from onnx import numpy_helper
        torch = import_library("torch", "the torch depthwise chain", "pip install torch")
        self.torch, self.version = torch, torch.__version__
        if self.threads:
            torch.set_num_threads(self.threads)
        model = onnx.load(str(self.model_path))
        weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
        self.layers = [(weights[n.input[1]], weights[n.input[2]]) for n in model.graph.node]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(check_batch(batch, self.input_shape))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            for weight, bias in self.layers:
                x = torch.nn.functional.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
        return x.float().numpy()


class OpenVinoVariant(OpenVinoBackend):
    """openvino-int8 quantized with other NNCF settings (``nncf_options``, as
    convmixer_suite.precision.int8.quantize_nncf_model reads them: depthwise convolutions left out of int8, another
    preset or model type) or compiled with another inference precision ``hint`` or other CPU plugin
    ``properties``. Without NNCF settings it runs the production int8 model itself."""
    supported_precisions = ("int8",)
    supported_devices = ("cpu",)

    def __init__(self, model_path, *, nncf_options=None, hint=None, properties=None, **options):
        super().__init__(model_path, precision="int8", **options)
        self.nncf_options, self.hint, self.properties = dict(nncf_options or {}), hint, dict(properties or {})

    def int8_options(self) -> dict:
        return {"nncf_options": self.nncf_options}

    def _compile(self, model):
        self.ov_config.update(self.properties)
        if self.hint:
            self.ov_config["INFERENCE_PRECISION_HINT"] = self.hint
        return super()._compile(model)


class OpenVinoDepthwiseCopy(OpenVinoDepthwiseBackend):
    """openvino-dwop's model with a copy in each depthwise half-block: the cost of the rest of the model."""
    compute = "copy"

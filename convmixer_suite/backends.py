"""Inference runtimes behind one small interface (MLPerf-inference style).

Each runtime is one class with ``load()``, ``predict(batch)``, ``name``, ``version`` and ``batch_size``;
its library is imported inside the class only, so a missing optional library breaks only its own
backend, with a one-line install hint (a UserError). ``create_backend`` builds and loads one.

Devices are never chosen implicitly: CPU unless ``device`` says otherwise (``cuda:N`` / ``tensorrt:N``
for onnxruntime, ``cuda:N`` for torch, ``gpu[.N]`` for openvino, an integer NPU id for msame/ais_bench).
"""
import importlib
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from convmixer_net import DATA_CONFIG
from convmixer_suite.cli import SettingError, UserError, import_library

LOG = logging.getLogger(__name__)

BACKEND_NAMES = ("onnxruntime", "openvino", "torch", "msame", "ais_bench")
PRECISIONS = ("fp32", "bf16", "int8")
IMAGE_SHAPE = tuple(DATA_CONFIG.input_size)          # (3, 224, 224)
IMAGE_BYTES = int(np.prod(IMAGE_SHAPE)) * 4          # one float32 image


def parse_device(device):
    """``None``/"cpu" -> ("cpu", None); "cuda[:N]", "tensorrt[:N]", "gpu[.N]" -> (kind, N);
    an integer (msame's NPU id) -> ("npu", N)."""
    if device is None or str(device).strip().lower() in ("", "cpu"):
        return "cpu", None
    text = str(device).strip().lower()
    if text.isdigit():
        return "npu", int(text)
    match = re.fullmatch(r"(cuda|tensorrt|gpu)(?:[:.](\d+))?", text)
    if not match:
        raise SettingError("device", f"{device!r} is not understood: use cpu, cuda:N, tensorrt:N, gpu.N "
                                     f"or an integer NPU id (msame/ais_bench)")
    return match.group(1), int(match.group(2) or 0)


def check_batch(batch: np.ndarray, shape=IMAGE_SHAPE) -> np.ndarray:
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(shape):
        raise UserError(f"a batch must have shape [N,{','.join(map(str, shape))}], got {list(batch.shape)}")
    return np.ascontiguousarray(batch, dtype=np.float32)


class Backend:
    """The interface every runtime implements. ``batch_size`` is None when the model's batch axis
    is dynamic; ``precision`` is the precision actually run (after any fallback). ``input_shape`` is one
    sample's shape: an image, unless the model takes something else (the benchmark's ceiling model)."""
    name = ""
    version = "unknown"
    batch_size = None
    supported_precisions = ("fp32",)
    supported_devices = ("cpu",)

    def __init__(self, model_path, *, threads=None, precision="fp32", device=None, calib_dir=None,
                 input_shape=IMAGE_SHAPE):
        self.model_path = Path(model_path)
        self.run_path = self.model_path  # the file that runs: the int8 model for int8 (onnx_for_precision)
        self.input_shape = tuple(input_shape)
        self.threads = threads
        self.precision = precision
        self.device = device
        self.device_kind, self.device_index = parse_device(device)
        self.calib_dir = calib_dir
        self.loaded = False
        if precision not in PRECISIONS:
            raise SettingError("precision", f"{precision!r}: choose one of {', '.join(PRECISIONS)}")
        if precision not in self.supported_precisions:
            raise SettingError("precision", f"{precision} is not available on the {self.name} backend "
                                            f"(it runs {', '.join(self.supported_precisions)})")
        if self.device_kind not in self.supported_devices:
            raise SettingError("device", f"{device} does not apply to the {self.name} backend "
                                         f"(it takes: {', '.join(self.supported_devices)})")
        if threads is not None and threads < 1:
            raise SettingError("threads", f"{threads}: must be at least 1")

    def load(self):
        """Load the model once; later calls do nothing. Returns self."""
        if not self.loaded:
            if not self.model_path.is_file():
                raise UserError(f"{self.model_path}: model file not found")
            self._load()
            self.loaded = True
        return self

    def _load(self):
        raise NotImplementedError

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """[N,3,224,224] float32 -> [N,num_classes] float32 logits."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} {self.version}, precision {self.precision}, device {self.device or 'cpu'}, " \
               f"threads {self.threads or 'runtime default'}"

    def onnx_for_precision(self) -> Path:
        """The .onnx this backend runs: the model itself, or for int8 the quantized model that
        convmixer_suite.precision (issue 5) makes and caches beside it."""
        if self.model_path.suffix.lower() != ".onnx":
            raise UserError(f"{self.model_path}: the {self.name} backend reads an .onnx model "
                            f"(make one with convmixer_pth2onnx.py)")
        if self.precision == "int8":
            precision = importlib.import_module("convmixer_suite.precision")  # only for int8: it pulls in quantizers
            self.run_path = Path(precision.int8_model(self.model_path, self.name, self.calib_dir,
                                                      sample_shape=self.input_shape))
        return self.run_path


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: CPUExecutionProvider unless --device asks for cuda:N or tensorrt:N."""
    name = "onnxruntime"
    supported_precisions = ("fp32", "int8")
    supported_devices = ("cpu", "cuda", "tensorrt")
    PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}

    def _load(self):
        ort = import_library("onnxruntime", f"the {self.name} backend",
                             "pip install onnxruntime  (onnxruntime-gpu for --device cuda:N/tensorrt:N)")
        self.version = ort.__version__
        path = self.onnx_for_precision()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        wanted = self.PROVIDERS[self.device_kind]
        if wanted not in ort.get_available_providers():
            raise SettingError("device", f"{self.device}: this onnxruntime build has no {wanted} "
                                         f"(install onnxruntime-gpu, with CUDA/TensorRT, for it)")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers(wanted))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"{path}: onnxruntime cannot load this model: {str(exc).splitlines()[0]}") from None
        if self.session.get_providers()[0] != wanted:
            raise SettingError("device", f"{self.device}: onnxruntime could not start {wanted} "
                                         f"(it fell back to {self.session.get_providers()[0]})")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        first_dim = model_input.shape[0]
        self.batch_size = first_dim if isinstance(first_dim, int) else None

    def providers(self, wanted):
        """The asked provider first; for a GPU provider the CPU provider stays as ONNX Runtime's
        per-node fallback for operators the GPU provider lacks."""
        if wanted == "CPUExecutionProvider":
            return [wanted]
        gpu_options = {"device_id": self.device_index}
        chain = [(wanted, gpu_options)]
        if wanted == "TensorrtExecutionProvider":
            chain.append(("CUDAExecutionProvider", gpu_options))
        return chain + ["CPUExecutionProvider"]

    def predict(self, batch):
        return self.session.run(None, {self.input_name: check_batch(batch, self.input_shape)})[0]


class OpenVinoBackend(Backend):
    """OpenVINO reading the same .onnx; --precision bf16 sets the inference precision hint."""
    name = "openvino"
    supported_precisions = ("fp32", "bf16", "int8")
    supported_devices = ("cpu", "gpu")

    def _load(self):
        ov = import_library("openvino", f"the {self.name} backend", "pip install openvino")
        self.version = ov.get_version()
        core = ov.Core()
        device = "CPU" if self.device_kind == "cpu" else f"GPU.{self.device_index}"
        if self.precision == "bf16" and not self.device_has_bf16(core, device):
            LOG.info(f"{device} lacks bf16 support; running fp32 instead")
            self.precision = "fp32"
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self.core, self.ov_device, self.ov_config = core, device, config
        self.ov_path = self.onnx_for_precision()
        self.model = self._openvino_call(core.read_model, str(self.ov_path))
        first_dim = self.model.input(0).get_partial_shape()[0]
        self.batch_size = first_dim.get_length() if first_dim.is_static else None
        self.requests = {}  # batch size -> infer request of the model compiled for it
        if self.batch_size:
            self.requests[self.batch_size] = self._compile(self.model)

    def _openvino_call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise UserError(f"{self.ov_path}: openvino cannot load this model on {self.ov_device}: "
                            f"{str(exc).strip().splitlines()[0]}") from None

    def _compile(self, model):
        return self._openvino_call(self.core.compile_model, model, self.ov_device,
                                   self.ov_config).create_infer_request()

    def _request_for(self, batch_size):
        """The request for this batch size. A model with a dynamic batch axis is compiled once per batch
        size it meets, with that size fixed: OpenVINO runs a dynamic axis on generic kernels, measured
        here at 530 ms an image in bf16 against 237 ms static (batch 1, ConvMixer-1536/20)."""
        if batch_size not in self.requests:
            model = self.model.clone()
            model.reshape([batch_size, *self.input_shape])
            self.requests[batch_size] = self._compile(model)
        return self.requests[batch_size]

    @staticmethod
    def device_has_bf16(core, device) -> bool:
        return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")

    def predict(self, batch):
        batch = check_batch(batch, self.input_shape)
        request = self._request_for(len(batch))
        request.infer({0: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


class TorchBackend(Backend):
    """The PyTorch reference: convmixer_net's model with the checkpoint's weights, CPU or cuda:N."""
    name = "torch"
    supported_devices = ("cpu", "cuda")

    def _load(self):
        torch = import_library("torch", f"the {self.name} backend",
                               "pip install torch --index-url https://download.pytorch.org/whl/cpu")
        self.torch = torch
        self.version = torch.__version__
        if self.model_path.suffix.lower() in (".onnx", ".om"):
            raise UserError(f"{self.model_path}: the torch backend loads the checkpoint "
                            f"(.pth, .pth.tar or .safetensors), not a {self.model_path.suffix} file")
        if self.device_kind == "cuda" and not torch.cuda.is_available():
            raise SettingError("device", f"{self.device}: this torch build sees no CUDA device")
        self.torch_device = torch.device("cpu" if self.device_kind == "cpu" else f"cuda:{self.device_index}")
        if self.threads:
            torch.set_num_threads(self.threads)
        from convmixer_suite.checkpoint import load_model
        model, self.spec = load_model(self.model_path)
        self.model = model.to(self.torch_device).eval()

    def predict(self, batch):
        with self.torch.inference_mode():
            logits = self.model(self.torch.from_numpy(check_batch(batch)).to(self.torch_device))
        return logits.float().cpu().numpy()


class ToolBackend(Backend):
    """An external Ascend tool run on an .om. ``predict`` runs the tool on one temporary .bin;
    convmixer_infer.py hands whole input folders to it through ``command`` instead."""
    supported_devices = ("cpu", "npu")
    install_hint = ""

    def _load(self):
        if self.threads:
            raise SettingError("threads", f"does not apply to the {self.name} backend (the NPU runs the model)")
        if ".om" not in self.model_path.name:
            raise UserError(f"{self.model_path}: the {self.name} backend needs an .om model "
                            f"(compile one with atc, see test/pth2om.sh)")
        self.executable = self.find_tool()
        match = re.search(r"_bs(\d+)\.om$", self.model_path.name)
        self.batch_size = int(match.group(1)) if match else None

    def find_tool(self) -> list:
        raise NotImplementedError

    def command(self, input_path, output_dir, outfmt="TXT", loop=1) -> list:
        raise NotImplementedError

    def device_args(self) -> list:
        return ["--device", str(self.device_index)] if self.device_kind == "npu" else []

    def run_tool(self, argv, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, text=True, **kwargs)

    def predict(self, batch):
        batch = check_batch(batch)
        with tempfile.TemporaryDirectory(prefix=f"{self.name}_") as tmp:
            tmp = Path(tmp)
            (tmp / "in").mkdir()
            batch.tofile(tmp / "in" / "input_00000.bin")
            result = self.run_tool(self.command(tmp / "in", tmp / "out", outfmt="BIN"),
                                   capture_output=True)
            outputs = sorted((tmp / "out").glob("*/*.bin"))
            if result.returncode != 0 or not outputs:
                raise UserError(f"{self.name} failed (exit {result.returncode}): "
                                f"{(result.stderr or result.stdout).strip()[-300:]}")
            return np.fromfile(outputs[0], dtype=np.float32).reshape(len(batch), -1)


class MsameBackend(ToolBackend):
    name = "msame"
    install_hint = ("msame is not installed (not on PATH); it is built from github.com/Ascend/tools "
                    "(msame) on a machine with the Ascend CANN toolkit and an NPU. Without an NPU use "
                    "--backend onnxruntime with the .onnx model")

    def find_tool(self):
        path = shutil.which("msame")
        if not path:
            raise UserError(self.install_hint)
        self.version = f"external tool {path}"
        return [path]

    def command(self, input_path, output_dir, outfmt="TXT", loop=1):
        argv = self.executable + ["--model", str(self.model_path), "--input", str(input_path),
                                  "--output", str(output_dir), "--outfmt", outfmt]
        if loop != 1:
            argv += ["--loop", str(loop)]
        return argv + self.device_args()


class AisBenchBackend(ToolBackend):
    """ais_bench, msame's successor, run as ``python3 -m ais_bench`` (the inference tool's module)."""
    name = "ais_bench"
    install_hint = ("ais_bench is not installed: install its aclruntime and ais_bench wheels from "
                    "github.com/Ascend/tools (ais-bench_workload/tool/ais_bench) on a machine with the "
                    "Ascend CANN toolkit and an NPU. Without an NPU use --backend onnxruntime")

    def find_tool(self):
        if importlib.util.find_spec("ais_bench") is None:
            raise UserError(self.install_hint)
        self.version = "external tool python3 -m ais_bench"
        return [sys.executable, "-m", "ais_bench"]

    def command(self, input_path, output_dir, outfmt="TXT", loop=1, output_dirname=None):
        argv = self.executable + ["--model", str(self.model_path), "--input", str(input_path),
                                  "--output", str(output_dir), "--outfmt", outfmt, "--loop", str(loop)]
        if output_dirname:
            argv += ["--output_dirname", output_dirname]
        if self.batch_size:
            argv += ["--batchsize", str(self.batch_size)]
        return argv + self.device_args()


BACKENDS = {cls.name: cls for cls in (OnnxRuntimeBackend, OpenVinoBackend, TorchBackend,
                                      MsameBackend, AisBenchBackend)}


def resolve_backend(name, model_path, precision="fp32") -> str:
    """``auto``: msame for an .om when msame is on PATH (an .om without msame is refused: no CPU runtime
    reads it); else, for bf16 (which only OpenVINO runs) and int8 (OpenVINO with NNCF measured about 1.4x
    faster than ONNX Runtime's QDQ here), openvino when it is installed; else onnxruntime.
    Any other name is checked and returned."""
    if name != "auto":
        if name not in BACKENDS:
            raise SettingError("backend", f"{name!r}: choose auto or one of {', '.join(BACKEND_NAMES)}")
        return name
    if Path(model_path).suffix.lower() == ".om":
        if shutil.which("msame"):
            return "msame"
        raise UserError(f"{model_path}: an .om model runs only on the NPU with msame, which is not on PATH; "
                        f"without an NPU pass the .onnx model (--backend onnxruntime)")
    if precision in ("bf16", "int8") and _openvino_route_installed(precision):
        return "openvino"
    return "onnxruntime"


def _openvino_route_installed(precision) -> bool:
    needed = ("openvino", "nncf") if precision == "int8" else ("openvino",)
    return all(importlib.util.find_spec(module) is not None for module in needed)


def create_backend(name, model_path, *, threads=None, precision="fp32", device=None,
                   calib_dir=None, input_shape=IMAGE_SHAPE) -> Backend:
    """Build and load the named backend (``auto`` resolved by ``resolve_backend``)."""
    name = resolve_backend(name, model_path, precision)
    return BACKENDS[name](model_path, threads=threads, precision=precision, device=device,
                          calib_dir=calib_dir, input_shape=input_shape).load()

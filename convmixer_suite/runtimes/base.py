"""The interface every runtime implements (MLPerf-inference style), and the checks all of them share.

Each runtime is one class with ``load()``, ``predict(batch)``, ``name``, ``version`` and ``batch_size``, in a
module of its own; its library is imported inside the class only, so a missing optional library breaks only its
own backend, with a one-line install hint. The registry (``runtimes.registry``) lists them.

Devices are never chosen implicitly: CPU unless ``device`` says otherwise (``cuda:N`` / ``tensorrt:N``
for onnxruntime, ``cuda:N`` for torch, ``gpu[.N]`` for openvino, an integer NPU id for msame/ais_bench).
"""
import re
import time
from pathlib import Path

import numpy as np

from convmixer_suite.model.data_config import IMAGE_SHAPE
from convmixer_suite.precision import int8
from convmixer_suite.util.errors import SettingError, UserError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's; reduce-overhead: CUDA graphs


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
    compiles = False  # takes --compile (torch.compile)

    def __init__(self, model_path, *, threads=None, precision="fp32", device=None, calib_dir=None,
                 num_calib=int8.DEFAULT_NUM_CALIB, input_shape=IMAGE_SHAPE, compile_mode=None, batch_sizes=()):
        self.model_path = Path(model_path)
        self.batch_sizes = tuple(batch_sizes)  # the run's batch sizes, where known: TensorRT builds for them
        self.run_path = self.model_path  # the file that runs: the int8 model for int8 (onnx_for_precision)
        self.input_shape = tuple(input_shape)
        self.threads = threads
        self.precision = precision
        self.device = device
        self.device_kind, self.device_index = parse_device(device)
        self.calib_dir = calib_dir
        self.num_calib = num_calib  # int8: calibrate on at most this many images of calib_dir
        self.compile_mode = compile_mode
        self.loaded = False
        self.check_settings()

    def check_settings(self) -> None:
        """Refuse, in plain words, a precision, device, thread count or compile mode this backend cannot take."""
        if self.precision not in PRECISIONS:
            raise SettingError("precision", f"{self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.precision not in self.supported_precisions:
            raise SettingError("precision", f"{self.precision} is not available on the {self.name} backend "
                                            f"(it runs {', '.join(self.supported_precisions)})")
        if self.device_kind not in self.supported_devices:
            raise SettingError("device", f"{self.device} does not apply to the {self.name} backend "
                                         f"(it takes: {', '.join(self.supported_devices)})")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"{self.threads}: must be at least 1")
        if self.compile_mode is not None and not self.compiles:
            raise SettingError("compile", f"applies to the torch backend (torch.compile), not to {self.name}")
        if self.compile_mode not in (None,) + COMPILE_MODES:
            raise SettingError("compile", f"{self.compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")

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

    def predict_each(self, batches):
        """Yield (logits, latency_ms) for each batch of an iterable, in order. A GPU backend overrides it to copy
        the next batch to the device while this one runs; here each batch is one timed ``predict``."""
        for batch in batches:
            started = time.perf_counter()
            logits = self.predict(batch)
            yield logits, (time.perf_counter() - started) * 1000.0

    def describe(self) -> str:
        compiled = f", torch.compile mode {self.compile_mode}" if self.compile_mode else ""
        return f"{self.name} {self.version}, precision {self.precision}, device {self.device or 'cpu'}, " \
               f"threads {self.threads or 'runtime default'}{compiled}"

    def onnx_for_precision(self) -> Path:
        """The .onnx this backend runs: the model itself, or for int8 the quantized model that
        convmixer_suite.precision.int8 makes and caches beside it."""
        if self.model_path.suffix.lower() != ".onnx":
            raise UserError(f"{self.model_path}: the {self.name} backend reads an .onnx model "
                            f"(make one with convmixer_pth2onnx.py)")
        if self.precision == "fp16" and self.runs_fp16_onnx():
            from convmixer_suite.precision.fp16_onnx import fp16_model
            self.run_path = fp16_model(self.model_path)
        elif self.precision == "int8":
            self.run_path = Path(int8.int8_model(self.model_path, self.runtime, self.calib_dir, self.num_calib,
                                                 sample_shape=self.input_shape, **self.int8_options()))
        return self.run_path

    @property
    def runtime(self) -> str:
        """The runtime under this backend's name: the quantizer's route, and the fidelity gate's fp32 reference."""
        return self.name

    def fp32_reference(self) -> "Backend":
        """The same model on this runtime, device and threads in fp32, loaded: what the fidelity gate compares a
        reduced precision with."""
        from convmixer_suite.runtimes.registry import BACKENDS  # the registry lists the classes built on this one
        return BACKENDS[self.runtime](self.model_path, threads=self.threads, device=self.device,
                                      input_shape=self.input_shape, batch_sizes=self.batch_sizes).load()

    def int8_options(self) -> dict:
        return {}

    def runs_fp16_onnx(self) -> bool:
        """Whether fp16 here means running the float16 ONNX (convmixer_suite.precision.fp16_onnx) rather than the fp32
        one with a runtime's own fp16 switch."""
        return False

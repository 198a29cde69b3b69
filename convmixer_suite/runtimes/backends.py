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
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import SettingError, UserError
from convmixer_suite.util.libraries import import_library
from convmixer_suite.model.data_config import DATA_CONFIG, IMAGE_BYTES, IMAGE_SHAPE
from convmixer_suite.precision.int8 import DEFAULT_NUM_CALIB

LOG = logging.getLogger(__name__)

BACKEND_NAMES = ("onnxruntime", "openvino", "openvino-dwop", "torch", "msame", "ais_bench")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's; reduce-overhead: CUDA graphs
BF16_MIN_CAPABILITY = (8, 0)  # CUDA bf16 arithmetic: Ampere (compute capability 8.0) and later
# ONNX Runtime: a session whose nodes must all run on the providers listed (no CPU fallback), and the start of its
# refusal when one cannot
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
CPU_FALLBACK_REFUSED = "fallback to CPU EP has been explicitly disabled"
# NVIDIA's libraries use no TF32 with this at 0; TensorRT has no other switch through ONNX Runtime
TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


def add_compile_option(parser) -> None:
    """The scripts' ``--compile [MODE]`` (torch backend only)."""
    parser.add_argument("--compile", dest="compile_mode", nargs="?", const="reduce-overhead", default=None,
                        choices=COMPILE_MODES, metavar="MODE",
                        help="torch backend: run the model through torch.compile, MODE one of "
                             f"{', '.join(COMPILE_MODES)} (default when given: reduce-overhead, i.e. CUDA graphs "
                             "on a GPU); each new batch size compiles once")


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
                 num_calib=DEFAULT_NUM_CALIB, input_shape=IMAGE_SHAPE, compile_mode=None, batch_sizes=()):
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
        if compile_mode is not None and not self.compiles:
            raise SettingError("compile", f"applies to the torch backend (torch.compile), not to {self.name}")
        if compile_mode not in (None,) + COMPILE_MODES:
            raise SettingError("compile", f"{compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")

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
        convmixer_suite.precision.int8 (issue 5) makes and caches beside it."""
        if self.model_path.suffix.lower() != ".onnx":
            raise UserError(f"{self.model_path}: the {self.name} backend reads an .onnx model "
                            f"(make one with convmixer_pth2onnx.py)")
        if self.precision == "fp16" and self.runs_fp16_onnx():
            from convmixer_suite.precision.fp16_onnx import fp16_model
            self.run_path = fp16_model(self.model_path)
        elif self.precision == "int8":
            precision = importlib.import_module("convmixer_suite.precision.int8")  # as tests/test_backends.py replaces it
            self.run_path = Path(precision.int8_model(self.model_path, self.runtime, self.calib_dir, self.num_calib,
                                                      sample_shape=self.input_shape, **self.int8_options()))
        return self.run_path

    @property
    def runtime(self) -> str:
        """The runtime under this backend's name: the quantizer's route, and the fidelity gate's fp32 reference."""
        return self.name

    def fp32_reference(self) -> "Backend":
        """The same model on this runtime, device and threads in fp32, loaded: what the fidelity gate compares a
        reduced precision with."""
        return BACKENDS[self.runtime](self.model_path, threads=self.threads, device=self.device,
                                      input_shape=self.input_shape, batch_sizes=self.batch_sizes).load()

    def int8_options(self) -> dict:
        return {}

    def runs_fp16_onnx(self) -> bool:
        """Whether fp16 here means running the float16 ONNX (convmixer_suite.precision.fp16_onnx) rather than the fp32 one
        with a runtime's own fp16 switch."""
        return False


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: CPUExecutionProvider unless --device asks for cuda:N or tensorrt:N. fp16: the CUDA provider
    runs the float16 ONNX (convmixer_suite.precision.fp16_onnx, float32 in and out), TensorRT its fp16 switch on the
    fp32 ONNX; the CPU provider takes no fp16."""
    name = "onnxruntime"
    supported_precisions = ("fp32", "fp16", "int8")
    supported_devices = ("cpu", "cuda", "tensorrt")
    PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}

    def _load(self):
        ort = import_library("onnxruntime", f"the {self.name} backend",
                             "pip install onnxruntime  (onnxruntime-gpu for --device cuda:N/tensorrt:N)")
        self.version = ort.__version__
        if self.precision == "fp16" and self.device_kind == "cpu":
            raise SettingError("precision", "fp16 on onnxruntime runs on --device cuda:N (a float16 ONNX) or "
                                            "tensorrt:N (TensorRT's fp16 switch); on a CPU, fp16 runs on --backend "
                                            "openvino where the CPU has AVX512_FP16 or AMX-FP16")
        wanted = self.PROVIDERS[self.device_kind]
        if wanted not in ort.get_available_providers():
            raise SettingError("device", f"{self.device}: this onnxruntime build has no {wanted} "
                                         f"(install onnxruntime-gpu, with CUDA/TensorRT, for it)")
        path = self.onnx_for_precision()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        if wanted != "CPUExecutionProvider":
            # a node the GPU provider lacks a kernel for would run on the CPU, with copies on every call
            options.add_session_config_entry(DISABLE_CPU_FALLBACK, "1")
        if wanted == "TensorrtExecutionProvider":
            os.environ[TF32_OVERRIDE] = "0"  # read by TensorRT when it builds: its only TF32 switch
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers(wanted))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if CPU_FALLBACK_REFUSED in first:
                raise SettingError("device", f"{self.device}: {wanted} cannot run every operator of {path.name} "
                                             f"(ONNX Runtime would run the rest on the CPU, copying tensors on every "
                                             f"call); run it on --device cpu, or another --precision") from None
            raise UserError(f"{path}: onnxruntime cannot load this model: {first}") from None
        if self.session.get_providers()[0] != wanted:
            raise SettingError("device", f"{self.device}: onnxruntime could not start {wanted} "
                                         f"(it fell back to {self.session.get_providers()[0]})")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        first_dim = model_input.shape[0]
        self.batch_size = first_dim if isinstance(first_dim, int) else None

    def providers(self, wanted):
        """The asked provider alone; TensorRT with the CUDA provider behind it for the operators TensorRT does not
        take. No CPU provider: every node runs on the GPU or the session is refused (DISABLE_CPU_FALLBACK, which
        ONNX Runtime refuses beside a CPU provider in the list). fp32 on CUDA is IEEE fp32 (``use_tf32`` 0), so
        that it is the true fp32 twin the reduced precisions are measured against; float16 work is unaffected."""
        if wanted == "CPUExecutionProvider":
            return [wanted]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_index, "use_tf32": 0})
        if wanted == "TensorrtExecutionProvider":
            return [(wanted, {"device_id": self.device_index, **self.tensorrt_options()}), cuda]
        return [cuda]

    def tensorrt_options(self) -> dict:
        """TensorRT builds its engine from the fp32 ONNX, in fp16 where ``trt_fp16_enable`` allows, and IEEE fp32
        elsewhere (TF32_OVERRIDE); engines are cached beside the model (building one takes minutes), in a folder
        of their own apart from engines built with TF32. With the run's batch sizes known, one engine covers
        batch 1 to the largest of them and the fidelity gate's, tuned for the run's: TensorRT would otherwise
        build an engine for every new batch size of a dynamic batch axis."""
        cache = self.model_path.with_name(f"{self.model_path.stem}.trt-cache-ieee-fp32")
        options = {"trt_fp16_enable": self.precision == "fp16", "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(cache)}
        if self.batch_sizes:
            from convmixer_suite.precision.fidelity import GATE_IMAGES
            name = onnx_input_name(self.run_path)
            shape = "x".join(str(d) for d in self.input_shape)
            options.update(trt_profile_min_shapes=f"{name}:1x{shape}",
                           trt_profile_opt_shapes=f"{name}:{max(self.batch_sizes)}x{shape}",
                           trt_profile_max_shapes=f"{name}:{max(self.batch_sizes + (GATE_IMAGES,))}x{shape}")
        return options

    def runs_fp16_onnx(self) -> bool:
        return self.device_kind == "cuda"

    def predict(self, batch):
        return self.session.run(None, {self.input_name: check_batch(batch, self.input_shape)})[0]


def onnx_input_name(path) -> str:
    """The first input's name of an .onnx, read without its weights."""
    import onnx
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


class OpenVinoBackend(Backend):
    """OpenVINO reading the same .onnx; --precision bf16/fp16 set the inference precision hint. bf16 falls back
    to fp32 (with a notice) on a device without it; fp16 is refused on a device that does not report FP16
    (on CPUs: AVX512_FP16 or AMX-FP16)."""
    name = "openvino"
    supported_precisions = ("fp32", "fp16", "bf16", "int8")
    HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
    supported_devices = ("cpu", "gpu")

    def _load(self):
        ov = import_library("openvino", f"the {self.name} backend", "pip install openvino")
        self.version = ov.get_version()
        core = self.new_core(ov)
        device = "CPU" if self.device_kind == "cpu" else f"GPU.{self.device_index}"
        if self.precision == "bf16" and not self.device_has_bf16(core, device):
            LOG.info(f"{device} lacks bf16 support; running fp32 instead")
            self.precision = "fp32"
        if self.precision == "fp16" and not self.device_has_fp16(core, device):
            raise SettingError("precision", f"fp16: OpenVINO's {device} has no fp16 inference here (its "
                                            f"OPTIMIZATION_CAPABILITIES: {', '.join(self.capabilities(core, device))}; "
                                            f"on a CPU fp16 needs AVX512_FP16 or AMX-FP16); use fp32 or bf16")
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[self.precision]}
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

    def new_core(self, ov):
        return ov.Core()

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
    def capabilities(core, device) -> list:
        return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))

    @classmethod
    def device_has_bf16(cls, core, device) -> bool:
        return "BF16" in cls.capabilities(core, device)

    @classmethod
    def device_has_fp16(cls, core, device) -> bool:
        return "FP16" in cls.capabilities(core, device)

    def predict(self, batch):
        batch = check_batch(batch, self.input_shape)
        request = self._request_for(len(batch))
        request.infer({0: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


class OpenVinoDepthwiseBackend(OpenVinoBackend):
    """OpenVINO int8 with ConvMixer's depthwise half-blocks on our own operation (convmixer_suite.runtimes.depthwise_op): the
    channels-last model built from the .onnx, its matrix products quantized by NNCF, cached beside the model as
    openvino's int8 model is. The operation is built with the machine's C++ compiler on first use (into
    convmixer_native/ beside the model). Its fp32 reference for the fidelity gate is the openvino backend."""
    name = "openvino-dwop"
    supported_precisions = ("int8",)
    supported_devices = ("cpu",)
    compute = "block"  # "copy" in runtime_compare: the model's cost with the half-blocks free

    @property
    def runtime(self) -> str:
        return "openvino"

    def _load(self):
        from convmixer_suite.precision import cpu_info
        from convmixer_suite.runtimes.depthwise_op import DepthwiseOp, this_kernel_isa
        isa = this_kernel_isa()
        if isa is None:
            raise SettingError("backend", f"{self.name}: the depthwise operation needs a CPU with AVX2 and FMA")
        self.depthwise = DepthwiseOp(isa, self.compute, self.model_path.parent / "convmixer_native")
        if cpu_info.this_int8_class() == "avx2":
            LOG.warning(f"{self.name} on CPU class avx2 (no VNNI): OpenVINO's int8 matrix products are slow there; "
                        f"measured 1.7x slower than --backend openvino (docs/depthwise-op.md)")
        super()._load()
        self.version = f"{self.version}, own depthwise op ({isa})"

    def new_core(self, ov):
        return self.depthwise.core()

    def int8_options(self) -> dict:
        return {"depthwise_op": self.depthwise}


class TorchBackend(Backend):
    """The PyTorch reference: convmixer_net's model with the checkpoint's weights, CPU or cuda:N.

    On CUDA the model runs channels_last, fp16/bf16 with its weights converted (half / bfloat16); batches go to
    the device as float32 and are converted there, logits come back float32. fp32 on CUDA is IEEE fp32 (TF32
    off), so it is the true fp32 twin the reduced precisions are measured against. ``compile_mode`` wraps the
    model in torch.compile (``reduce-overhead``: with CUDA graphs), one specialisation per batch size.
    """
    name = "torch"
    supported_precisions = ("fp32", "fp16", "bf16")
    supported_devices = ("cpu", "cuda")
    compiles = True
    DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

    def _load(self):
        torch = import_library("torch", f"the {self.name} backend",
                               "pip install torch --index-url https://download.pytorch.org/whl/cpu")
        self.torch = torch
        self.version = torch.__version__
        if self.model_path.suffix.lower() in (".onnx", ".om"):
            raise UserError(f"{self.model_path}: the torch backend loads the checkpoint "
                            f"(.pth, .pth.tar or .safetensors), not a {self.model_path.suffix} file")
        if self.device_kind == "cuda":
            self.torch_device = cuda_device(torch, self.device, self.device_index, self.precision)
        elif self.precision != "fp32":
            raise SettingError("precision", f"{self.precision} on the torch backend runs on --device cuda:N; on a "
                                            f"CPU use --backend openvino (bf16 where the CPU has it, fp16 where it has "
                                            f"AVX512_FP16 or AMX-FP16)")
        else:
            self.torch_device = torch.device("cpu")
        if self.threads:
            torch.set_num_threads(self.threads)
        from convmixer_suite.model.checkpoint import load_model
        model, self.spec = load_model(self.model_path)
        self.dtype = getattr(torch, self.DTYPES[self.precision])
        self.model = self.prepare(model)
        self.pinned = {}  # (role, shape, slot) -> page-locked host buffer, for predict_each on CUDA

    def prepare(self, model):
        """The model on its device in eval mode; on CUDA in the run's dtype and channels_last; compiled if asked."""
        torch = self.torch
        if self.device_kind == "cuda":
            model = model.to(device=self.torch_device, dtype=self.dtype, memory_format=torch.channels_last)
        model = model.to(self.torch_device).eval()
        return torch.compile(model, mode=self.compile_mode, dynamic=False) if self.compile_mode else model

    def run_model(self, x):
        """float32 on the device -> float32 logits on the device (converted to the model's dtype and layout)."""
        if self.device_kind == "cuda":
            x = x.to(self.dtype).contiguous(memory_format=self.torch.channels_last)
        if self.compile_mode:
            self.torch.compiler.cudagraph_mark_step_begin()  # each call a new step: its outputs are copied out first
        return self.model(x).float()

    def predict(self, batch):
        # inference_mode from torch 1.9 on; no_grad on the guide's torch 1.5
        with getattr(self.torch, "inference_mode", self.torch.no_grad)():
            logits = self.run_model(self.torch.from_numpy(check_batch(batch)).to(self.torch_device))
            return logits.cpu().numpy()

    def predict_each(self, batches):
        """On CUDA: batch k+1 is copied (page-locked buffer, copy stream) and queued while batch k runs; the
        latency of a batch is its device time from its start to its logits back on the host (CUDA events)."""
        if self.device_kind != "cuda":
            yield from super().predict_each(batches)
            return
        copy_stream = self.torch.cuda.Stream(device=self.torch_device)
        previous = None
        for slot, batch in enumerate(batches):
            launched = self._launch(self._upload(check_batch(batch), slot % 2, copy_stream), slot % 2)
            if previous is not None:
                yield self._collect(*previous)
            previous = launched
        if previous is not None:
            yield self._collect(*previous)

    def _pinned_buffer(self, role, shape, slot):
        key = (role, tuple(shape), slot)
        if key not in self.pinned:
            self.pinned[key] = self.torch.empty(shape, dtype=self.torch.float32, pin_memory=True)
        return self.pinned[key]

    def _upload(self, batch, slot, copy_stream):
        """Start copying ``batch`` to the device on ``copy_stream``: (device tensor, event set when it is there)."""
        torch = self.torch
        host = self._pinned_buffer("in", batch.shape, slot)
        host.numpy()[...] = batch  # the buffer of batch k-1, whose copy finished before its logits came back
        with torch.cuda.stream(copy_stream):
            x = host.to(self.torch_device, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(copy_stream)
        return x, ready

    def _launch(self, uploaded, slot):
        """Queue the model on the batch and the copy of its logits to the host, behind the work queued before."""
        torch = self.torch
        x, ready = uploaded
        compute = torch.cuda.current_stream(self.torch_device)
        compute.wait_event(ready)
        x.record_stream(compute)  # made on the copy stream, used on this one: not to be reused before it is done
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(compute)
        with torch.inference_mode():
            logits = self.run_model(x)
            host = self._pinned_buffer("out", logits.shape, slot)
            host.copy_(logits, non_blocking=True)
        end.record(compute)
        return host, start, end

    @staticmethod
    def _collect(host, start, end):
        end.synchronize()
        return host.numpy().copy(), start.elapsed_time(end)


def cuda_device(torch, device, index, precision):
    """The torch.device for cuda:N, after the one-line refusals: no CUDA, no such card, bf16 on a card before
    Ampere (compute capability 8.0)."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SettingError("device", f"{device}: this torch ({torch.__version__}, {build}) sees no CUDA device")
    count = torch.cuda.device_count()
    if index >= count:
        raise SettingError("device", f"{device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if precision == "bf16":
        capability = tuple(torch.cuda.get_device_capability(index))
        if capability < BF16_MIN_CAPABILITY:
            raise SettingError("precision", f"bf16: cuda:{index} ({torch.cuda.get_device_name(index)}) has compute "
                                            f"capability {capability[0]}.{capability[1]}; bf16 needs "
                                            f"{BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]} or later (Ampere); "
                                            f"use fp16")
    torch.backends.cudnn.benchmark = True  # a fixed shape per batch size: cuDNN times its algorithms once
    ieee_fp32(torch)
    return torch.device(f"cuda:{index}")


def ieee_fp32(torch) -> None:
    """fp32 means IEEE fp32, on every backend of this process alike: no TF32 in cuDNN convolutions or cuBLAS
    matmuls. torch 2.13 reads the ``fp32_precision`` settings (its ``allow_tf32`` flags are their deprecated
    aliases: turned off, they leave convolutions at "none", IEEE only through the defaults above them); the old
    flags are turned off first, as setting them resets the new ones, and so that what still reads them (the
    guards of torch.compile, say) finds them agreeing with the new, rather than an error."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # read with conv's by allow_tf32: the two must agree


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
    reads_dot_files = False  # msame's folder scan passes over names that start with a dot (docs/formats.md)
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
    reads_dot_files = True  # no documented exception: the manifest of a preprocessed folder would be an input
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


BACKENDS = {cls.name: cls for cls in (OnnxRuntimeBackend, OpenVinoBackend, OpenVinoDepthwiseBackend, TorchBackend,
                                      MsameBackend, AisBenchBackend)}


def resolve_backend(name, model_path, precision="fp32") -> str:
    """``auto``: msame for an .om when msame is on PATH (an .om without msame is refused: no CPU runtime
    reads it); else, for bf16 (which only OpenVINO runs on a CPU) and int8 (OpenVINO with NNCF measured about 1.4x
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
                   calib_dir=None, num_calib=DEFAULT_NUM_CALIB, input_shape=IMAGE_SHAPE, compile_mode=None,
                   batch_sizes=()) -> Backend:
    """Build and load the named backend (``auto`` resolved by ``resolve_backend``)."""
    name = resolve_backend(name, model_path, precision)
    return BACKENDS[name](model_path, threads=threads, precision=precision, device=device, calib_dir=calib_dir,
                          num_calib=num_calib, input_shape=input_shape, compile_mode=compile_mode,
                          batch_sizes=batch_sizes).load()

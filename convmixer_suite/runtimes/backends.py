"""The names this module held before the runtimes were split into one module each, kept for the code that still
imports them from here; new code imports from ``runtimes.registry``, ``runtimes.base`` and the runtime's module
(``add_compile_option`` is now ``run.config``'s)."""
from convmixer_suite.runtimes.ascend import AisBenchBackend, MsameBackend, ToolBackend  # noqa: F401
from convmixer_suite.runtimes.base import COMPILE_MODES, PRECISIONS, Backend, check_batch, parse_device  # noqa: F401
from convmixer_suite.runtimes.cuda import BF16_MIN_CAPABILITY, cuda_device, ieee_fp32  # noqa: F401
from convmixer_suite.runtimes.onnxruntime_backend import OnnxRuntimeBackend  # noqa: F401
from convmixer_suite.runtimes.openvino_backend import OpenVinoBackend, OpenVinoDepthwiseBackend  # noqa: F401
from convmixer_suite.runtimes.registry import BACKEND_NAMES, BACKENDS, create_backend, resolve_backend  # noqa: F401
from convmixer_suite.runtimes.torch_backend import TorchBackend  # noqa: F401

"""The one list of runtimes: name -> Backend class. ``create_backend`` builds and loads one by name, ``auto``
resolved by ``resolve_backend``.

Importing this imports no runtime library: each backend imports its own when it loads (a Ray decode task and
the guide's Python 3.7 import this module)."""
import importlib.util
import shutil
from pathlib import Path

from convmixer_suite.model.data_config import IMAGE_SHAPE
from convmixer_suite.precision.int8 import DEFAULT_NUM_CALIB
from convmixer_suite.runtimes.ascend import AisBenchBackend, MsameBackend
from convmixer_suite.runtimes.base import Backend
from convmixer_suite.runtimes.onnxruntime_backend import OnnxRuntimeBackend
from convmixer_suite.runtimes.openvino_backend import OpenVinoBackend, OpenVinoDepthwiseBackend
from convmixer_suite.runtimes.torch_backend import TorchBackend
from convmixer_suite.util.errors import SettingError, UserError

BACKENDS = {cls.name: cls for cls in (OnnxRuntimeBackend, OpenVinoBackend, OpenVinoDepthwiseBackend, TorchBackend,
                                      MsameBackend, AisBenchBackend)}
BACKEND_NAMES = tuple(BACKENDS)


def resolve_backend(name, model_path, precision="fp32") -> str:
    """``auto``: msame for an .om when msame is on PATH (an .om without msame is refused: no CPU runtime
    reads it); else, for bf16 (which only OpenVINO runs on a CPU) and int8 (OpenVINO with NNCF measured faster
    than ONNX Runtime's QDQ, docs/precision.md), openvino when it is installed; else onnxruntime.
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

"""fp16 ONNX: the exported fp32 model with float16 weights and arithmetic, float32 inputs and outputs.

ONNX Runtime's CUDA provider runs a model in the precision its graph says, so fp16 on it needs an fp16 graph.
The conversion is ONNX Runtime's own (``onnxruntime.transformers.float16.convert_float_to_float16`` with
``keep_io_types=True``): every initializer and every intermediate tensor becomes float16, and a Cast at the input
and at the output keeps the model's interface float32, so callers feed and read float32 as for the fp32 model.

The result is cached beside the fp32 model as ``<stem>.fp16-<hash>.onnx``; the hash covers the fp32 model's bytes,
the converter's version and its parameters, so a rerun reuses it and any change makes a new one. It is written
under a temporary name and renamed when complete.
"""
import logging
from pathlib import Path

from convmixer_suite.util.errors import UserError, first_line
from convmixer_suite.util.files import atomic_path
from convmixer_suite.util.libraries import import_library
from convmixer_suite.precision.int8 import cache_key

LOG = logging.getLogger(__name__)
NEEDED_BY = "--precision fp16 on onnxruntime"
# keep_io_types: float32 in and out. Values beyond float16's range are clamped to it by the converter
# (max_finite_val), tiny ones flushed (min_positive_val): its defaults, recorded in the hash.
CONVERTER_PARAMS = {"keep_io_types": True, "min_positive_val": 5.96e-08, "max_finite_val": 65504.0}


def fp16_model(onnx_path) -> Path:
    """The fp16 form of ``onnx_path`` (an fp32 .onnx), made once and then reused."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file() or onnx_path.suffix.lower() != ".onnx":
        raise UserError(f"{onnx_path}: --precision fp16 converts an .onnx model, and this is not one")
    ort = import_library("onnxruntime", NEEDED_BY, "pip install onnxruntime")
    key = cache_key(onnx_path, [], {"onnxruntime": ort.__version__, **CONVERTER_PARAMS})
    target = onnx_path.with_name(f"{onnx_path.stem}.fp16-{key}.onnx")
    if target.is_file():
        LOG.info(f"fp16: reusing {target}")
        return target
    LOG.info(f"fp16: converting {onnx_path.name} -> {target.name}")
    convert(onnx_path, target)
    return target


def convert(onnx_path: Path, target: Path) -> None:
    onnx = import_library("onnx", NEEDED_BY, "pip install onnx")
    import_library("onnxruntime", NEEDED_BY, "pip install onnxruntime")
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(onnx_path))
    try:
        half = OnnxModel(convert_float_to_float16(model, **CONVERTER_PARAMS))
        half.topological_sort()  # the converter appends its input/output Casts at the end of the node list
    except Exception as exc:  # the converter raises plain exceptions on graphs it cannot handle: its own failure
        raise RuntimeError(f"{onnx_path}: the float16 conversion failed: {first_line(exc)}") from exc
    with atomic_path(target) as tmp:
        onnx.save(half.model, str(tmp))
        onnx.checker.check_model(str(tmp))

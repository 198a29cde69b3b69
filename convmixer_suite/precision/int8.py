"""int8: static post-training quantization of the ONNX model, calibrated on preprocessed images.

Each runtime gets the quantized form it runs fastest, made by its own library:

- ``openvino``: NNCF (``nncf.quantize``) on the OpenVINO model read from the ONNX, saved as IR (.xml/.bin).
  OpenVINO's offline fusions run first, so the exported ``x*0.5*(1+erf(x/sqrt2))`` pattern becomes one Gelu
  op: NNCF would otherwise put quantizers inside the pattern and the CPU plugin could no longer fuse GELU
  and the BatchNorm after it into the int8 convolution (docs/precision.md has the figures).
- ``onnxruntime``: ``onnxruntime.quantization.quantize_static`` in QDQ format, per-channel int8 weights,
  uint8 activations (the u8s8 VNNI kernels), on the model after ``quant_pre_process`` and an opset >= 13
  upgrade (per-channel DequantizeLinear needs opset 13).

The parameters follow the CPU that runs the model (``cpu_info.this_int8_class``). Without VNNI or AMX the int8
kernels add pairs of u8 x s8 products in 16 bits and saturate, far beyond the fidelity gate's limit with the
libraries' defaults (docs/precision.md). There both libraries' own remedy is used, 7-bit weights: NNCF's
``overflow_fix=ENABLE`` (its default fixes the first layer only) and ONNX Runtime's ``reduce_range=True``.

The last rows of the calibration folder are held out of calibration (``split_rows``): the fidelity gate
(convmixer_suite.precision.fidelity) compares the int8 model with fp32 on them.

The quantized model is cached beside the fp32 one, named ``<stem>.int8-<backend>-<hash>.xml|.onnx``; the hash
covers the fp32 model's bytes, the calibration images and the parameters, the CPU's int8 class among them, so a
rerun with the same inputs on the same class of CPU reuses it, and any change (a model quantized on a VNNI machine
met on an AVX2 one) makes a new one. Files are written under temporary names and renamed when done.
"""
import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import atomic_path
from convmixer_suite.util.libraries import import_library
from convmixer_suite.model.data_config import IMAGE_SHAPE
from convmixer_suite.guide.batch_files import load_rows, preprocessed_rows
from convmixer_suite.precision.cpu_info import this_int8_class

LOG = logging.getLogger(__name__)

DEFAULT_NUM_CALIB = 300
HELD_OUT_IMAGES = 8  # the calibration folder's last rows, kept for the fidelity gate
QDQ_MIN_OPSET = 13
ROUTES = {"openvino": ("nncf", ".xml"), "onnxruntime": ("qdq", ".onnx")}
INT8_USER = "--precision int8 on this backend"


def int8_model(onnx_path, backend_name, calib_dir, num_calib=DEFAULT_NUM_CALIB, sample_shape=IMAGE_SHAPE,
               cpu_class=None, depthwise_op=None, nncf_options=None) -> Path:
    """The int8 model for ``backend_name`` made from ``onnx_path`` for this machine's int8 class (or
    ``cpu_class``), calibrated on the first ``num_calib`` images of ``calib_dir`` that are not held out (a folder
    written by convmixer_preprocess.py; or, for a model whose input is not an image, batch files of float32
    samples of ``sample_shape``); built once, then reused. ``depthwise_op`` (a depthwise_op.DepthwiseOp, openvino
    only): the channels-last model whose depthwise half-blocks run on our own operation. ``nncf_options``
    (openvino only): NNCF settings beside the int8 class's, as ``quantize_nncf_model`` reads them."""
    onnx_path = Path(onnx_path)
    if backend_name not in ROUTES:
        raise UserError(f"--precision int8 runs on {' or '.join(ROUTES)}, not on the {backend_name} backend")
    if not onnx_path.is_file() or onnx_path.suffix.lower() != ".onnx":
        raise UserError(f"{onnx_path}: --precision int8 quantizes an .onnx model, and this is not one")
    folder = calibration_folder(calib_dir, num_calib)
    rows = calibration_rows(folder, sample_shape)
    calibration, _ = split_rows(rows, num_calib, folder)
    samples, sample_names = load_rows(folder, calibration, sample_shape)
    route, suffix = ROUTES[backend_name]
    cpu_class = cpu_class or this_int8_class()
    if nncf_options and route != "nncf":
        raise UserError(f"NNCF options apply to openvino, not to the {backend_name} backend")
    settings = {**quantizer_settings(route, cpu_class), **(nncf_options or {})}
    params = {"route": route, "num_calib": len(samples), "library": library_versions(route),
              "cpu_class": cpu_class, "settings": settings}
    if tuple(sample_shape) != IMAGE_SHAPE:
        params["sample_shape"] = list(sample_shape)
    build = quantize_nncf if route == "nncf" else quantize_qdq
    variant = ""
    if depthwise_op is not None:
        if route != "nncf":
            raise UserError(f"the depthwise operation runs on openvino, not on the {backend_name} backend")
        params["depthwise_op"] = depthwise_op.params()
        build, variant = depthwise_op.quantize, "-dwop"
    target = onnx_path.with_name(f"{onnx_path.stem}.int8-{backend_name}{variant}-"
                                 f"{cache_key(onnx_path, samples, params)}{suffix}")
    described = f"CPU class {cpu_class}: {describe_settings(settings)}"
    if target.is_file():
        LOG.info(f"int8: reusing {target} ({described})")
        return target
    load_onnx(onnx_path, load_external_data=False)  # a damaged file: one line, not the quantizer's traceback
    LOG.info(f"int8: quantizing {onnx_path.name} for {backend_name} ({route}, {described}), calibrated on "
             f"{len(samples)} images of {folder} -> {target.name}")
    with contextlib.redirect_stdout(sys.stderr):  # the libraries' progress must not enter msame's log
        build(onnx_path, samples, target, settings)
    write_calibration_record(target, sample_names, params)
    return target


def load_onnx(path, load_external_data=True):
    """The ONNX model at ``path``, or one line naming the file where it does not parse as one."""
    import onnx
    from google.protobuf.message import DecodeError
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a readable ONNX model ({reason})") from exc


def quantizer_settings(route: str, cpu_class: str) -> dict:
    """The quantizer's parameters for a CPU int8 class (cpu_info.INT8_CLASSES): 7-bit weights where the
    kernels add u8 x s8 pairs in 16 bits (``avx2``), the libraries' defaults where VNNI or AMX add in 32."""
    narrow = cpu_class == "avx2"
    if route == "nncf":
        return {"overflow_fix": "enable" if narrow else "first_layer_only"}
    return {"reduce_range": narrow}


def describe_settings(settings: dict) -> str:
    narrow = settings.get("overflow_fix") == "enable" or settings.get("reduce_range")
    named = ", ".join(f"{k}={v}" for k, v in settings.items())
    return f"{named} ({'7-bit' if narrow else '8-bit'} weights)"


def read_calibration(calib_dir, num_calib, sample_shape=IMAGE_SHAPE) -> tuple:
    """The first ``num_calib`` real images (not padding, not skipped) of a preprocessed folder, each as a
    [1,3,224,224] float32 array (``[1, *sample_shape]``), with their names."""
    folder = calibration_folder(calib_dir, num_calib)
    return load_rows(folder, calibration_rows(folder, sample_shape)[:num_calib], sample_shape)


def held_out_images(calib_dir, num_calib=DEFAULT_NUM_CALIB, sample_shape=IMAGE_SHAPE) -> tuple:
    """The images of ``calib_dir`` that int8 calibration leaves out (``split_rows``), as one
    [n, *sample_shape] array, with their names."""
    folder = calibration_folder(calib_dir, num_calib)
    rows = calibration_rows(folder, sample_shape)
    _, held_out = split_rows(rows, num_calib, folder)
    samples, names = load_rows(folder, held_out, sample_shape)
    return np.concatenate(samples), names


def split_rows(rows: list, num_calib: int, folder) -> tuple:
    """(calibration rows, held-out rows). The held-out rows are the folder's last ones, up to
    HELD_OUT_IMAGES: those beyond the first ``num_calib`` when there are any, else the last half at most, so
    that a folder of a few images still keeps some out of calibration."""
    total = len(rows)
    spare = total - num_calib
    held = min(HELD_OUT_IMAGES, spare if spare > 0 else total // 2)
    if held < 1:
        raise UserError(f"{folder}: {total} image(s) to calibrate on; the fidelity check needs at least one "
                        f"more, held out of calibration (give a folder of a few hundred)")
    return rows[:min(num_calib, total - held)], rows[total - held:]


def calibration_folder(calib_dir, num_calib) -> Path:
    if calib_dir is None:
        raise UserError("--precision int8 needs --calib DIR: a folder of a few hundred images preprocessed "
                        "by convmixer_preprocess.py, to calibrate the quantization on")
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: calibration folder not found (make it with convmixer_preprocess.py)")
    if num_calib < 1:
        raise UserError(f"number of calibration images must be at least 1, got {num_calib}")
    return folder


def calibration_rows(folder: Path, sample_shape=IMAGE_SHAPE) -> list:
    """Every real image of a preprocessed calibration folder (``batch_files.preprocessed_rows``)."""
    rows = preprocessed_rows(folder, sample_shape)
    if not rows:
        raise UserError(f"{folder}: no preprocessed images (input_NNNNN.bin) to calibrate on")
    return rows


def library_versions(route) -> dict:
    if route == "nncf":
        nncf, ov = (import_library(module, INT8_USER, hint) for module, hint in
                    (("nncf", "pip install nncf openvino"), ("openvino", "pip install openvino")))
        return {"nncf": nncf.__version__, "openvino": ov.get_version()}
    ort = import_library("onnxruntime", INT8_USER, "pip install onnxruntime")
    return {"onnxruntime": ort.__version__}


def cache_key(onnx_path: Path, samples, params: dict) -> str:
    """12 hex digits of a SHA-256 over the model bytes, the calibration arrays and the parameters."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    for sample in samples:
        digest.update(sample.tobytes())
    return digest.hexdigest()[:12]


def write_calibration_record(target: Path, sample_names, params: dict) -> None:
    """``<model>.calib.json`` beside the int8 model: which images and parameters made it."""
    from convmixer_suite.util.files import write_text_atomic
    record = {**params, "images": list(sample_names)}
    write_text_atomic(target.with_name(target.name + ".calib.json"), json.dumps(record, indent=1) + "\n")


def progress(samples, what):
    from tqdm import tqdm
    return tqdm(samples, desc=what, unit="img", file=sys.stderr, leave=False)


def quantize_nncf(onnx_path: Path, samples, target: Path, settings: dict) -> None:
    """NNCF post-training quantization of the OpenVINO model, saved as IR."""
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations

    model = ov.Core().read_model(str(onnx_path))
    apply_moc_transformations(model, cf=True)  # fuses the exported erf pattern into Gelu, folds constants
    quantize_nncf_model(model, samples, target, settings)


def quantize_nncf_model(model, samples, target: Path, settings: dict, keep_fp32=()) -> None:
    """NNCF post-training quantization of an OpenVINO model (but the nodes named in ``keep_fp32``), saved as IR;
    the .bin is renamed into place before the .xml, so an .xml under the final name always has its weights
    beside it. ``settings``: ``overflow_fix``, and optionally ``ignored_types`` (operation types left in fp32),
    ``preset`` (a QuantizationPreset name) and ``model_type`` (a ModelType name)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(settings["overflow_fix"]))
    options = {}
    if keep_fp32 or settings.get("ignored_types"):
        options["ignored_scope"] = nncf.IgnoredScope(names=list(keep_fp32),
                                                     types=list(settings.get("ignored_types", ())))
    if settings.get("preset"):
        options["preset"] = getattr(nncf.QuantizationPreset, settings["preset"])
    if settings.get("model_type"):
        options["model_type"] = getattr(nncf.ModelType, settings["model_type"])
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                              fast_bias_correction=True, advanced_parameters=advanced, **options)
    tmp_xml = target.with_name(f".{target.stem}.tmp{os.getpid()}.xml")
    tmp_bin = tmp_xml.with_suffix(".bin")
    try:
        ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_bin, target.with_suffix(".bin"))
        os.replace(tmp_xml, target)
    finally:
        for leftover in (tmp_xml, tmp_bin):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def quantize_qdq(onnx_path: Path, samples, target: Path, settings: dict) -> None:
    """ONNX Runtime static quantization, QDQ format, per-channel int8 weights (7-bit with ``reduce_range``),
    uint8 activations."""
    import tempfile

    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from convmixer_suite.model.export import opset_of

    class SampleReader(CalibrationDataReader):
        def __init__(self, input_name):
            self.input_name = input_name
            self.rewind()

        def get_next(self):
            sample = next(self.iterator, None)
            return None if sample is None else {self.input_name: sample}

        def rewind(self):
            self.iterator = iter(progress(samples, "int8 calibration"))

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.stem}.") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))  # shape inference + graph optimisation
        model = onnx.load(str(prepared))
        if opset_of(model) < QDQ_MIN_OPSET:  # per-channel DequantizeLinear needs opset 13
            onnx.save(version_converter.convert_version(model, QDQ_MIN_OPSET), str(prepared))
        with atomic_path(target) as tmp, rank1_per_channel_warnings_silenced():
            quantize_static(str(prepared), str(tmp), SampleReader(model.graph.input[0].name),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=settings["reduce_range"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


@contextlib.contextmanager
def rank1_per_channel_warnings_silenced():
    """ONNX Runtime's quantizer warns 'Axis 1 is out-of-range for weight …' for every rank-1 weight (BatchNorm
    scales), which it then quantizes per tensor as it should: dozens of lines that say nothing to the user. It
    logs them on the root logger itself (``logging.warning``), so they are dropped there by where they come from,
    its quantization package, below ERROR; its own loggers are held at ERROR too. The root logger's level, and
    what anything else logs, stay as they are."""
    import onnxruntime.quantization
    package = os.path.dirname(onnxruntime.quantization.__file__) + os.sep

    def not_from_the_quantizer(record) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(package)
    root, own = logging.getLogger(), logging.getLogger(onnxruntime.quantization.__name__)
    level = own.level
    root.addFilter(not_from_the_quantizer)
    own.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(not_from_the_quantizer)
        own.setLevel(level)

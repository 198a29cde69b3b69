"""int8: static post-training quantization of the ONNX model, calibrated on preprocessed images.

Each runtime gets the quantized form it runs fastest, made by its own library:

- ``openvino``: NNCF (``nncf.quantize``) on the OpenVINO model read from the ONNX, saved as IR (.xml/.bin).
  OpenVINO's offline fusions run first, so the exported ``x*0.5*(1+erf(x/sqrt2))`` pattern becomes one Gelu
  op: NNCF would otherwise put quantizers inside the pattern and the CPU plugin could no longer fuse GELU
  and the BatchNorm after it into the int8 convolution (measured: 215 -> 184 ms/image).
- ``onnxruntime``: ``onnxruntime.quantization.quantize_static`` in QDQ format, per-channel int8 weights,
  uint8 activations (the u8s8 VNNI kernels), on the model after ``quant_pre_process`` and an opset >= 13
  upgrade (per-channel DequantizeLinear needs opset 13).

The quantized model is cached beside the fp32 one, named ``<stem>.int8-<backend>-<hash>.xml|.onnx``; the hash
covers the fp32 model's bytes, the calibration images and the parameters, so a rerun with the same inputs
reuses it and any change makes a new one. Files are written under temporary names and renamed when done.
"""
import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from convmixer_suite.cli import UserError, atomic_path, import_library

LOG = logging.getLogger(__name__)

DEFAULT_NUM_CALIB = 300
QDQ_MIN_OPSET = 13
# Measured side by side on the full ConvMixer-1536/20 (2-core AMD EPYC, avx512_bf16/vnni, batch 1, busy
# machine; test/benchmark.py): OpenVINO+NNCF int8 457 ms/image, ONNX Runtime QDQ int8 642 ms/image.
ROUTES = {"openvino": ("nncf", ".xml"), "onnxruntime": ("qdq", ".onnx")}
IMAGE_SHAPE = (3, 224, 224)
INT8_USER = "--precision int8 on this backend"


def int8_model(onnx_path, backend_name, calib_dir, num_calib=DEFAULT_NUM_CALIB, sample_shape=IMAGE_SHAPE) -> Path:
    """The int8 model for ``backend_name`` made from ``onnx_path``, calibrated on the first ``num_calib``
    images of ``calib_dir`` (a folder written by convmixer_preprocess.py; or, for a model whose input is not
    an image, batch files of float32 samples of ``sample_shape``); built once, then reused."""
    onnx_path = Path(onnx_path)
    if backend_name not in ROUTES:
        raise UserError(f"--precision int8 runs on {' or '.join(ROUTES)}, not on the {backend_name} backend")
    if not onnx_path.is_file() or onnx_path.suffix.lower() != ".onnx":
        raise UserError(f"{onnx_path}: --precision int8 quantizes an .onnx model, and this is not one")
    samples, sample_names = read_calibration(calib_dir, num_calib, sample_shape)
    route, suffix = ROUTES[backend_name]
    params = {"route": route, "num_calib": len(samples), "library": library_versions(route)}
    if tuple(sample_shape) != IMAGE_SHAPE:
        params["sample_shape"] = list(sample_shape)
    target = onnx_path.with_name(f"{onnx_path.stem}.int8-{backend_name}-"
                                 f"{cache_key(onnx_path, samples, params)}{suffix}")
    if target.is_file():
        LOG.info(f"int8: reusing {target}")
        return target
    LOG.info(f"int8: quantizing {onnx_path.name} for {backend_name} ({route}), calibrated on "
             f"{len(samples)} images of {calib_dir} -> {target.name}")
    build = quantize_nncf if route == "nncf" else quantize_qdq
    with contextlib.redirect_stdout(sys.stderr):  # the libraries' progress must not enter msame's log
        build(onnx_path, samples, target)
    write_calibration_record(target, sample_names, params)
    return target


def read_calibration(calib_dir, num_calib, sample_shape=IMAGE_SHAPE) -> tuple:
    """The first ``num_calib`` real images (not padding, not skipped) of a preprocessed folder, each as a
    [1,3,224,224] float32 array (``[1, *sample_shape]``), with their names."""
    from convmixer_suite.manifest import BATCH_FILE_RE, batch_file_name, read_manifest

    if calib_dir is None:
        raise UserError("--precision int8 needs --calib DIR: a folder of a few hundred images preprocessed "
                        "by convmixer_preprocess.py, to calibrate the quantization on")
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: calibration folder not found (make it with convmixer_preprocess.py)")
    if num_calib < 1:
        raise UserError(f"number of calibration images must be at least 1, got {num_calib}")
    manifest = read_manifest(folder)
    if manifest is not None:
        rows = [(batch_file_name(b), r, name, manifest.batch_size) for b, r, name in manifest.scored_rows()]
    else:  # no manifest: every row of every batch file, in file order
        files = sorted(p.name for p in folder.iterdir() if BATCH_FILE_RE.match(p.name))
        rows = [(f, r, f"{f}[{r}]", n) for f in files for n in [batch_rows(folder / f, sample_shape)]
                for r in range(n)]
    if not rows:
        raise UserError(f"{folder}: no preprocessed images (input_NNNNN.bin) to calibrate on")
    rows = rows[:num_calib]
    cache = {}
    samples = []
    for file_name, row, _, batch_size in rows:
        if file_name not in cache:
            cache = {file_name: load_batch_file(folder / file_name, batch_size, sample_shape)}
        samples.append(cache[file_name][row:row + 1].copy())
    return samples, [name for _, _, name, _ in rows]


def batch_rows(path: Path, sample_shape=IMAGE_SHAPE) -> int:
    image_bytes = int(np.prod(sample_shape)) * 4
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise UserError(f"{path}: {size} bytes is not a whole number of "
                        f"{'x'.join(map(str, sample_shape))} float32 images")
    return size // image_bytes


def load_batch_file(path: Path, batch_size: int, sample_shape=IMAGE_SHAPE) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: batch file listed in the manifest is missing")
    rows = batch_rows(path, sample_shape)
    if rows != batch_size:
        raise UserError(f"{path}: holds {rows} images, the manifest says batches of {batch_size}")
    return np.fromfile(path, dtype=np.float32).reshape(batch_size, *sample_shape)


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
    from convmixer_suite.cli import write_text_atomic
    record = {**params, "images": list(sample_names)}
    write_text_atomic(target.with_name(target.name + ".calib.json"), json.dumps(record, indent=1) + "\n")


def progress(samples, what):
    from tqdm import tqdm
    return tqdm(samples, desc=what, unit="img", file=sys.stderr, leave=False)


def quantize_nncf(onnx_path: Path, samples, target: Path) -> None:
    """NNCF post-training quantization of the OpenVINO model, saved as IR; the .bin is renamed into
    place before the .xml, so an .xml under the final name always has its weights beside it."""
    import nncf
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations

    model = ov.Core().read_model(str(onnx_path))
    apply_moc_transformations(model, cf=True)  # fuses the exported erf pattern into Gelu, folds constants
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                              fast_bias_correction=True)
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


def quantize_qdq(onnx_path: Path, samples, target: Path) -> None:
    """ONNX Runtime static quantization, QDQ format, per-channel int8 weights, uint8 activations."""
    import tempfile

    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from convmixer_suite.export import opset_of

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
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


@contextlib.contextmanager
def rank1_per_channel_warnings_silenced():
    """ONNX Runtime's quantizer logs 'Axis 1 is out-of-range for weight …' on the root logger for every
    rank-1 weight (BatchNorm scales), which it then quantizes per tensor as it should: dozens of lines
    that say nothing to the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)

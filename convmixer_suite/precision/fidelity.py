"""The fidelity gate: a reduced-precision model is checked against fp32 on the machine that runs it, before any
output is written.

Both models (the backend as loaded, and an fp32 twin of the same runtime, device and threads) run a few held-out
images: the last rows of ``--calib`` (kept out of int8 calibration, convmixer_suite.precision.int8.split_rows), or
without ``--calib`` the run's own first images. The figures are max |diff| / max |logit| and top-1 agreement.
Above ``--max-logit-error`` the run stops with one line. The figures are kept beside the model that runs, keyed
by its bytes, the images, the runtime and the CPU's int8 class, so the check runs once per model, precision and
CPU class; the limit is applied again on every run.
"""
import argparse
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import write_text_atomic
from convmixer_suite.precision.cpu_info import this_int8_class

DEFAULT_MAX_LOGIT_ERROR = 0.02
GATE_IMAGES = 8
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fidelity:
    """How far a reduced model's logits are from fp32's on the same images."""
    precision: str
    backend: str
    device: str
    cpu_class: str
    max_logit_error: float  # max |diff| / max |fp32 logit|
    top1_agreement: float
    top1_agree_images: int
    images: int
    image_source: str
    non_finite_logits: int = 0  # NaN or infinite values among both models' logits (records of before: none counted)

    def failure(self, limit: float) -> "str | None":
        """Why these figures fail ``limit``, or None when they pass. A figure that is not a number never passes."""
        if self.non_finite_logits:
            return (f"{self.non_finite_logits} logits are not finite (NaN or infinite) on {self.images} held-out "
                    f"images")
        if not math.isfinite(self.max_logit_error):
            return f"max |diff| / max |logit| is {self.max_logit_error}"
        if self.max_logit_error > limit:
            return f"max |diff| / max |logit| {self.max_logit_error:.4f} is above the limit {limit:g}"
        return None

    def line(self, limit: float) -> str:
        """One line; no "ms" in it (test/parse.py reads a log's last "…ms")."""
        return (f"[INFO] fidelity: {self.precision} on {self.backend} ({self.device}, CPU class {self.cpu_class}) "
                f"against fp32 on {self.images} held-out images of {self.image_source}: max |diff| / max |logit| "
                f"{self.max_logit_error:.4f} (limit {limit:g}), top-1 agreement {self.top1_agree_images}/"
                f"{self.images}")

    def as_dict(self, limit: float) -> dict:
        failure = self.failure(limit)
        return {**asdict(self), "limit_max_logit_error": limit, "passed": failure is None, "failed_because": failure}


def logit_error_limit(text: str) -> float:
    """An argparse type for ``--max-logit-error``: a finite number of at least 0, for every precision (a NaN limit
    would pass any model, a negative one none)."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text}")
    return value


def compare_logits(reduced: np.ndarray, reference: np.ndarray) -> tuple:
    """(max |diff| / max |reference logit|, number of images whose top-1 agrees); the error is NaN when either
    side holds a value that is not finite, which no limit passes."""
    if not (np.isfinite(reduced).all() and np.isfinite(reference).all()):
        return float("nan"), int((reduced.argmax(1) == reference.argmax(1)).sum())
    max_logit = float(np.abs(reference).max())
    error = float(np.abs(reduced - reference).max()) / max_logit if max_logit else float("inf")
    return error, int((reduced.argmax(1) == reference.argmax(1)).sum())


def logit_figures(logits: np.ndarray, reference: np.ndarray) -> dict:
    """``compare_logits``' figures as a record: max |diff|, max |reference logit|, max |diff| / max |logit|, the
    share of images whose top-1 agrees, and the number of images."""
    relative, agree = compare_logits(logits, reference)
    return {"max_abs_diff": float(np.abs(logits - reference).max()), "max_abs_logit": float(np.abs(reference).max()),
            "max_rel_diff": relative, "top1_agreement": agree / len(reference), "num_images": int(len(reference))}


def gate(backend, held_out, limit: float = DEFAULT_MAX_LOGIT_ERROR, announce=print) -> "dict | None":
    """The fidelity figures of ``backend`` (loaded) as a dict for the summaries, announced in one line; None when it
    runs fp32. ``held_out()`` gives (images, where they came from). Raises UserError, before the caller writes
    anything, when the figures exceed ``limit``."""
    if backend.precision == "fp32":
        return None
    if not 0 <= limit < math.inf:
        raise UserError(f"--max-logit-error {limit}: must be a number of at least 0")
    samples, image_source = held_out()
    record_path = cached_record_path(backend, samples)
    figures = read_cached(record_path)
    if figures is None:
        figures = measure(backend, samples, image_source)
        write_text_atomic(record_path, json.dumps(asdict(figures), indent=1) + "\n")
    announce(figures.line(limit))
    if figures.non_finite_logits or not math.isfinite(figures.max_logit_error):
        raise UserError(f"{backend.precision} on {backend.name} (CPU class {figures.cpu_class}) against fp32: "
                        f"{figures.failure(limit)}; nothing written. Try {alternatives(backend)}")
    if figures.max_logit_error > limit:
        raise UserError(f"{backend.precision} on {backend.name} (CPU class {figures.cpu_class}) is "
                        f"{figures.max_logit_error:.4f} max |diff| / max |logit| from fp32 on {figures.images} "
                        f"held-out images, above --max-logit-error {limit:g}; nothing written. Try "
                        f"{alternatives(backend)}, or a larger --max-logit-error if that error is acceptable")
    return figures.as_dict(limit)


def measure(backend, samples: np.ndarray, image_source: str) -> Fidelity:
    reference = backend.fp32_reference()
    LOG.info("fidelity: running %d held-out images on %s %s and fp32", len(samples), backend.name, backend.precision)
    reduced, expected = predict_all(backend, samples), predict_all(reference, samples)
    error, agree = compare_logits(reduced, expected)
    non_finite = int(np.count_nonzero(~np.isfinite(reduced)) + np.count_nonzero(~np.isfinite(expected)))
    return Fidelity(backend.precision, backend.name, backend.device or "cpu", this_int8_class(), error,
                    agree / len(samples), agree, len(samples), image_source, non_finite)


def predict_all(backend, samples: np.ndarray) -> np.ndarray:
    """Logits of every sample, in batches the model takes (its fixed batch size, zero-padded, or all at once)."""
    size = backend.batch_size or len(samples)
    out = []
    for start in range(0, len(samples), size):
        chunk = samples[start:start + size]
        padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        out.append(backend.predict(padded)[:len(chunk)])
    return np.concatenate(out)


def alternatives(backend) -> str:
    others = {"int8": "the other int8 backend (--backend onnxruntime or openvino), bf16, or fp32",
              "bf16": "--precision fp32", "fp16": "--precision fp32 or bf16"}
    return others.get(backend.precision, "--precision fp32")


def cached_record_path(backend, samples: np.ndarray) -> Path:
    """``<model that runs>.fidelity-<hash>.json``: the hash covers that model's bytes, the images, the runtime and
    its version, the precision, the device, torch.compile's mode and the CPU's int8 class."""
    from convmixer_suite.util.files import file_sha256
    run_path = Path(backend.run_path)
    identity = {"backend": backend.name, "version": backend.version, "precision": backend.precision,
                "device": backend.device or "cpu", "threads": backend.threads, "compile": backend.compile_mode,
                "cpu_class": this_int8_class(),
                "model_sha256": [file_sha256(p) for p in model_files(run_path)]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    return run_path.with_name(f"{run_path.name}.fidelity-{digest.hexdigest()[:12]}.json")


def model_files(run_path: Path) -> list:
    """The files a model is made of: an OpenVINO .xml has its weights in the .bin beside it."""
    weights = run_path.with_suffix(".bin")
    return [run_path, weights] if run_path.suffix == ".xml" and weights.is_file() else [run_path]


def read_cached(path: Path) -> "Fidelity | None":
    if not path.is_file():
        return None
    try:
        return Fidelity(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable or from another version: measured again and rewritten


def samples_from_calibration(calib_dir, num_calib, sample_shape) -> tuple:
    """(held-out images of ``calib_dir``, where they came from)."""
    from convmixer_suite.precision.int8 import held_out_images
    samples, names = held_out_images(calib_dir, num_calib, sample_shape=sample_shape)
    return samples, f"{calib_dir} (held out of calibration)"


def samples_from_batch_files(paths, sample_shape, count: int = GATE_IMAGES) -> tuple:
    """The first ``count`` images of the run's .bin batch files (all-zero padding rows left out)."""
    found = []
    for path in paths:
        batch = np.fromfile(path, dtype=np.float32).reshape(-1, *sample_shape)
        found += [row for row in batch if np.any(row)]
        if len(found) >= count:
            break
    if not found:
        raise UserError(f"{paths[0]}: no non-zero image in the input to check the reduced precision on")
    return np.stack(found[:count]), f"the input {Path(paths[0]).parent}"


def samples_from_images(paths, transform, count: int = GATE_IMAGES) -> tuple:
    """The first ``count`` pictures of a streaming run, decoded and transformed for the model."""
    from convmixer_suite.guide.transform import load_batch
    batch, _ = load_batch(paths[:count], transform, skip_bad=True)
    batch = batch[np.any(batch.reshape(len(batch), -1), axis=1)]
    if not len(batch):
        raise UserError(f"{Path(paths[0]).parent}: none of the first {count} pictures decodes, so the reduced "
                        f"precision cannot be checked")
    return batch, f"the first pictures of {Path(paths[0]).parent}"


def held_out_samples(backend, fallback):
    """``gate``'s source of images: the images of the backend's ``--calib`` held out of its calibration where
    it has one, else ``fallback()``'s."""
    if backend.calib_dir:
        return lambda: samples_from_calibration(backend.calib_dir, backend.num_calib, backend.input_shape)
    return fallback

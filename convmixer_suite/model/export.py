"""ONNX export of a ConvMixer the ModelZoo way, and the check that the exported file computes what PyTorch does.

``export_verified`` is what scripts call: export to a temporary name, run onnx.checker and ONNX Runtime
against PyTorch, and only then rename to the target, so a failed export or a model that disagrees with
PyTorch never leaves a file under the target's name.
"""
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convmixer_suite.model.net import DATA_CONFIG
from convmixer_suite.util.errors import UserError, first_line
from convmixer_suite.util.files import atomic_path

INPUT_NAME = "image"
OUTPUT_NAME = "class"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 11
VERIFY_BATCH_SIZES = (1, 3)
RELATIVE_TOLERANCE = 1e-4
VERIFY_SEED = 0
# ONNX metadata_props keys: the checkpoint an export was made from, so a report can tell its weights' origin.
SOURCE_NAME_KEY = "convmixer_suite.source_checkpoint"
SOURCE_SHA256_KEY = "convmixer_suite.source_sha256"


@dataclass
class VerifyReport:
    """What the verification measured: max |onnx - torch| and that over max |logit|, worst batch."""
    parameters: int
    opset: int
    file_size_mb: float
    batch_sizes: tuple
    max_abs_diff: float = 0.0
    max_abs_logit: float = 0.0
    per_batch: dict = field(default_factory=dict)
    not_compared: str = ""  # why ONNX Runtime was not compared with PyTorch; empty when it was

    @property
    def max_rel_diff(self) -> float:
        return self.max_abs_diff / self.max_abs_logit if self.max_abs_logit else float("inf")

    def lines(self) -> list:
        batches = ", ".join(map(str, self.batch_sizes))
        comparison = (f"onnxruntime vs pytorch: not checked ({self.not_compared}); onnx.checker passed"
                      if self.not_compared else
                      f"onnxruntime vs pytorch at batch {batches}: max |diff| {self.max_abs_diff:.3g}, "
                      f"max |diff|/max |logit| {self.max_rel_diff:.3g}")
        return [f"parameters: {self.parameters:,}", f"opset: {self.opset}",
                f"file size: {self.file_size_mb:.1f} MB", comparison]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def opset_of(model) -> int:
    """The default-domain opset an ONNX ModelProto imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def input_shape(batch_size: int) -> tuple:
    return (batch_size, *DATA_CONFIG.input_size)


def export_onnx(model, path, opset=DEFAULT_OPSET, batch_size=None) -> None:
    """Export with the TorchScript exporter: input ``image`` [N,3,224,224] float32, output ``class``.

    ``batch_size=None`` gives a dynamic batch axis named ``batch`` (traced with a 1x3x224x224 dummy, as the
    ModelZoo export does); an int fixes N.
    """
    dummy = torch.zeros(input_shape(batch_size or 1))
    dynamic_axes = None if batch_size else {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer notes; verify_onnx checks the result
        try:
            torch.onnx.export(model.eval(), dummy, str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True, **_torchscript_exporter())
        except (RuntimeError, ValueError) as exc:  # the exporter raises these for unsupported opsets
            raise UserError(f"ONNX export at opset {opset} failed: {first_line(exc)}") from exc


def _torchscript_exporter() -> dict:
    """torch.onnx.export's argument choosing the TorchScript exporter where there is a choice (torch 2.5 and
    later have ``dynamo=``); older releases have only that exporter."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def verify_onnx(model, path, batch_sizes=VERIFY_BATCH_SIZES) -> VerifyReport:
    """onnx.checker on the file, then ONNX Runtime (CPU) against PyTorch on seeded inputs. Without
    onnxruntime (the guide's Python 3.7 environment has none) the comparison is skipped and the report
    says why."""
    import onnx

    path = Path(path)
    onnx.checker.check_model(str(path))
    opset = opset_of(onnx.load(str(path), load_external_data=False))
    report = VerifyReport(count_parameters(model), opset, path.stat().st_size / 1e6, tuple(batch_sizes))
    try:
        import onnxruntime as ort
    except ImportError:
        report.not_compared = "onnxruntime is not installed; pip install onnxruntime to compare"
        return report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    for bs in batch_sizes:
        x = torch.randn(input_shape(bs), generator=generator)
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        report.per_batch[bs] = diff
        report.max_abs_diff = max(report.max_abs_diff, diff)
        report.max_abs_logit = max(report.max_abs_logit, float(np.abs(expected).max()))
    return report


def add_metadata(path, metadata: dict) -> None:
    """Store ``metadata`` (str -> str) in the ONNX file's metadata_props."""
    import onnx
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    onnx.save(proto, str(path))


def read_metadata(path) -> dict:
    """An ONNX file's metadata_props as a dict ({} when it has none)."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def source_metadata(source) -> dict:
    """The metadata naming the checkpoint an export comes from: its file name and sha256."""
    from convmixer_suite.util.files import file_sha256
    return {SOURCE_NAME_KEY: Path(source).name, SOURCE_SHA256_KEY: file_sha256(source)}


def export_verified(model, target, opset=DEFAULT_OPSET, batch_size=None,
                    tolerance=RELATIVE_TOLERANCE, metadata=None) -> VerifyReport:
    """Export to a temporary name (with ``metadata`` in its metadata_props), verify, and rename to ``target``
    only when ONNX Runtime agrees with PyTorch to ``tolerance`` (max |diff| / max |logit|); otherwise raise
    UserError and leave no target."""
    target = Path(target)
    batch_sizes = (batch_size,) if batch_size else VERIFY_BATCH_SIZES
    with atomic_path(target) as tmp:
        export_onnx(model, tmp, opset, batch_size)
        if metadata:
            add_metadata(tmp, metadata)
        report = verify_onnx(model, tmp, batch_sizes)
        if not report.not_compared and not report.max_rel_diff <= tolerance:
            raise UserError(f"{target}: the exported model disagrees with PyTorch: max |diff|/max |logit| "
                            f"{report.max_rel_diff:.3g} > {tolerance:g} (max |diff| {report.max_abs_diff:.3g}); "
                            f"nothing written")
    return report

"""Top-k ImageNet classes for a user's own photos: the model card's hello world.

Photos go through the model's eval transform (``transform.EvalTransform``, as for the accuracy runs), in
batches through any runtime (a ``run_config.RunConfig``), and a softmax over the 1000 logits gives the
probabilities, named by ``imagenet_classes``. A photo that cannot be read is reported and left out; the
others are still classified.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convmixer_suite.model import download
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.files import CHECKPOINT_FILE, ONNX_FILE
from convmixer_suite.guide.imagenet_classes import NUM_CLASSES, imagenet_classes
from convmixer_suite.run.config import RunConfig
from convmixer_suite.guide.transform import EvalTransform, load_rgb

DEFAULT_ONNX = Path(ONNX_FILE)                                                # what test/pth2om.sh writes
DEFAULT_CHECKPOINT = Path(CHECKPOINT_FILE)
DYNAMIC_BATCH = 16      # photos per run of a model whose batch axis is dynamic (bounds the memory)
MODEL_SUFFIXES = (".onnx", ".om", ".xml")


@dataclass(frozen=True)
class Guess:
    probability: float
    index: int
    name: str

    def line(self) -> str:
        return f"  {self.probability:.4f}  {self.name} ({self.index})"


def default_model(folder=".") -> Path:
    """``convmixer_1536_20.onnx`` when it is in ``folder``, else the released checkpoint's name there."""
    onnx = Path(folder) / DEFAULT_ONNX
    return onnx if onnx.is_file() else Path(folder) / DEFAULT_CHECKPOINT


def is_checkpoint(model_path) -> bool:
    return Path(model_path).suffix.lower() not in MODEL_SUFFIXES


def run_config(model_path, backend="auto", device=None, allow_download=True, precision="fp32",
               compile_mode=None) -> RunConfig:
    """The run on ``model_path``. A checkpoint runs on PyTorch (``auto`` means torch for it) and, when missing
    under a released checkpoint's name, is downloaded first."""
    if is_checkpoint(model_path):
        model_path = download.ensure_checkpoint(model_path, download=allow_download)
        backend = "torch" if backend == "auto" else backend
    return RunConfig.build(model_path, backend=backend, device=device, precision=precision, compile_mode=compile_mode)


def load_photos(paths, transform: EvalTransform) -> tuple:
    """(list of (path, CHW float32 array), list of (path, one-line message)) for the readable and the
    unreadable photos, in the order given."""
    good, bad = [], []
    for path in map(Path, paths):
        if not path.is_file():
            bad.append((path, f"{path}: {'is a folder, not a photo' if path.is_dir() else 'no such file'}"))
            continue
        try:
            good.append((path, transform(load_rgb(path))))
        except UserError as exc:
            bad.append((path, str(exc)))
    return good, bad


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict_probabilities(backend, images: np.ndarray) -> np.ndarray:
    """[N,3,224,224] -> [N,1000] probabilities, in batches of the model's size (the last one padded with
    zero images, whose rows are dropped) or of DYNAMIC_BATCH for a dynamic batch axis."""
    step = backend.batch_size or DYNAMIC_BATCH
    rows = []
    for start in range(0, len(images), step):
        batch = images[start:start + step]
        real = len(batch)
        if backend.batch_size and real < step:
            batch = np.concatenate([batch, np.zeros((step - real,) + batch.shape[1:], batch.dtype)])
        logits = backend.predict(batch)
        if logits.shape[-1] != NUM_CLASSES:
            raise UserError(f"{backend.model_path}: the model gives {logits.shape[-1]} scores per image, "
                            f"not one for each of the {NUM_CLASSES} ImageNet classes")
        rows.append(softmax(logits[:real]))
    return np.concatenate(rows)


def top_k(probabilities: np.ndarray, k: int) -> list:
    """The k most probable classes of one row, most probable first."""
    classes = imagenet_classes()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Guess(float(probabilities[i]), int(i), classes[i].name) for i in order]

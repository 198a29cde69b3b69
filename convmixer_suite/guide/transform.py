"""The model's eval transform with Pillow and NumPy, equal to torchvision's preset.

``EvalTransform`` computes what ``Resize(233, BICUBIC) + CenterCrop(224) + ToTensor() + Normalize(mean, std)``
computes on a PIL image (the numbers come from ``data_config.DATA_CONFIG``): the shorter side is resized
to ``resize_size`` and the longer one to ``int(resize_size * long / short)`` with PIL's own bicubic resize,
the crop offset is ``int(round((size - crop) / 2))`` (Python's round, half to even), then /255 and
(x - mean) / std, all in float32. Images are opened as torchvision's ``pil_loader`` opens them:
``Image.open(...).convert("RGB")``, whatever the mode (L, LA, RGBA, P, CMYK, I;16, ...).
"""
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from convmixer_suite.util.errors import UserError
from convmixer_suite.model.data_config import DATA_CONFIG, DataConfig

# torchvision's IMG_EXTENSIONS: what ImageFolder counts as an image.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow 9.1 moved the filters into Image.Resampling (and Pillow 10 dropped the old names); the guide's
# Pillow 9.0.1 has only the module-level constants. Both spell the same integers.
_RESAMPLING = getattr(Image, "Resampling", Image)
PIL_FILTERS = {"bicubic": _RESAMPLING.BICUBIC, "bilinear": _RESAMPLING.BILINEAR, "nearest": _RESAMPLING.NEAREST}
# The image number of an ImageNet file name (ILSVRC2012_val_00000001.JPEG, ILSVRC2012_test_00000001.JPEG).
IMAGENET_NUMBER_RE = re.compile(r"(?:^|/)ILSVRC\d{4}_[a-z]+_(\d{8})\.[^/.]+$")
# What a damaged or non-image file raises while Pillow opens or decodes it.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class EvalTransform:
    """PIL image -> float32 ndarray (3, crop, crop), as the model was evaluated."""

    def __init__(self, config: DataConfig = DATA_CONFIG):
        if config.interpolation not in PIL_FILTERS:
            raise ValueError(f"unsupported interpolation {config.interpolation!r}")
        if config.resize_size < config.crop_size:
            raise ValueError(f"resize size {config.resize_size} is smaller than the crop {config.crop_size}")
        self.config = config
        self._filter = PIL_FILTERS[config.interpolation]
        self._mean = np.asarray(config.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(config.std, dtype=np.float32).reshape(3, 1, 1)

    @property
    def output_shape(self) -> tuple:
        return (3, self.config.crop_size, self.config.crop_size)

    def resized_size(self, width: int, height: int) -> tuple:
        """(width, height) after resizing the shorter side, with torchvision's truncation of the longer."""
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.config.resize_size
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_box(self, width: int, height: int) -> tuple:
        crop = self.config.crop_size
        left = int(round((width - crop) / 2.0))
        top = int(round((height - crop) / 2.0))
        return left, top, left + crop, top + crop

    def __call__(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            raise ValueError(f"EvalTransform needs an RGB image, got mode {img.mode} (use load_rgb)")
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, self._filter)
        img = img.crop(self.crop_box(*img.size))
        chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (chw - self._mean) / self._std

    def to_dict(self) -> dict:
        return self.config.to_dict()

    @classmethod
    def from_dict(cls, d: dict) -> "EvalTransform":
        return cls(DataConfig.from_dict(d))


def load_rgb(path, data: bytes = None) -> Image.Image:
    """Decode an image file fully and convert it to RGB as ``Image.convert("RGB")`` does.

    The format is read from the data, not the name (PNG data behind a .JPEG name is fine). ``data``: the
    file's bytes, already read (by Ray Data, say); ``path`` then only names it.
    A file that cannot be decoded (truncated, not an image) raises UserError naming it.
    """
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except DECODE_ERRORS as exc:
        raise UserError(f"{path}: cannot decode image ({exc})") from exc


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(folder) -> tuple:
    """(image paths in the guide's order, number of non-image files skipped).

    ``folder`` may be flat (``val/ILSVRC2012_val_00000001.JPEG``) or hold class subfolders
    (``val/n01440764/...``). The order is the ModelZoo preprocessor's: by the image number of ImageNet
    names (``ILSVRC2012_val_00000001.JPEG`` -> 1) across subfolders, since the guide's scorer maps output
    rows to images by that number; other names come after, by relative path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of images")
    images, skipped = [], 0
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if is_image_name(name):
                images.append(Path(root, name))
            else:
                skipped += 1
    if not images:
        raise UserError(f"{folder}: no image files found ({skipped} other files skipped)")
    images.sort(key=lambda p: guide_order_key(p.relative_to(folder).as_posix()))
    return images, skipped


def guide_order_key(relative_name: str) -> tuple:
    """Sort key: ImageNet-numbered images by number (ties by path), then every other image by path."""
    match = IMAGENET_NUMBER_RE.search(relative_name)
    return (0, int(match.group(1)), relative_name) if match else (1, 0, relative_name)


def load_batch(paths, transform: EvalTransform, rows: int = None, skip_bad: bool = False) -> tuple:
    """Decode and transform ``paths`` into one float32 NCHW batch of ``rows`` rows (default len(paths)).

    Rows past the images, and rows of images that cannot be decoded when ``skip_bad`` is set, are zeros.
    Returns (batch, bad) with bad a list of (row, path, message); without ``skip_bad`` a bad image
    raises UserError.
    """
    rows = len(paths) if rows is None else rows
    batch = np.zeros((rows,) + transform.output_shape, dtype=np.float32)
    bad = []
    for row, path in enumerate(paths):
        try:
            batch[row] = transform(load_rgb(path))
        except UserError as exc:
            if not skip_bad:
                raise
            bad.append((row, path, str(exc)))
    return batch, bad


def load_pictures(folder, count: int, start: int = 0) -> np.ndarray:
    """Pictures ``start`` to ``start + count`` of ``folder`` (``list_images``' order), as the model takes them."""
    paths, _ = list_images(folder)
    return load_batch(paths[start:start + count], EvalTransform())[0]

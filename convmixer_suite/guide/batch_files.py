"""Rows of the preprocessed ``.bin`` batch files that convmixer_preprocess.py writes: which rows are real images
(through the manifest), and reading them as float32 arrays of the model's input shape."""
from pathlib import Path

import numpy as np

from convmixer_suite.guide.manifest import BATCH_FILE_RE, batch_file_name, read_manifest
from convmixer_suite.model.data_config import IMAGE_SHAPE
from convmixer_suite.util.errors import UserError


def preprocessed_rows(folder: Path, sample_shape=IMAGE_SHAPE) -> list:
    """Every real image of a preprocessed folder as (batch file, row, image name, batch size), in order;
    padding rows and skipped images left out where a manifest says which they are."""
    manifest = read_manifest(folder)
    if manifest is not None:
        rows = [(batch_file_name(b), r, name, manifest.batch_size) for b, r, name in manifest.scored_rows()]
    else:  # no manifest: every row of every batch file, in file order
        files = sorted(p.name for p in folder.iterdir() if BATCH_FILE_RE.match(p.name))
        rows = [(f, r, f"{f}[{r}]", n) for f in files for n in [batch_rows(folder / f, sample_shape)]
                for r in range(n)]
    return rows


def load_rows(folder: Path, rows: list, sample_shape=IMAGE_SHAPE) -> tuple:
    """([1, *sample_shape] arrays of ``rows``], their names), reading each batch file once."""
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

"""``.manifest.json``: what the ``input_NNNNN.bin`` batch files beside it hold.

Row ``j`` of the run (batch ``j // batch_size``, row ``j % batch_size``) is the image ``images[j]``
(a path relative to the image folder, in sorted order). Rows of images listed in ``skipped`` (could not be
decoded, left out with --skip-bad) are zeros; rows past ``len(images)`` are zero padding. Neither is scored.
``complete`` is false while convmixer_preprocess.py is still writing batch files.
"""
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import write_text_atomic

# A dot-file: msame takes every other file of an input folder as a model input (Utils::ScanFiles).
MANIFEST_NAME = ".manifest.json"
FORMAT = "float32 NCHW"
BATCH_FILE_RE = re.compile(r"^input_(\d+)\.bin$")


# Batch geometry, the one rule every engine and file follows: image j is row j % batch_size of batch
# j // batch_size; the last batch holds the remainder, padded with zero rows to batch_size.

def num_batches(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


def batch_span(k: int, batch_size: int) -> slice:
    """The images of batch ``k``: ``items[batch_span(k, bs)]``."""
    return slice(k * batch_size, (k + 1) * batch_size)


def images_in_batch(k: int, batch_size: int, num_images: int) -> int:
    """Real images in batch ``k`` (not padding rows)."""
    return min(batch_size, num_images - k * batch_size)


def batch_file_name(k: int) -> str:
    return f"input_{k:05d}.bin"


@dataclass
class Manifest:
    images: list
    batch_size: int
    transform: dict
    skipped: list = field(default_factory=list)  # [{"name": ..., "error": ...}]
    image_path: str = ""
    complete: bool = False
    format: str = FORMAT

    @property
    def num_batches(self) -> int:
        return num_batches(len(self.images), self.batch_size)

    @property
    def num_images(self) -> int:
        """Real images: not the skipped ones, not the padding."""
        return len(self.images) - len(self.skipped_names())

    def skipped_names(self) -> set:
        return {entry["name"] for entry in self.skipped}

    def scored_rows(self):
        """Yield (batch, row, image name) for every row that holds a real image, in batch order."""
        skipped = self.skipped_names()
        for j, name in enumerate(self.images):
            if name not in skipped:
                batch, row = divmod(j, self.batch_size)
                yield batch, row, name

    def layout(self) -> dict:
        """What decides the content of each batch file; two runs with the same layout write the same files."""
        return {"images": list(self.images), "batch_size": self.batch_size, "format": self.format,
                "transform": json.loads(json.dumps(self.transform))}

    def to_json(self) -> str:
        d = asdict(self)
        d["num_images"] = self.num_images
        d["num_batches"] = self.num_batches
        d["shape"] = [self.batch_size, *self.transform.get("input_size", [])]
        return json.dumps(d, indent=1) + "\n"


def manifest_path(folder) -> Path:
    folder = Path(folder)
    return folder if folder.suffix == ".json" else folder / MANIFEST_NAME


def write_manifest(folder, manifest: Manifest) -> Path:
    path = manifest_path(folder)
    write_text_atomic(path, manifest.to_json())
    return path


def read_manifest(folder) -> "Manifest | None":
    """The manifest in ``folder`` (or the manifest file itself), None when there is none."""
    path = manifest_path(folder)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        skipped = [{"name": str(e["name"]), "error": str(e.get("error", ""))} for e in d.get("skipped", [])]
        manifest = Manifest(images=list(d["images"]), batch_size=int(d["batch_size"]),
                            transform=dict(d["transform"]), skipped=skipped, image_path=d.get("image_path", ""),
                            complete=bool(d.get("complete", False)), format=d.get("format", FORMAT))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a valid preprocessing manifest ({exc})") from exc
    if manifest.format != FORMAT or manifest.batch_size < 1:
        raise UserError(f"{path}: unsupported format {manifest.format!r} or batch size {manifest.batch_size}")
    return manifest

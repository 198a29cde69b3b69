"""The names of the 1000 ImageNet-1k classes, in class-index order.

They are read from ``imagenet_classes.tsv`` beside this module (WordNet id, TAB, lemmas; from timm's data
files, see its header), and checked before use: exactly 1000 distinct WordNet ids in ascending order, which
is how ImageNet numbers its classes (class k is the k-th id in sorted order), so a shuffled, shortened or
doubled file is refused rather than mislabelling every prediction.
"""
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from convmixer_suite.util.errors import UserError

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
NUM_CLASSES = 1000
_ROW = re.compile(r"^(n\d{8})\t(\S.*)$")


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    lemmas: str

    @property
    def name(self) -> str:
        """The first lemma: ``golden retriever``; ``tench`` for ``tench, Tinca tinca``."""
        return self.lemmas.split(", ")[0]


@functools.lru_cache(maxsize=None)
def imagenet_classes(path=CLASSES_FILE) -> tuple:
    """The 1000 classes as ``ImageNetClass`` rows, index k at position k; UserError naming the file and
    the fault when it is not the checked list."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _ROW.match(line)
        if not match:
            raise UserError(f"{path}: line {number} is not 'WordNet id<TAB>names': {line[:60]!r}")
        rows.append(ImageNetClass(len(rows), match.group(1), match.group(2)))
    wnids = [row.wnid for row in rows]
    if len(rows) != NUM_CLASSES:
        raise UserError(f"{path}: holds {len(rows)} classes, not ImageNet's {NUM_CLASSES}")
    if len(set(wnids)) != NUM_CLASSES:
        raise UserError(f"{path}: some WordNet ids appear twice")
    if wnids != sorted(wnids):
        first = next(i for i in range(1, len(wnids)) if wnids[i] < wnids[i - 1])
        raise UserError(f"{path}: not in class-index order (sorted WordNet ids): {wnids[first]} on row "
                        f"{first} comes after {wnids[first - 1]}")
    return tuple(rows)

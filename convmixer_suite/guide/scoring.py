"""From msame / ais_bench output files and val_label.txt to top-k accuracy and the ModelZoo JSON.

Output layouts read (see docs/formats.md): the folder given, or the one subfolder of it that holds output files
(msame's ``20210723_145039`` / ``2022516_3_8_36_123456``, ais_bench's ``2023_01_03-10_11_12`` or
``--output_dirname``); files ``input_NNNNN_output_0.txt|bin`` (msame) or ``input_NNNNN_0.txt|bin|npy``
(ais_bench); summary files (``*_summary.json``, ``sumary.json``) are not outputs. Each file holds one row of
logits per batch row, padding rows included; a manifest (convmixer_suite.guide.manifest) says which rows are
images, else rows map by position: row j is ``ILSVRC2012_val_{j+1:08d}`` and rows past the labels are padding.

This module is also the one writer of the accuracy JSON and of the printed ``top1:…% top5:…%`` line.
"""
import json
import logging
import re
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import write_text_atomic
from convmixer_suite.guide.manifest import MANIFEST_NAME, Manifest
from convmixer_suite.guide.run_folder import summary_path_of

LOG = logging.getLogger(__name__)

OUTPUT_PATTERNS = (re.compile(r"^input_(\d+)_output_0\.(txt|bin)$"),  # msame
                   re.compile(r"^input_(\d+)_0\.(txt|bin|npy)$"))  # ais_bench
OUTPUT_NAMES = "input_NNNNN_output_0.txt|bin (msame) or input_NNNNN_0.txt|bin|npy (ais_bench)"
BACKGROUND_CLASSES = 1001  # outputs with a leading background class: class 0 is dropped


# ---- locating and reading output files --------------------------------------------------------------

def output_files(folder: Path) -> dict:
    """{batch index: output file} for the files in ``folder`` named as msame or ais_bench name them."""
    found = {}
    for path in sorted(folder.iterdir()):
        match = next((m for m in (p.match(path.name) for p in OUTPUT_PATTERNS) if m), None)
        if match is None or not path.is_file():
            continue
        k = int(match.group(1))
        if k in found:
            raise UserError(f"{folder}: two output files for batch {k}: {found[k].name} and {path.name}")
        found[k] = path
    return found


def find_results_folder(folder) -> Path:
    """``folder`` itself when it holds output files, else its subfolder that does (the newest if several)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such output folder")
    if output_files(folder):
        return folder
    candidates = [d for d in sorted(folder.iterdir()) if d.is_dir() and output_files(d)]
    if not candidates:
        raise UserError(f"{folder}: no output files ({OUTPUT_NAMES}) here or in a subfolder")
    if len(candidates) > 1:
        newest = max(candidates, key=lambda d: d.stat().st_mtime)
        LOG.info(f"{folder} holds {len(candidates)} result folders; using the newest, {newest.name}")
        return newest
    return candidates[0]


def read_output_file(path: Path, batch_size: int) -> np.ndarray:
    """One output file as float64 [batch_size, classes]; UserError naming it when malformed."""
    try:
        values = parse_output_file(path, batch_size)
    except ValueError as exc:
        raise UserError(f"{path}: malformed output file ({exc})") from exc
    if values.size == 0 or values.size % batch_size:
        raise UserError(f"{path}: {values.size} values do not make {batch_size} rows (batch size)")
    if not np.isfinite(values).all():
        raise UserError(f"{path}: holds NaN or infinite values")
    return values.reshape(batch_size, -1)


def parse_output_file(path: Path, batch_size: int) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".bin":
        data = path.read_bytes()
        if len(data) % 4:
            raise ValueError(f"{len(data)} bytes is not a whole number of float32 values")
        return np.frombuffer(data, dtype="<f4").astype(np.float64)
    if suffix == ".npy":
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    return parse_txt_rows(path.read_text(encoding="ascii", errors="replace"), batch_size)


def parse_txt_rows(text: str, batch_size: int) -> np.ndarray:
    """msame TXT: one line per batch row, values separated (and followed) by spaces."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) not in (1, batch_size):
        raise ValueError(f"{len(rows)} rows, expected {batch_size} (batch size)")
    if len({len(row) for row in rows}) > 1:
        raise ValueError("rows of different lengths")
    return np.array(rows, dtype=np.float64)


# ---- labels and the row -> image map --------------------------------------------------------------

def image_key(name: str) -> str:
    """Images are matched to labels by file stem (``n01440764/ILSVRC2012_val_00000293.JPEG`` ->
    ``ILSVRC2012_val_00000293``), as val_label.txt names them with their extension."""
    return Path(name).stem


def read_labels(path) -> dict:
    """val_label.txt (``ILSVRC2012_val_00000001.JPEG 65`` per line) -> {image stem: class index}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read label file ({exc})") from exc
    labels = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{path}: line {number}: expected 'image_name class_index', got {line.strip()!r}")
        key = image_key(fields[0])
        if labels.get(key, int(fields[1])) != int(fields[1]):
            raise UserError(f"{path}: line {number}: {fields[0]} has two different labels")
        labels[key] = int(fields[1])
    if not labels:
        raise UserError(f"{path}: no labels in the file")
    return labels


def labelled_rows(names, labels: dict, labels_path) -> list:
    """The label of each image, matched by file stem (``image_key``); two images of one stem, or an image
    without a label, are refused."""
    keys = [image_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise UserError("two images have the same file name; their labels would be ambiguous")
    missing = [n for n, key in zip(names, keys) if key not in labels]
    if missing:
        raise UserError(f"{labels_path}: no label for image {missing[0]} ({len(missing)} images unlabelled)")
    return [labels[key] for key in keys]


def positional_names(num_labels: int) -> list:
    return [f"ILSVRC2012_val_{j + 1:08d}" for j in range(num_labels)]


def scored_rows(manifest: "Manifest | None", batch_size: int, labels: dict, labels_path) -> dict:
    """{batch: (rows, labels, names)} for every output row that is a real image, with its label."""
    if manifest is not None:
        rows = list(manifest.scored_rows())
    else:
        names = positional_names(len(labels))
        rows = [(*divmod(j, batch_size), name) for j, name in enumerate(names)]
    if not rows:
        raise UserError("nothing to score: the manifest lists no real images")
    image_labels = labelled_rows([name for _, _, name in rows], labels, labels_path)
    by_batch = {}
    for (k, row, name), label in zip(rows, image_labels):
        by_batch.setdefault(k, ([], [], []))
        for column, value in zip(by_batch[k], (row, label, name)):
            column.append(value)
    return by_batch


def check_batches_present(files: dict, by_batch: dict, folder: Path, num_batches: int) -> None:
    """Refuse a shortened set: every batch holding a real image needs its output file, and no extras."""
    missing = sorted(k for k in by_batch if k not in files)
    if missing:
        n_images = sum(len(by_batch[k][0]) for k in missing)
        raise UserError(f"{folder}: output files missing for {n_images} images in {len(missing)} batches "
                        f"(first: {by_batch[missing[0]][2][0]}, batch input_{missing[0]:05d})")
    extra = sorted(k for k in files if k >= num_batches)
    if extra:
        raise UserError(f"{folder}: {len(extra)} output files past the {num_batches} batches of the run "
                        f"(first: {files[extra[0]].name}; wrong --batch-size, labels or manifest?)")


# ---- top-k accuracy -----------------------------------------------------------------------------------

def label_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Position of each label in its row sorted by descending logit (ties: lower class first).

    The same order as ``np.argsort(-row, kind="stable")``, without sorting.
    """
    label_logit = logits[np.arange(len(labels)), labels][:, None]
    classes = np.arange(logits.shape[1])[None, :]
    higher = (logits > label_logit) | ((logits == label_logit) & (classes < labels[:, None]))
    return higher.sum(axis=1)


def non_finite_rows(logits: np.ndarray) -> dict:
    """{row: how many of its values are NaN or infinite} for the rows that hold any."""
    counts = np.count_nonzero(~np.isfinite(np.asarray(logits).reshape(len(logits), -1)), axis=1)
    return {int(row): int(counts[row]) for row in np.flatnonzero(counts)}


def non_finite_message(where: str, counts: dict, values: int, after: str) -> str:
    """The one line that stops a run at outputs holding NaN or infinite values: ``where`` names the input,
    ``values`` is how many the outputs have in all, ``after`` what happens to what is written."""
    return (f"{where}: {sum(counts.values())} of {values} output values are not finite (NaN or infinite), "
            f"in {len(counts)} image(s); {after}")


def top_k(logits: np.ndarray, k: int = 5, source="outputs") -> tuple:
    """(classes [N,k] int64, scores [N,k] float32) of each row, best first, ties to the lower class (the order
    ``label_ranks`` counts in); 1001-class outputs drop class 0 (background) first, as scoring does."""
    if logits.shape[1] == BACKGROUND_CLASSES:
        logits = logits[:, 1:]
    if k > logits.shape[1]:
        raise UserError(f"{source}: {logits.shape[1]}-class outputs cannot score top-{k}")
    classes = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return classes.astype(np.int64), np.take_along_axis(logits, classes, axis=1).astype(np.float32)


def top_k_probabilities(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The softmax probabilities (over each whole row) of ``top_k``'s classes of each row, float32; 1001-class
    outputs drop class 0 (background) first, as ``top_k`` does."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == BACKGROUND_CLASSES:
        logits = logits[:, 1:]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (np.take_along_axis(exp, np.asarray(classes), axis=1) / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class TopKAccuracy:
    """Counts top-1 … top-k hits over batches of logits; 1001-class outputs drop class 0 (background)."""

    def __init__(self, k: int = 5):
        self.k = k
        self.hits = np.zeros(k, dtype=np.int64)
        self.num_images = 0
        self.num_classes = None
        self._first_source = None

    def _check(self, num_classes: int, labels: np.ndarray, source) -> None:
        if self.num_classes is None:
            self.num_classes, self._first_source = num_classes, source
        elif num_classes != self.num_classes:
            raise UserError(f"{source}: wrong length, {num_classes} values per row where "
                            f"{self._first_source} has {self.num_classes}")
        scored = num_classes - 1 if num_classes == BACKGROUND_CLASSES else num_classes
        if self.k > scored or (labels >= scored).any():
            raise UserError(f"{source}: {scored}-class outputs cannot score top-{self.k} "
                            f"with labels up to {labels.max()}")

    def update(self, logits: np.ndarray, labels, source="outputs") -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if not len(labels):
            return
        self._check(logits.shape[1], labels, source)
        if self.num_classes == BACKGROUND_CLASSES:
            logits = logits[:, 1:]
        ranks = label_ranks(logits, labels)
        self.hits += (ranks[:, None] < np.arange(1, self.k + 1)[None, :]).sum(axis=0)
        self.num_images += len(labels)

    def update_top_classes(self, classes, labels, num_classes: int, source="outputs") -> None:
        """Count hits from each image's ``top_k`` classes (best first) instead of its logits: the same
        counts, as a label of rank r is among the first i classes exactly when r < i."""
        labels = np.asarray(labels, dtype=np.int64)
        if not len(labels):
            return
        self._check(num_classes, labels, source)
        classes = np.asarray(classes, dtype=np.int64)[:, :self.k]
        self.hits += np.cumsum(classes == labels[:, None], axis=1).sum(axis=0)
        self.num_images += len(labels)

    def accuracies(self) -> list:
        """[top-1, …, top-k] as fractions."""
        if not self.num_images:
            raise UserError("nothing to score: no images")
        return [int(h) / self.num_images for h in self.hits]


def score_outputs(results: Path, labels_path, manifest: "Manifest | None", batch_size: int,
                  k: int = 5) -> TopKAccuracy:
    """Score every real image of the run whose output files are in ``results`` (find_results_folder)."""
    files = output_files(results)
    labels = read_labels(labels_path)
    by_batch = scored_rows(manifest, batch_size, labels, labels_path)
    num_batches = manifest.num_batches if manifest else max(by_batch) + 1
    check_batches_present(files, by_batch, results, num_batches)
    counter = TopKAccuracy(k)
    for batch_index in sorted(files):
        logits = read_output_file(files[batch_index], batch_size)
        if batch_index in by_batch:
            rows, batch_labels, _ = by_batch[batch_index]
            counter.update(logits[rows], batch_labels, source=files[batch_index])
    return counter


# ---- locating the manifest ----------------------------------------------------------------------------

def find_manifest(folder, results: Path) -> "Path | None":
    """The manifest of the inputs behind ``results``: a .manifest.json in the output folders, else beside
    the input folder that a summary JSON records: our runner's in ``<output>.runs/``, or an ais_bench-style
    one beside or in the results folder (``args`` --input, or ``input``)."""
    folder = Path(folder)
    for candidate in (results / MANIFEST_NAME, folder / MANIFEST_NAME):
        if candidate.is_file():
            return candidate
    summaries = [summary_path_of(results), results.with_name(results.name + "_summary.json"), results / "sumary.json",
                 *sorted(results.glob("*summary.json")), *sorted(folder.glob("*summary.json"))]
    for summary in summaries:
        input_folder = summary_input_folder(summary)
        if input_folder is not None and (input_folder / MANIFEST_NAME).is_file():
            return input_folder / MANIFEST_NAME
    return None


def summary_input_folder(summary: Path) -> "Path | None":
    """The input folder a summary JSON records, or None."""
    try:
        info = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    args = info.get("args")
    value = info.get("input")
    if isinstance(args, dict):
        value = args.get("input", value)
    elif isinstance(args, list):
        value = argv_value(args, "--input") or value
    if not isinstance(value, str) or not value:
        return None
    first = Path(value.split(",")[0])
    return first if first.is_dir() else first.parent


def argv_value(argv: list, flag: str) -> "str | None":
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return str(argv[i + 1])
        if isinstance(arg, str) and arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


# ---- reporting: the one writer of the ModelZoo JSON and the printed line ------------------------------

def accuracy_percent(fraction: float) -> str:
    """ModelZoo's rounding: ``str(round(acc * 100, 2)) + "%"``."""
    return str(round(fraction * 100, 2)) + "%"


def write_accuracy_json(path, num_images: int, num_classes: int, topk) -> Path:
    """The ModelZoo accuracy JSON; ``topk`` is [top-1, …, top-k] as fractions."""
    table = {"title": "Overall statistical evaluation", "value": [
        {"key": "Number of images", "value": str(num_images)},
        {"key": "Number of classes", "value": str(num_classes)},
        *({"key": f"Top{i} accuracy", "value": accuracy_percent(acc)} for i, acc in enumerate(topk, 1)),
    ]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(table) + "\n")
    return path


def read_accuracy_json(path) -> dict:
    """The ModelZoo accuracy JSON read back: {"num_images", "num_classes", "topk": [top-1, …] as fractions};
    a UserError naming the file when it is not one."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["value"]
        values = {str(e["key"]): str(e["value"]) for e in entries}
        topk, k = [], 1
        while f"Top{k} accuracy" in values:
            topk.append(float(values[f"Top{k} accuracy"].rstrip("%")) / 100.0)
            k += 1
        if not topk:
            raise ValueError("no 'Top1 accuracy' entry")
        return {"num_images": int(values["Number of images"]), "num_classes": int(values["Number of classes"]),
                "topk": topk}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an accuracy JSON as convmixer_eval_acc.py writes it ({exc})") from exc


def format_accuracy_line(topk) -> str:
    """``top1:81.35% top5:95.5%`` (top-1, top-5 and the last k when it is neither)."""
    shown = sorted({1, len(topk)} | ({5} if len(topk) >= 5 else set()))
    return " ".join(f"top{k}:{accuracy_percent(topk[k - 1])}" for k in shown)

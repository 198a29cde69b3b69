"""Per-image results of a streaming evaluation, recorded as they complete: resume, run identity, final JSON.

Both engines (local and Ray) write the same records into ``<result-json-path>/<json stem>_records/``:

- ``identity.json``: which run the records belong to: the run configuration's identity (``RunConfig.identity``:
  the model's sha256 and size, backend, precision, device, threads, calibration, data config, batch size), top-k,
  and the image set (count, and a sha256 of every image name with its label, in run order). A folder whose
  identity differs is refused, never mixed in.
- ``part-NNNNNN.jsonl``: one JSON object per image, written a chunk at a time under a temporary name and
  renamed, so a kill -9 loses at most the chunk being gathered. An object holds ``batch``, ``row``,
  ``image`` (the path relative to the image folder), ``label``, ``num_classes``, ``latency_ms`` (the model
  execution time of its batch), and either ``classes``, ``scores`` (their logits) and ``probabilities`` (their
  softmax over the whole row; absent in records of older runs) (top-k, best first; for 1001-class outputs without
  the background class) or ``error`` (an image left out with ``--skip-bad``).

A rerun runs only the batches not recorded yet; the accuracy JSON is computed from all records, so a local
run, a Ray run and a resumed run of the same images end with the same JSON.
"""
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import write_text_atomic
from convmixer_suite.guide.manifest import images_in_batch
from convmixer_suite.guide.run_folder import differing_keys
from convmixer_suite.guide.scoring import TopKAccuracy

RECORDS_SUFFIX = "_records"
IDENTITY_NAME = "identity.json"
PART_RE = re.compile(r"^part-(\d{6})\.jsonl$")
DEFAULT_FLUSH_S = 10.0


def records_folder(json_path) -> Path:
    """``result/result_bs1.json`` -> ``result/result_bs1_records``."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + RECORDS_SUFFIX)


def image_set_identity(names, labels) -> dict:
    """The images of a run, in run order, with their labels: a count and a sha256 of ``name label`` lines."""
    digest = hashlib.sha256("".join(f"{n} {l}\n" for n, l in zip(names, labels)).encode("utf-8"))
    return {"count": len(names), "sha256": digest.hexdigest()}


def batch_records(k: int, batch_size: int, names, labels, classes, scores, num_classes: int, bad: dict,
                  latency_ms: float, probabilities=None) -> list:
    """The records of batch ``k``: one per real image row (``bad``: row -> error message)."""
    first = k * batch_size
    records = []
    for row in range(len(classes)):
        record = {"batch": k, "row": row, "image": names[first + row], "label": int(labels[first + row]),
                  "num_classes": int(num_classes), "latency_ms": float(latency_ms)}
        if row in bad:
            record["error"] = bad[row]
        else:
            record["classes"] = [int(c) for c in classes[row]]
            record["scores"] = [float(s) for s in scores[row]]
            if probabilities is not None:
                record["probabilities"] = [float(p) for p in probabilities[row]]
        records.append(record)
    return records


def read_parts(folder: Path) -> list:
    """Every record of ``folder``'s part files, in (batch, row) order; a later part wins a repeated row."""
    by_row = {}
    for path in sorted(p for p in folder.iterdir() if PART_RE.match(p.name)):
        try:
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                by_row[(record["batch"], record["row"])] = record
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: unreadable record file ({exc.__class__.__name__}: {exc})") from exc
    return [by_row[key] for key in sorted(by_row)]


def read_records(folder) -> list:
    """The records of a result's record folder (``…_records``), or of the accuracy JSON beside it."""
    folder = Path(folder)
    if folder.suffix == ".json" and folder.is_file():
        folder = records_folder(folder)
    if not (folder / IDENTITY_NAME).is_file():
        raise UserError(f"{folder}: no per-image records here (a folder like result/result_bs1{RECORDS_SUFFIX}, "
                        f"written by convmixer_stream_eval.py)")
    return read_parts(folder)


def check_identity(folder, identity: dict) -> bool:
    """True when ``folder`` holds the records of the run ``identity`` describes, False when it holds none;
    a UserError when it holds another run's. Writes nothing."""
    path = Path(folder) / IDENTITY_NAME
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); pass --fresh to start over") from exc
    differing = differing_keys(recorded, identity)
    if differing:
        raise UserError(f"{folder}: holds per-image records of a different run ({differing}); pass --fresh to "
                        f"discard them, or choose another --result-json-path")
    return True


class RecordStore:
    """The record folder of one run: checks (or writes) its identity, loads what is recorded, appends chunks.

    ``add`` gathers records and writes them as one part file once ``flush_s`` seconds have passed since the
    last write (0: every call); ``flush`` writes what is gathered now.
    """

    def __init__(self, folder, identity: dict, fresh=False, flush_s=DEFAULT_FLUSH_S):
        self.folder = Path(folder)
        self.flush_s = flush_s
        self.pending = []
        self.last_flush = time.monotonic()
        if fresh:
            self.discard()
        self._open(identity)
        self.records = read_parts(self.folder)
        self.next_part = 1 + max((int(PART_RE.match(p.name).group(1)) for p in self.folder.iterdir()
                                  if PART_RE.match(p.name)), default=-1)

    def discard(self) -> None:
        """Delete the records of an earlier run (``--fresh``)."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder)

    def _open(self, identity: dict) -> None:
        if not check_identity(self.folder, identity):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.folder / IDENTITY_NAME, json.dumps(identity, indent=1) + "\n")

    def done_batches(self, batch_size: int, num_images: int, skip_bad: bool) -> set:
        """Batches whose every image is recorded (an image recorded as bad counts only with ``skip_bad``)."""
        rows = {}
        for record in self.all_records():
            if skip_bad or "error" not in record:
                rows[record["batch"]] = rows.get(record["batch"], 0) + 1
        return {k for k, n in rows.items() if n == images_in_batch(k, batch_size, num_images)}

    def add(self, records: list) -> None:
        self.pending += records
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            text = "".join(json.dumps(r) + "\n" for r in self.pending)
            write_text_atomic(self.folder / f"part-{self.next_part:06d}.jsonl", text)
            self.next_part += 1
            self.records += self.pending
            self.pending = []
        self.last_flush = time.monotonic()

    def all_records(self) -> list:
        """Every record, one per (batch, row), in run order."""
        return list({(r["batch"], r["row"]): r for r in sorted(self.records, key=lambda r: (r["batch"], r["row"]))}
                    .values())


def batch_latencies_ms(records) -> list:
    """The model execution time of every recorded batch, in batch order (for msame's averages over the run)."""
    return list({r["batch"]: r["latency_ms"] for r in sorted(records, key=lambda r: r["batch"])}.values())


def accuracy_from_records(records, topk: int) -> tuple:
    """(TopKAccuracy over the scored records, [(image, error)] of the images left out)."""
    counter = TopKAccuracy(topk)
    skipped = [(r["image"], r["error"]) for r in records if "error" in r]
    by_batch = {}
    for r in records:
        if "error" not in r:
            by_batch.setdefault(r["batch"], []).append(r)
    for k in sorted(by_batch):
        rows = by_batch[k]
        counter.update_top_classes(np.array([r["classes"] for r in rows]), [r["label"] for r in rows],
                                   rows[0]["num_classes"], source=f"record of batch {k} ({rows[0]['image']})")
    return counter, skipped


def compare_records(a: list, b: list) -> dict:
    """Two runs' records of the same images: the images whose top-1 differs (with both predictions) and the
    top-1 agreement over the images both scored."""
    b_by_image = {r["image"]: r for r in b if "error" not in r}
    both = [(ra, b_by_image[ra["image"]]) for ra in a if "error" not in ra and ra["image"] in b_by_image]
    if not both:
        raise UserError("the two runs have no scored image in common")
    changed = [{"image": ra["image"], "label": ra["label"], "a": (ra["classes"][0], ra["scores"][0]),
                "b": (rb["classes"][0], rb["scores"][0])}
               for ra, rb in both if ra["classes"][0] != rb["classes"][0]]
    a_only = sum(1 for r in a if "error" not in r) - len(both)
    return {"changed": changed, "common": len(both), "agreement": 1 - len(changed) / len(both),
            "only_in_a": a_only, "only_in_b": len(b_by_image) - len(both)}

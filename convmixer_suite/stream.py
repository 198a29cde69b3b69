"""Streaming evaluation: decode, transform, infer and score in one pass, with no files in between.

A pool of worker processes decodes and transforms batches (``transform.load_batch``, the same code that
convmixer_preprocess.py runs) while the main process runs the model on the batch before; at most
``prefetch`` decoded batches wait at any time, so memory stays bounded whatever the number of images.
Batches are cut, padded and scored as the file-based flow cuts, pads and scores them (sorted images,
``batch_size`` per batch, zero rows for padding and for bad images left out with ``skip_bad``).
"""
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from convmixer_suite import msame_log
from convmixer_suite.cli import UserError
from convmixer_suite.scoring import TopKAccuracy, image_key
from convmixer_suite.transform import EvalTransform, load_batch


@dataclass
class StreamTimes:
    """Seconds spent per stage; decode is worker time (summed over workers), the rest main-process time."""
    decode_s: float = 0.0
    wait_s: float = 0.0
    inference_ms: list = field(default_factory=list)
    scoring_s: float = 0.0
    pipeline_s: float = 0.0
    num_images: int = 0
    workers: int = 1

    def rates(self) -> dict:
        """Images/s of each stage, end to end, and the pipeline overhead (end-to-end time over the sum of
        inference time: 1.0 means the pipeline costs nothing beyond the model)."""
        inference_s = sum(self.inference_ms) / 1000.0
        per = (lambda s: self.num_images / s if s > 0 else 0.0)
        return {"decode_transform_images_per_s_per_worker": per(self.decode_s),
                "decode_transform_images_per_s": per(self.decode_s) * self.workers,
                "inference_images_per_s": per(inference_s),
                "scoring_images_per_s": per(self.scoring_s),
                "end_to_end_images_per_s": per(self.pipeline_s),
                "inference_s": inference_s, "pipeline_s": self.pipeline_s,
                "waiting_for_decode_s": self.wait_s,
                "pipeline_overhead_ratio": self.pipeline_s / inference_s if inference_s > 0 else 0.0}


# Set in each worker by init_worker (fork or spawn alike).
_JOB = {}


def init_worker(paths, batch_size, transform_dict, skip_bad):
    _JOB.update(paths=paths, batch_size=batch_size, skip_bad=skip_bad,
                transform=EvalTransform.from_dict(transform_dict))


def decode_batch(k: int):
    """Worker: batch ``k`` as a [batch_size,3,224,224] array, its bad rows, and the seconds it took."""
    started = time.perf_counter()
    bs = _JOB["batch_size"]
    paths = _JOB["paths"][k * bs:(k + 1) * bs]
    batch, bad = load_batch(paths, _JOB["transform"], rows=bs, skip_bad=_JOB["skip_bad"])
    return batch, [(row, str(path), message) for row, path, message in bad], time.perf_counter() - started


class BatchStream:
    """Decoded batches in order, ``prefetch`` of them in flight in the worker pool.

    Start it (``with``) before loading the model: the workers fork from a process without runtime threads,
    and the first batches decode while the model loads. A process that already runs a runtime passes
    ``start_method="spawn"``.
    """

    def __init__(self, paths, batch_size, transform: EvalTransform, workers, skip_bad=False, prefetch=None,
                 start_method=None):
        self.paths = [str(p) for p in paths]
        self.batch_size = batch_size
        self.num_batches = -(-len(self.paths) // batch_size)
        self.workers = max(1, min(workers, self.num_batches))
        self.prefetch = prefetch or 2 * self.workers
        self.initargs = (self.paths, batch_size, transform.to_dict(), skip_bad)
        self.start_method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
        self.pending = deque()
        self.next_k = 0

    def __enter__(self):
        self.pool = get_context(self.start_method).Pool(self.workers, init_worker, self.initargs)
        self._fill()
        return self

    def __exit__(self, *exc):
        self.pool.terminate()
        self.pool.join()

    def _fill(self):
        while len(self.pending) < self.prefetch and self.next_k < self.num_batches:
            self.pending.append(self.pool.apply_async(decode_batch, (self.next_k,)))
            self.next_k += 1

    def wait_first(self):
        """Block until the first batch is decoded (a benchmark's way to leave worker start-up out)."""
        if self.pending:
            self.pending[0].wait()

    def __iter__(self):
        """Yield (k, batch, bad rows, worker seconds, seconds waited for it)."""
        for k in range(self.num_batches):
            started = time.perf_counter()
            batch, bad, decode_s = self.pending.popleft().get()
            waited = time.perf_counter() - started
            self._fill()
            yield k, batch, bad, decode_s, waited


def labelled_rows(names, labels: dict, labels_path) -> list:
    """The label of every image, by file stem as scoring.py matches them; a missing label is an error."""
    keys = [image_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise UserError("two images have the same file name; their labels would be ambiguous")
    missing = [n for n, key in zip(names, keys) if key not in labels]
    if missing:
        raise UserError(f"{labels_path}: no label for image {missing[0]} ({len(missing)} images unlabelled)")
    return [labels[key] for key in keys]


def run_stream(stream: BatchStream, backend, names, image_labels, topk=5, log=print, progress=None):
    """Infer and score every batch of ``stream``; returns (TopKAccuracy, StreamTimes, skipped names).

    Prints msame's ``Inference time: …ms`` line per batch through ``log``; timing covers the model
    execution only, as msame's does.
    """
    counter = TopKAccuracy(topk)
    times = StreamTimes(workers=stream.workers)
    skipped = []
    bs = stream.batch_size
    started = time.perf_counter()
    for k, batch, bad, decode_s, waited in stream:
        times.decode_s += decode_s
        times.wait_s += waited
        t0 = time.perf_counter()
        logits = backend.predict(batch)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        times.inference_ms.append(latency_ms)
        log(msame_log.time_line(latency_ms))
        t1 = time.perf_counter()
        bad_rows = {row for row, _, _ in bad}
        skipped += [(names[k * bs + row], message) for row, _, message in bad]
        rows = [r for r in range(min(bs, len(names) - k * bs)) if r not in bad_rows]
        counter.update(logits[rows], [image_labels[k * bs + r] for r in rows], source=f"batch {k}")
        times.scoring_s += time.perf_counter() - t1
        if progress is not None:
            progress.update(len(rows) + len(bad_rows))
    times.pipeline_s = time.perf_counter() - started
    times.num_images = counter.num_images
    return counter, times, skipped


def default_workers() -> int:
    return os.cpu_count() or 1


def relative_names(paths, root: Path) -> list:
    return [Path(p).relative_to(root).as_posix() for p in paths]

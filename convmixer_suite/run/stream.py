"""Streaming evaluation: decode, transform, infer and score in one pass, with no files in between.

A pool of worker processes decodes and transforms batches (``transform.load_batch``, the same code that
convmixer_preprocess.py runs) while the main process runs the model on the batch before; at most
``prefetch`` decoded batches wait at any time, so memory stays bounded whatever the number of images.
Batches are cut, padded and scored as the file-based flow cuts, pads and scores them (sorted images,
``batch_size`` per batch, zero rows for padding and for bad images left out with ``skip_bad``).

Each engine (this module's local one, convmixer_suite.run.ray_engine) yields a ``BatchResult`` per batch as it
completes; ``record_results`` logs it the msame way, records its images (convmixer_suite.run.records) and times
the stages, the same for both.
"""
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from convmixer_suite.precision import fidelity
from convmixer_suite.guide import msame_log
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.manifest import batch_span, images_in_batch, num_batches
from convmixer_suite.run.records import RecordStore, batch_records, check_identity, image_set_identity, records_folder
from convmixer_suite.run.config import RunConfig
from convmixer_suite.guide.scoring import TopKAccuracy, non_finite_message, non_finite_rows, top_k, top_k_probabilities
from convmixer_suite.guide.transform import EvalTransform, load_batch


@dataclass
class StreamTimes:
    """Seconds spent per stage; decode is worker time (summed over workers), the rest main-process time."""
    decode_s: float = 0.0
    wait_s: float = 0.0
    inference_ms: list = field(default_factory=list)
    scoring_s: float = 0.0
    pipeline_s: float = 0.0
    first_batch_s: float = 0.0  # until the first batch came back (start-up: workers, replicas, model loads)
    first_batch_images: int = 0
    num_images: int = 0
    workers: int = 1
    replicas: dict = field(default_factory=dict)  # replica -> {"batches", "images", "inference_s"}

    def add_replica_batch(self, replica: str, images: int, latency_ms: float) -> None:
        totals = self.replicas.setdefault(replica, {"batches": 0, "images": 0, "inference_s": 0.0})
        totals["batches"] += 1
        totals["images"] += images
        totals["inference_s"] += latency_ms / 1000.0

    def replica_rates(self) -> dict:
        """Per replica: its batches and images, and its images/s over its model time and over the run."""
        return {name: {**t, "inference_images_per_s": t["images"] / t["inference_s"] if t["inference_s"] else 0.0,
                       "end_to_end_images_per_s": t["images"] / self.pipeline_s if self.pipeline_s else 0.0}
                for name, t in self.replicas.items()}

    def rates(self) -> dict:
        """Images/s of each stage, end to end, the stage that bounds the run (the one with the fewest images/s:
        decode+transform with all its workers, inference, scoring) and the pipeline overhead (end-to-end time over
        the sum of inference time: 1.0 means the pipeline costs nothing beyond the model)."""
        inference_s = sum(self.inference_ms) / 1000.0
        per = (lambda s: self.num_images / s if s > 0 else 0.0)
        stages = {"decode+transform": per(self.decode_s) * self.workers, "inference": per(inference_s),
                  "scoring": per(self.scoring_s)}
        timed = {name: rate for name, rate in stages.items() if rate > 0}
        return {"decode_transform_images_per_s_per_worker": per(self.decode_s),
                "decode_transform_images_per_s": stages["decode+transform"],
                "inference_images_per_s": stages["inference"],
                "scoring_images_per_s": stages["scoring"],
                "bound_stage": min(timed, key=timed.get) if timed else None,
                "end_to_end_images_per_s": per(self.pipeline_s),
                "first_batch_s": self.first_batch_s,
                "after_first_batch_images_per_s": ((self.num_images - self.first_batch_images)
                                                   / (self.pipeline_s - self.first_batch_s)
                                                   if self.pipeline_s > self.first_batch_s else 0.0),
                "inference_s": inference_s, "pipeline_s": self.pipeline_s,
                "waiting_for_decode_s": self.wait_s,
                "pipeline_overhead_ratio": self.pipeline_s / inference_s if inference_s > 0 else 0.0,
                "replicas": self.replica_rates()}


# Set in each worker by init_worker (fork or spawn alike).
_JOB = {}


def init_worker(paths, batch_size, transform_dict, skip_bad):
    _JOB.update(paths=paths, batch_size=batch_size, skip_bad=skip_bad,
                transform=EvalTransform.from_dict(transform_dict))


def decode_batch(k: int):
    """Worker: batch ``k`` as a [batch_size,3,224,224] array, its bad rows, and the seconds it took."""
    started = time.perf_counter()
    bs = _JOB["batch_size"]
    paths = _JOB["paths"][batch_span(k, bs)]
    batch, bad = load_batch(paths, _JOB["transform"], rows=bs, skip_bad=_JOB["skip_bad"])
    return batch, [(row, str(path), message) for row, path, message in bad], time.perf_counter() - started


class BatchStream:
    """Decoded batches in order, ``prefetch`` of them in flight in the worker pool.

    Start it (``with``) before loading the model: the workers fork from a process without runtime threads,
    and the first batches decode while the model loads. A process that already runs a runtime passes
    ``start_method="spawn"``.
    """

    def __init__(self, paths, batch_size, transform: EvalTransform, workers, skip_bad=False, prefetch=None,
                 start_method=None, batches=None):
        self.paths = [str(p) for p in paths]
        self.batch_size = batch_size
        self.num_batches = num_batches(len(self.paths), batch_size)
        self.batches = list(range(self.num_batches) if batches is None else batches)  # the ones to run
        self.workers = max(1, min(workers, len(self.batches)))
        self.prefetch = prefetch or 2 * self.workers
        self.initargs = (self.paths, batch_size, transform.to_dict(), skip_bad)
        self.start_method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
        self.pending = deque()
        self.next_i = 0

    def __enter__(self):
        self.pool = get_context(self.start_method).Pool(self.workers, init_worker, self.initargs)
        self._fill()
        return self

    def __exit__(self, *exc):
        self.pool.terminate()
        self.pool.join()

    def _fill(self):
        while len(self.pending) < self.prefetch and self.next_i < len(self.batches):
            self.pending.append(self.pool.apply_async(decode_batch, (self.batches[self.next_i],)))
            self.next_i += 1

    def wait_first(self):
        """Block until the first batch is decoded (a benchmark's way to leave worker start-up out)."""
        if self.pending:
            self.pending[0].wait()

    def __iter__(self):
        """Yield (k, batch, bad rows, worker seconds, seconds waited for it)."""
        for k in self.batches:
            started = time.perf_counter()
            batch, bad, decode_s = self.pending.popleft().get()
            waited = time.perf_counter() - started
            self._fill()
            yield k, batch, bad, decode_s, waited


@dataclass
class EvalJob:
    """What either engine evaluates: every image of the run in order with its label, the batches still to
    run (the others are recorded), and the run's configuration (the runtime each model replica loads, the
    transform every decoder applies, the batch size)."""
    paths: list
    names: list
    labels: list
    batches: list  # to run, in order
    run: RunConfig  # its batch_size is set
    topk: int = 5
    skip_bad: bool = False

    @property
    def batch_size(self) -> int:
        return self.run.batch_size

    @property
    def transform(self) -> EvalTransform:
        return EvalTransform(self.run.data_config)

    @property
    def pending_images(self) -> int:
        return sum(images_in_batch(k, self.batch_size, len(self.paths)) for k in self.batches)

    def identity(self) -> dict:
        """What must match for records to belong to this run (records.RecordStore)."""
        return {**self.run.identity(), "topk": self.topk, "images": image_set_identity(self.names, self.labels)}


def gate_job(job: EvalJob, limit: float, announce=print) -> tuple:
    """The fidelity gate (convmixer_suite.precision.fidelity) of the job's reduced precision, on this machine, before any
    batch runs: on the held-out rows of ``--calib``, else on the job's first pictures. Returns (its figures, the
    backend it loaded, for the local engine to run rather than load it again); (None, None) for fp32."""
    if job.run.precision == "fp32":
        return None, None
    backend = job.run.create_backend()
    held_out = fidelity.held_out_samples(backend, lambda: fidelity.samples_from_images(job.paths, job.transform))
    return fidelity.gate(backend, held_out, limit, announce), backend


def refuse_other_runs_records(job: EvalJob, json_path, fresh=False) -> None:
    """Stop at once, writing nothing, when ``json_path``'s record folder holds another run's records (unless
    ``fresh`` discards them later): before the fidelity gate spends minutes on a run that cannot resume."""
    if not fresh:
        check_identity(records_folder(json_path), job.identity())


def resumable_job(job: EvalJob, json_path, fresh=False, flush_s=None) -> tuple:
    """(``job`` with only the batches not yet recorded, its RecordStore, the number of batches recorded before).

    The record folder belongs to ``json_path``; records of another run are refused (or discarded with ``fresh``).
    """
    store = RecordStore(records_folder(json_path), job.identity(), fresh=fresh,
                        **({} if flush_s is None else {"flush_s": flush_s}))
    done = store.done_batches(job.batch_size, len(job.paths), job.skip_bad)
    job.batches = [k for k in job.batches if k not in done]
    return job, store, len(done)


@dataclass
class BatchResult:
    """One inferred batch: top-k of its real rows (bad rows included, not scored), how long it took, where."""
    k: int
    classes: np.ndarray
    scores: np.ndarray
    num_classes: int
    latency_ms: float
    bad: dict = field(default_factory=dict)  # row -> error message
    decode_s: float = 0.0
    waited_s: float = 0.0
    replica: str = "local"
    probabilities: "np.ndarray | None" = None  # softmax of the top-k classes
    non_finite: dict = field(default_factory=dict)  # row -> how many of its logits are NaN or infinite

    def refuse_non_finite(self, names, batch_size) -> None:
        """Stop the run, recording nothing of this batch, when any of its images' logits is not finite."""
        if self.non_finite:
            row = min(self.non_finite)
            raise UserError(non_finite_message(
                f"{names[self.k * batch_size + row]} (batch {self.k})", self.non_finite,
                len(self.classes) * self.num_classes,
                "nothing recorded for this batch and no JSON written; the batches before it stay recorded for a "
                "rerun of the same run (another model starts over with --fresh)"))


def local_results(stream: BatchStream, backend, num_images: int, topk=5):
    """This process's engine: a BatchResult per batch of ``stream``, timing the model execution only.
    ``backend.predict_each`` may take the next batch before it returns this one's logits (a GPU backend copies
    it to the device while this one runs), so each batch's details wait in ``inflight`` until its logits come."""
    bs = stream.batch_size
    inflight = deque()

    def batches():
        for item in stream:
            inflight.append(item)
            yield item[1]

    for logits, latency_ms in backend.predict_each(batches()):
        k, _, bad, decode_s, waited = inflight.popleft()
        real = logits[:images_in_batch(k, bs, num_images)]
        classes, scores = top_k(real, topk, source=f"batch {k}")
        yield BatchResult(k, classes, scores, logits.shape[1], latency_ms, {row: message for row, _, message in bad},
                          decode_s, waited, non_finite=non_finite_rows(real),
                          probabilities=top_k_probabilities(real, classes))


def record_results(results, store, names, image_labels, batch_size, topk=5, skip_bad=True, log=print,
                   progress=None, workers=1):
    """Log, check and record each BatchResult as it comes; returns (TopKAccuracy of this run's batches,
    StreamTimes, [(image, error)] left out).

    Prints msame's ``Inference time: …ms`` line per batch through ``log``. A bad image without ``skip_bad``
    stops the run with a UserError naming it. ``store`` (a RecordStore, or None) gets every image's record
    and is flushed however the loop ends, so a rerun resumes after the last completed batch.
    """
    counter = TopKAccuracy(topk)
    times = StreamTimes(workers=workers)
    skipped = []
    started = time.perf_counter()
    try:
        for r in results:
            r.refuse_non_finite(names, batch_size)
            times.decode_s += r.decode_s
            times.wait_s += r.waited_s
            times.inference_ms.append(r.latency_ms)
            log(msame_log.time_line(r.latency_ms))
            if r.bad and not skip_bad:
                raise UserError(r.bad[min(r.bad)])
            t1 = time.perf_counter()
            first = r.k * batch_size
            skipped += [(names[first + row], message) for row, message in sorted(r.bad.items())]
            rows = [row for row in range(len(r.classes)) if row not in r.bad]
            counter.update_top_classes(r.classes[rows], [image_labels[first + row] for row in rows], r.num_classes,
                                       source=f"batch {r.k}")
            if store is not None:
                store.add(batch_records(r.k, batch_size, names, image_labels, r.classes, r.scores, r.num_classes,
                                        r.bad, r.latency_ms, r.probabilities))
            times.scoring_s += time.perf_counter() - t1
            times.add_replica_batch(r.replica, len(rows), r.latency_ms)
            if len(times.inference_ms) == 1:
                times.first_batch_s, times.first_batch_images = time.perf_counter() - started, len(rows)
            if progress is not None:
                progress.update(len(r.classes))
    finally:
        if store is not None:
            store.flush()
    times.pipeline_s = time.perf_counter() - started
    times.num_images = counter.num_images
    return counter, times, skipped


def evaluate_local(job: EvalJob, store, workers: int, announce=print, log=print, progress=None, backend=None):
    """The local engine: decode worker processes and one model in this process. Returns (StreamTimes,
    run info for the summary). The workers fork before the model loads, as BatchStream asks; where the model is
    loaded already (``backend``, by the fidelity gate) they are spawned instead, never forked from a process that
    runs a runtime (whose threads, or CUDA, a fork copies half-way)."""
    with BatchStream(job.paths, job.batch_size, job.transform, workers, job.skip_bad, batches=job.batches,
                     start_method="spawn" if backend is not None else None) as stream:
        backend = backend or job.run.create_backend()
        announce(f"backend {backend.describe()}; {len(job.batches)} batches of {job.batch_size} in this process, "
                 f"{stream.workers} decode workers")
        _, times, _ = record_results(local_results(stream, backend, len(job.names), job.topk), store, job.names,
                                     job.labels, job.batch_size, job.topk, job.skip_bad, log, progress,
                                     stream.workers)
    return times, {"engine": "local", "backend": backend.name, "backend_version": backend.version,
                   "precision": backend.precision, "workers": stream.workers}


def run_stream(stream: BatchStream, backend, names, image_labels, topk=5, log=print, progress=None):
    """Infer and score every batch of ``stream`` in this process, recording nothing; returns
    (TopKAccuracy, StreamTimes, skipped names)."""
    return record_results(local_results(stream, backend, len(names), topk), None, names, image_labels,
                          stream.batch_size, topk, log=log, progress=progress, workers=stream.workers)


def default_workers() -> int:
    return os.cpu_count() or 1


def relative_names(paths, root: Path) -> list:
    return [Path(p).relative_to(root).as_posix() for p in paths]

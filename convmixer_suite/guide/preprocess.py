"""ImageNet val images -> float32 NCHW batch files (input_00000.bin, ...) in a folder with its .manifest.json: the
work of convmixer_preprocess.py, for it and for the benchmark's preprocessing runs.

Images are taken in the guide's order (transform.list_images), ``batch_size`` per file, the last file padded with
zero images, each through the model's eval transform. Batch files are written under a temporary name by worker
processes and renamed when complete, after the manifest records the batch's bad images; a folder that holds
another run's batch files is refused, one of the same run is resumed.
"""
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from convmixer_suite.guide.manifest import (BATCH_FILE_RE, Manifest, batch_file_name, batch_span, manifest_path,
                                            read_manifest, write_manifest)
from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch
from convmixer_suite.util.errors import UserError

TEMP_GLOB = ".input_*.bin.tmp*"


@dataclass
class Preprocessing:
    """One preprocessing run into ``folder``: what was planned, what is left, and what was written."""
    folder: Path
    manifest: Manifest
    paths: list
    todo: list  # the batch files still to write
    non_images: int  # files in the image folder that are not images, left out
    written_images: int = 0
    seconds: float = 0.0

    @property
    def resumed_batches(self) -> int:
        """Batch files an earlier run of the same preprocessing left, kept."""
        return self.manifest.num_batches - len(self.todo)

    @property
    def images_per_s(self):
        """Images written per second of batch writing (workers included), or None when nothing was written."""
        return self.written_images / self.seconds if self.written_images else None


def plan(image_path, prep_image, batch_size: int) -> Preprocessing:
    """Check ``prep_image`` (empty of batch files, or holding this same run) and write the manifest of the run;
    returns it with the batch files still to write."""
    root = Path(image_path).resolve()
    folder = Path(prep_image)
    paths, non_images = list_images(root)
    planned = Manifest(images=[p.relative_to(root).as_posix() for p in paths], batch_size=batch_size,
                       transform=EvalTransform().to_dict(), image_path=str(root))
    manifest = open_output(folder, planned)
    write_manifest(folder, manifest)
    todo = [k for k in range(manifest.num_batches) if not (folder / batch_file_name(k)).is_file()]
    return Preprocessing(folder, manifest, paths, todo, non_images)


def write_pending(run: Preprocessing, workers: int, skip_bad: bool = False, start_method=None,
                  warn=None) -> Preprocessing:
    """Write ``run``'s pending batch files with ``workers`` processes (``start_method``: multiprocessing's, None for
    the platform's default), then mark its manifest complete. ``warn(line)`` is told of each bad image left out
    (default: stderr). Returns ``run`` with the images written and the seconds it took."""
    if run.todo:
        start = time.perf_counter()
        run_batches(run, workers, skip_bad, start_method, warn or print_to_stderr)
        run.seconds = time.perf_counter() - start
        run.written_images = count_images(run.paths, run.manifest.batch_size, run.todo)
    run.manifest.complete = True
    write_manifest(run.folder, run.manifest)
    return run


def preprocess(image_path, prep_image, batch_size: int = 1, workers: int = 1, skip_bad: bool = False,
               start_method=None) -> Preprocessing:
    """The whole run: plan, then write what is pending."""
    return write_pending(plan(image_path, prep_image, batch_size), workers, skip_bad, start_method)


def open_output(folder: Path, planned: Manifest) -> Manifest:
    """Check that ``folder`` is empty of batch files or holds this same run; return the manifest to continue."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(TEMP_GLOB):
        stale.unlink()
    previous = read_manifest(folder)
    if previous is None:
        batch_files = [p.name for p in folder.iterdir() if BATCH_FILE_RE.match(p.name)]
        if batch_files:
            raise UserError(f"{folder}: holds {len(batch_files)} batch files ({sorted(batch_files)[0]} ...) "
                            f"but no {manifest_path(folder).name}; delete them or choose another --prep-image")
        return planned
    difference = layout_difference(previous, planned)
    if difference:
        raise UserError(f"{manifest_path(folder)}: this folder holds a different preprocessing run ({difference}); "
                        f"delete the folder or choose another --prep-image")
    planned.skipped = previous.skipped
    return planned


def layout_difference(old: Manifest, new: Manifest) -> str:
    """What makes ``old``'s batch files unusable for ``new`` ('' when nothing does)."""
    if old.batch_size != new.batch_size:
        return f"batch size {old.batch_size}, not {new.batch_size}"
    if old.images != new.images:
        return f"{len(old.images)} other images, not these {len(new.images)}"
    if old.layout() != new.layout():
        return "another transform"
    return ""


# Set in each worker process by init_worker.
_JOB = {}


def init_worker(paths, batch_size, folder, transform_dict, skip_bad):
    _JOB.update(paths=paths, batch_size=batch_size, folder=folder, skip_bad=skip_bad,
                transform=EvalTransform.from_dict(transform_dict))


def batch_paths(paths, batch_size: int, k: int) -> list:
    return paths[batch_span(k, batch_size)]


def write_batch(k: int):
    """Worker: transform batch ``k`` into a temporary file; return (k, temp path, real images, bad images).

    The caller renames the temporary file once the manifest records the batch's bad images.
    """
    paths = batch_paths(_JOB["paths"], _JOB["batch_size"], k)
    bs = _JOB["batch_size"]
    batch, bad = load_batch(paths, _JOB["transform"], rows=bs, skip_bad=_JOB["skip_bad"])
    final = Path(_JOB["folder"], batch_file_name(k))
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    batch.tofile(tmp)
    return k, tmp, len(paths), [(str(path), message) for _, path, message in bad]


def run_batches(run: Preprocessing, workers: int, skip_bad: bool, start_method, warn) -> None:
    """Write the batch files ``run.todo`` with worker processes, recording bad images before each rename."""
    folder, manifest = run.folder, run.manifest
    root = Path(manifest.image_path)
    initargs = (run.paths, manifest.batch_size, str(folder), manifest.transform, skip_bad)
    total = count_images(run.paths, manifest.batch_size, run.todo)
    chunksize = max(1, 16 // manifest.batch_size)
    context = multiprocessing.get_context(start_method)
    try:
        with context.Pool(min(workers, len(run.todo)), init_worker, initargs) as pool, \
                tqdm(total=total, unit="img", desc="preprocess", file=sys.stderr) as bar:
            for k, tmp, n_images, bad in pool.imap_unordered(write_batch, run.todo, chunksize):
                if bad:
                    record_bad(folder, manifest, root, bad, warn)
                os.replace(tmp, folder / batch_file_name(k))
                bar.update(n_images)
    finally:
        for unfinished in folder.glob(TEMP_GLOB):
            unfinished.unlink()


def count_images(paths, batch_size: int, batches) -> int:
    return sum(len(batch_paths(paths, batch_size, k)) for k in batches)


def record_bad(folder: Path, manifest: Manifest, root: Path, bad, warn) -> None:
    known = manifest.skipped_names()
    for path, message in bad:
        name = Path(path).relative_to(root).as_posix()
        if name not in known:
            warn(f"skipping bad image {path}")
            manifest.skipped.append({"name": name, "error": message})
    write_manifest(folder, manifest)


def print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)

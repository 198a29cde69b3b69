"""ImageNet val images -> float32 NCHW batch files (input_00000.bin, ...) for msame / ais_bench.

    python3 convmixer_preprocess.py --image-path /opt/npu/imageNet/val --prep-image ./prep_image_bs1 --batch-size 1

Images are taken in the guide's order (by the number in ImageNet names, across class subfolders; other names
after, by path: transform.list_images), ``--batch-size`` per file, the last file padded with zero images. Each goes through the model's eval
transform (convmixer_suite.guide.transform.EvalTransform). A .manifest.json beside the files records which image is
in which row; convmixer_eval_acc.py reads it.

Rerunning into the same folder resumes: batch files already there are kept (they are written under a
temporary name and renamed when complete). A folder that holds batch files of a different run (other batch
size, other images, other transform, or no manifest) is refused rather than mixed; delete it or pick another.
"""
import argparse
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.guide.manifest import (BATCH_FILE_RE, Manifest, batch_file_name, batch_span, manifest_path, read_manifest, write_manifest)
from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch

TEMP_GLOB = ".input_*.bin.tmp*"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-path", required=True, help="folder of images (flat, or class subfolders)")
    parser.add_argument("--prep-image", required=True, help="output folder for input_NNNNN.bin files")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per .bin file (default 1)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count(),
                        help="worker processes (default: all cores, %(default)s here)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out images that cannot be decoded (recorded in .manifest.json) "
                             "instead of stopping")
    return parser.parse_args(argv)


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


def run_batches(folder: Path, manifest: Manifest, paths, todo, workers: int, skip_bad: bool) -> None:
    """Write the batch files ``todo`` with worker processes, recording bad images before each rename."""
    root = Path(manifest.image_path)
    initargs = (paths, manifest.batch_size, str(folder), manifest.transform, skip_bad)
    total = count_images(paths, manifest.batch_size, todo)
    chunksize = max(1, 16 // manifest.batch_size)
    try:
        with Pool(min(workers, len(todo)), init_worker, initargs) as pool, \
                tqdm(total=total, unit="img", desc="preprocess", file=sys.stderr) as bar:
            for k, tmp, n_images, bad in pool.imap_unordered(write_batch, todo, chunksize):
                if bad:
                    record_bad(folder, manifest, root, bad)
                os.replace(tmp, folder / batch_file_name(k))
                bar.update(n_images)
    finally:
        for unfinished in folder.glob(TEMP_GLOB):
            unfinished.unlink()


def count_images(paths, batch_size: int, batches) -> int:
    return sum(len(batch_paths(paths, batch_size, k)) for k in batches)


def record_bad(folder: Path, manifest: Manifest, root: Path, bad) -> None:
    known = manifest.skipped_names()
    for path, message in bad:
        name = Path(path).relative_to(root).as_posix()
        if name not in known:
            print(f"skipping bad image {path}", file=sys.stderr)
            manifest.skipped.append({"name": name, "error": message})
    write_manifest(folder, manifest)


def main(argv=None):
    args = parse_args(argv)
    root = Path(args.image_path).resolve()
    folder = Path(args.prep_image)
    paths, non_images = list_images(root)
    if non_images:
        print(f"skipped {non_images} non-image files in {args.image_path}")
    planned = Manifest(images=[p.relative_to(root).as_posix() for p in paths], batch_size=args.batch_size,
                       transform=EvalTransform().to_dict(), image_path=str(root))
    manifest = open_output(folder, planned)
    write_manifest(folder, manifest)
    todo = [k for k in range(manifest.num_batches) if not (folder / batch_file_name(k)).is_file()]
    present = manifest.num_batches - len(todo)
    if present:
        print(f"resuming: {present} of {manifest.num_batches} batch files already present, skipped")
    if todo:
        start = time.perf_counter()
        run_batches(folder, manifest, paths, todo, args.workers, args.skip_bad)
        seconds = time.perf_counter() - start
        done_images = count_images(paths, args.batch_size, todo)
        print(f"wrote {len(todo)} batch files ({done_images} images, batch size {args.batch_size}) to {folder} "
              f"in {seconds:.1f} s: {done_images / seconds:.1f} images/s")
    manifest.complete = True
    write_manifest(folder, manifest)
    print(f"{manifest.num_images} images in {manifest.num_batches} batch files, "
          f"{len(manifest.skipped)} bad images left out; manifest: {manifest_path(folder)}")


if __name__ == "__main__":
    run_main(main)

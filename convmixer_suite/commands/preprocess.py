"""ImageNet val images -> float32 NCHW batch files (input_00000.bin, ...) for msame / ais_bench.

    python3 convmixer_preprocess.py --image-path /opt/npu/imageNet/val --prep-image ./prep_image_bs1 --batch-size 1

Images are taken in the guide's order (by the number in ImageNet names, across class subfolders; other names
after, by path: transform.list_images), ``--batch-size`` per file, the last file padded with zero images. Each goes
through the model's eval transform (convmixer_suite.guide.transform.EvalTransform). A .manifest.json beside the
files records which image is in which row; convmixer_eval_acc.py reads it. The work is convmixer_suite.guide.preprocess.

Rerunning into the same folder resumes: batch files already there are kept (they are written under a
temporary name and renamed when complete). A folder that holds batch files of a different run (other batch
size, other images, other transform, or no manifest) is refused rather than mixed; delete it or pick another.
"""
import argparse
import os

from convmixer_suite.guide import preprocess as preprocessing
from convmixer_suite.guide.manifest import manifest_path
from convmixer_suite.util.cli import positive_int, run_main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-path", required=True, help="folder of images (flat, or class subfolders)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out images that cannot be decoded (recorded in .manifest.json) "
                             "instead of stopping")
    parser.add_argument("--prep-image", required=True, help="output folder for input_NNNNN.bin files")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per .bin file (default 1)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count(),
                        help="worker processes (default: all cores, %(default)s here)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    job = preprocessing.plan(args.image_path, args.prep_image, args.batch_size)
    if job.non_images:
        print(f"skipped {job.non_images} non-image files in {args.image_path}")
    if job.resumed_batches:
        print(f"resuming: {job.resumed_batches} of {job.manifest.num_batches} batch files already present, skipped")
    preprocessing.write_pending(job, args.workers, args.skip_bad)
    if job.written_images:
        print(f"wrote {len(job.todo)} batch files ({job.written_images} images, batch size {args.batch_size}) to "
              f"{job.folder} in {job.seconds:.1f} s: {job.images_per_s:.1f} images/s")
    print(f"{job.manifest.num_images} images in {job.manifest.num_batches} batch files, "
          f"{len(job.manifest.skipped)} bad images left out; manifest: {manifest_path(job.folder)}")


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()

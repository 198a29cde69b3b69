"""Accuracy and speed in one streaming pass: images -> model -> top-k, writing no .bin or TXT files.

    python3 convmixer_stream_eval.py --model ./convmixer_1536_20.onnx --image-path /opt/npu/imageNet/val \
        --annotation-file-path /opt/npu/imageNet/val_label.txt --result-json-path ./result \
        --json-file-name result_bs1.json --batch-size 1

The same images, batches, transform, runtime and scoring as convmixer_preprocess.py + convmixer_infer.py +
convmixer_eval_acc.py, so the accuracy JSON is the file-based flow's; while the model runs one batch, worker
processes decode the next ones. stdout carries msame's log lines (``Inference time: …ms`` per batch and the
averages, which close the log as msame's do), so ``test/parse.py --result-file <this log>`` and the guide's own
parse.py give the fps; the images/s of each stage are printed before the averages and written to
``<json name>_stream_summary.json`` beside the accuracy JSON.
"""
import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from convmixer_suite import msame_log
from convmixer_suite.backends import BACKEND_NAMES, PRECISIONS, create_backend
from convmixer_suite.cli import UserError, positive_int, run_main
from convmixer_suite.scoring import format_accuracy_line, read_labels, write_accuracy_json
from convmixer_suite.stream import BatchStream, default_workers, labelled_rows, relative_names, run_stream
from convmixer_suite.transform import EvalTransform, list_images


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=".onnx (onnxruntime, openvino) or a checkpoint (torch)")
    p.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--calib", default=None, help="folder of preprocessed calibration images for --precision int8")
    p.add_argument("--threads", default=None, type=positive_int, help="intra-op threads (default: the runtime's)")
    p.add_argument("--device", default=None, help="cpu (default), cuda:N, ... as convmixer_infer.py takes it")
    p.add_argument("--image-path", required=True, help="folder of images (flat, or class subfolders)")
    p.add_argument("--annotation-file-path", required=True, help="val_label.txt")
    p.add_argument("--result-json-path", required=True, help="folder for the accuracy JSON")
    p.add_argument("--json-file-name", required=True, help="accuracy JSON file name, e.g. result_bs1.json")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="decode worker processes (default: all cores, %(default)s here)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be decoded instead of stopping (as convmixer_preprocess.py)")
    return p.parse_args(argv)


def stage_lines(rates: dict, workers: int) -> list:
    return [f"[INFO] decode+transform: {rates['decode_transform_images_per_s_per_worker']:.1f} images/s per worker, "
            f"{rates['decode_transform_images_per_s']:.1f} images/s with {workers} workers",
            f"[INFO] inference: {rates['inference_images_per_s']:.2f} images/s (model execution only)",
            f"[INFO] scoring: {rates['scoring_images_per_s']:.0f} images/s",
            f"[INFO] end to end: {rates['end_to_end_images_per_s']:.2f} images/s; pipeline {rates['pipeline_s']:.2f} s "
            f"vs inference {rates['inference_s']:.2f} s: overhead x{rates['pipeline_overhead_ratio']:.3f} "
            f"({rates['waiting_for_decode_s']:.2f} s waiting for decoded batches)"]


def main(argv=None):
    args = parse_args(argv)
    root = Path(args.image_path).resolve()
    paths, non_images = list_images(root)
    names = relative_names(paths, root)
    image_labels = labelled_rows(names, read_labels(args.annotation_file_path), args.annotation_file_path)
    started = time.perf_counter()
    with BatchStream(paths, args.batch_size, EvalTransform(), args.workers, args.skip_bad) as stream:
        backend = create_backend(args.backend, args.model, threads=args.threads, precision=args.precision,
                                 device=args.device, calib_dir=args.calib)
        if backend.batch_size not in (None, args.batch_size):
            raise UserError(f"{args.model}: the model takes batches of {backend.batch_size}, "
                            f"not --batch-size {args.batch_size}")
        print(f"[INFO] backend {backend.describe()}; streaming {len(paths)} images from {root} in "
              f"{stream.num_batches} batches of {args.batch_size}, {stream.workers} decode workers"
              + (f" ({non_images} non-image files skipped)" if non_images else ""), flush=True)
        with tqdm(total=len(paths), unit="img", desc="stream eval", file=sys.stderr, dynamic_ncols=True) as bar:
            counter, times, skipped = run_stream(stream, backend, names, image_labels,
                                                 log=lambda line: print(line, flush=True), progress=bar)
    for name, message in skipped:
        print(f"skipping bad image {name}: {message}", file=sys.stderr)
    rates = times.rates()
    print("\n".join(stage_lines(rates, stream.workers)), flush=True)
    topk = counter.accuracies()
    json_path = write_accuracy_json(Path(args.result_json_path) / args.json_file_name, counter.num_images,
                                    counter.num_classes, topk)
    summary = msame_log.build_summary(
        times.inference_ms, batch_size=args.batch_size, backend_name=backend.name,
        backend_version=backend.version, threads=args.threads, precision=backend.precision, model=args.model,
        input_path=str(root), device=args.device, num_images=counter.num_images,
        skipped_images=[{"name": n, "error": m} for n, m in skipped], workers=stream.workers,
        stages=rates, total_s=time.perf_counter() - started)
    summary_path = msame_log.write_summary(json_path.with_name(json_path.stem + "_stream_summary.json"), summary)
    print(f"{counter.num_images} images, {counter.num_classes} classes; wrote {json_path} and {summary_path}")
    print(format_accuracy_line(topk))
    # msame's averages close the log, as msame's do: the guide's parse.py reads garbage if a later line has "ms"
    print("\n".join(msame_log.folder_average_lines(times.inference_ms)), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)

"""Top-k accuracy of msame / ais_bench outputs against val_label.txt, written as the ModelZoo JSON.

    python3 convmixer_eval_acc.py --folder-davinci-target ./result/outputs_bs1_om/ \\
        --annotation-file-path /opt/npu/imageNet/val_label.txt --result-json-path ./result \\
        --json-file-name result_bs1.json --batch-size 1

Output rows are matched to images through the preprocessing manifest: ``--manifest`` (the file or the
--prep-image folder), else a .manifest.json in the output folder, else the one beside the input folder that
an ais_bench-style summary JSON next to the outputs records (``args`` ``--input``, or ``input``). With no
manifest, rows map by position (batch k, row i is ILSVRC2012_val_{k*bs+i+1:08d}). Every image must have
its output and its label: a shortened set is refused, not scored.
"""
import argparse
from pathlib import Path

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.guide.manifest import read_manifest
from convmixer_suite.guide.scoring import (find_manifest, find_results_folder, format_accuracy_line, score_outputs, write_accuracy_json)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder-davinci-target", required=True,
                        help="msame/ais_bench --output folder (or its timestamp subfolder)")
    parser.add_argument("--annotation-file-path", required=True, help="val_label.txt: 'name class' per line")
    parser.add_argument("--result-json-path", default="./result", help="folder for the accuracy JSON")
    parser.add_argument("--json-file-name", default="result.json", help="accuracy JSON file name")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="rows per output file (default: the manifest's, else 1)")
    parser.add_argument("--manifest", default=None,
                        help=".manifest.json of the inputs, or the --prep-image folder holding it "
                             "(default: found next to the outputs, see above)")
    parser.add_argument("--topk", type=positive_int, default=5, help="report top-1 … top-k (default 5)")
    return parser.parse_args(argv)


def load_manifest(given, folder, results):
    """The manifest to map rows with (None: positional), refusing one of an unfinished preprocessing run."""
    path = Path(given) if given else find_manifest(folder, results)
    if path is None:
        return None
    manifest = read_manifest(path)
    if manifest is None:
        raise UserError(f"{path}: no .manifest.json there")
    if not manifest.complete:
        raise UserError(f"{path}: its preprocessing run did not finish; rerun convmixer_preprocess.py")
    return manifest


def resolve_batch_size(given, manifest) -> int:
    if manifest is None:
        return given or 1
    if given and given != manifest.batch_size:
        raise UserError(f"--batch-size {given} differs from the manifest's batch size {manifest.batch_size}")
    return manifest.batch_size


def main(argv=None):
    args = parse_args(argv)
    results = find_results_folder(args.folder_davinci_target)
    manifest = load_manifest(args.manifest, args.folder_davinci_target, results)
    batch_size = resolve_batch_size(args.batch_size, manifest)
    mapping = "the manifest" if manifest else "position (no manifest found)"
    print(f"scoring {results} (batch size {batch_size}), rows mapped to images by {mapping}")
    counter = score_outputs(results, args.annotation_file_path, manifest, batch_size, args.topk)
    topk = counter.accuracies()
    path = write_accuracy_json(Path(args.result_json_path) / args.json_file_name, counter.num_images,
                               counter.num_classes, topk)
    print(f"{counter.num_images} images, {counter.num_classes} classes; wrote {path}")
    print(format_accuracy_line(topk))


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()

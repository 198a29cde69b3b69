"""Export a ConvMixer checkpoint to ONNX and check the result against PyTorch.

    python3 convmixer_pth2onnx.py --source ./convmixer_1536_20_ks9_p7.pth.tar --target ./convmixer_1536_20.onnx

The checkpoint may be locuslab's release or timm's (.pth, .pth.tar or .safetensors; raw, wrapped or with
``module.`` prefixes). A missing --source named like one of the three released checkpoints is downloaded
first (convmixer_suite.model.download: checked, its size and sha256 recorded beside it), unless --no-download.
The ONNX model has input ``image`` [N,3,224,224] float32 and output ``class`` [N,1000],
with a dynamic batch axis unless --batch-size fixes it. After writing, onnx.checker and ONNX Runtime vs PyTorch
(seeded input, batch 1 and 3) must agree to max |diff|/max |logit| <= 1e-4, or nothing is left at --target.
The ONNX file's metadata names the checkpoint it was made from (file name and sha256).
"""
import argparse
import time

from convmixer_suite.model import checkpoint
from convmixer_suite.model import download
from convmixer_suite.model import export
from convmixer_suite.model.net import ARCHS, DEFAULT_ARCH
from convmixer_suite.util.cli import positive_int, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="checkpoint: .pth, .pth.tar or .safetensors")
    parser.add_argument("--target", required=True, help="ONNX file to write")
    parser.add_argument("--arch", choices=list(ARCHS), default=None,
                        help="architecture (default: inferred from the checkpoint's tensor shapes, "
                             f"else {DEFAULT_ARCH})")
    parser.add_argument("--opset", type=int, default=export.DEFAULT_OPSET,
                        help=f"ONNX opset (default {export.DEFAULT_OPSET}, as the ModelZoo export)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="fix the batch size in the model (default: a dynamic batch axis)")
    parser.add_argument("--no-download", action="store_true",
                        help="when --source is missing and named like a released checkpoint, fail instead of "
                             "downloading it (the default downloads it, checked, with its sha256 recorded beside it)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load checkpoints the safe loader refuses, by full unpickling; this EXECUTES "
                             "CODE from the file, so use it only for files you trust")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    source = download.ensure_checkpoint(args.source, download=not args.no_download)
    model, spec = checkpoint.load_model(source, args.arch, args.allow_pickle)
    print(f"loaded {args.source}: {checkpoint.describe(spec)}")
    batch = f"fixed batch {args.batch_size}" if args.batch_size else "dynamic batch"
    print(f"exporting to {args.target} (opset {args.opset}, {batch}) and verifying it")
    report = export.export_verified(model, args.target, args.opset, args.batch_size,
                                    metadata=export.source_metadata(source))
    for line in report.lines():
        print(line)
    print(f"wrote {args.target} in {time.perf_counter() - start:.1f} s")


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()

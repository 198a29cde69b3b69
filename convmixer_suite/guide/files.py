"""The guide's file names, and the facts the bash wrappers ask Python for rather than repeat.

    python3 -m convmixer_suite.guide.files default-model --backend auto --batch-size 1
    python3 -m convmixer_suite.guide.files input-shape          ->  3,224,224
    python3 -m convmixer_suite.guide.files num-images ./prep_image_bs1

``default-model`` is test/eval_acc_perf.sh's model when --model is not given: the .om test/pth2om.sh compiles
for msame and ais_bench (and for ``auto`` when msame is on PATH and that .om is there, the case in which
``backends.resolve_backend`` picks msame), the released checkpoint for torch, else the exported ONNX.
"""
import argparse
import shutil
from pathlib import Path

from convmixer_suite.model import net as convmixer_net
from convmixer_suite.util.cli import positive_int, run_main
from convmixer_suite.guide.manifest import read_manifest

ONNX_FILE = f"{convmixer_net.DEFAULT_ARCH}.onnx"
CHECKPOINT_FILE = convmixer_net.ARCHS[convmixer_net.DEFAULT_ARCH].checkpoint
TOOL_BACKENDS = ("msame", "ais_bench")


def om_file(batch_size: int) -> str:
    """What atc writes for ``--output=convmixer_1536_20_bs{batch_size}``."""
    return f"{convmixer_net.DEFAULT_ARCH}_bs{batch_size}.om"


def default_model(backend: str, batch_size: int, folder=".") -> Path:
    folder = Path(folder)
    om = folder / om_file(batch_size)
    if backend in TOOL_BACKENDS or (backend == "auto" and shutil.which("msame") and om.is_file()):
        return om
    return folder / (CHECKPOINT_FILE if backend == "torch" else ONNX_FILE)


def num_images(prep_dir) -> int:
    """The real images of a preprocessed folder, from its manifest (0 without one)."""
    manifest = read_manifest(prep_dir)
    return manifest.num_images if manifest else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    model = sub.add_parser("default-model", help="the model file for a backend, in the current folder")
    model.add_argument("--backend", default="auto")
    model.add_argument("--batch-size", type=positive_int, default=1)
    sub.add_parser("input-shape", help="one image's shape, C,H,W")
    count = sub.add_parser("num-images", help="the images of a folder written by convmixer_preprocess.py")
    count.add_argument("prep_dir")
    args = parser.parse_args(argv)
    if args.what == "default-model":
        print(f"./{default_model(args.backend, args.batch_size)}")
    elif args.what == "input-shape":
        print(",".join(map(str, convmixer_net.DATA_CONFIG.input_size)))
    else:
        print(num_images(args.prep_dir))
    return 0


if __name__ == "__main__":
    run_main(main)

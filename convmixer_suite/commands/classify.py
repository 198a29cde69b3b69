"""Name what is in your own photos: the top-k ImageNet classes with their probabilities.

    python3 convmixer_classify.py PHOTO [PHOTO ...] [--model ONNX|CHECKPOINT] [--backend auto] [--topk 5]
    python3 convmixer_classify.py PHOTO --device cuda:0 --precision fp16    # the checkpoint on a GPU in fp16

--model defaults to ./convmixer_1536_20.onnx when it exists (test/pth2om.sh writes it), else to the checkpoint
./convmixer_1536_20_ks9_p7.pth.tar, run on PyTorch and downloaded first when missing (--no-download: don't).
Photos go through the model's eval transform. A photo that cannot be read gets one line naming it; the others
are still classified, and the exit status is then 2.
"""
import argparse

import numpy as np

from convmixer_suite.run import classify
from convmixer_suite.precision import fidelity
from convmixer_suite.runtimes.base import PRECISIONS
from convmixer_suite.runtimes.registry import BACKEND_NAMES
from convmixer_suite.run.config import add_compile_option
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import positive_int, print_error, run_main
from convmixer_suite.guide.imagenet_classes import NUM_CLASSES
from convmixer_suite.guide.transform import EvalTransform


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, …)")
    parser.add_argument("--model", default=None,
                        help=f"an .onnx model, or a checkpoint (run on PyTorch); default ./{classify.DEFAULT_ONNX} "
                             f"if present, else ./{classify.DEFAULT_CHECKPOINT}")
    parser.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES,
                        help="auto: onnxruntime for an .onnx, torch for a checkpoint")
    parser.add_argument("--device", default=None, help="cpu (default), or cuda:N etc. as convmixer_infer.py takes")
    parser.add_argument("--precision", default="fp32", choices=[p for p in PRECISIONS if p != "int8"],
                        help="fp16/bf16: on a GPU (--device cuda:N), or on OpenVINO where the CPU has them")
    parser.add_argument("--max-logit-error", type=fidelity.logit_error_limit,
                        default=fidelity.DEFAULT_MAX_LOGIT_ERROR, metavar="FRACTION",
                        help="fp16/bf16: the most max |diff| / max |logit| against fp32 on the first photos before "
                             "any class is shown (default %(default)s)")
    add_compile_option(parser)
    parser.add_argument("--topk", type=positive_int, default=5, help="classes shown per photo (default 5)")
    parser.add_argument("--no-download", action="store_true",
                        help="do not download a missing released checkpoint")
    args = parser.parse_args(argv)
    if args.topk > NUM_CLASSES:
        parser.error(f"--topk {args.topk}: the model knows {NUM_CLASSES} classes")
    return args


def main(argv=None):
    args = parse_args(argv)
    transform = EvalTransform()
    good, bad = classify.load_photos(args.photos, transform)
    for _, message in bad:
        print_error(message)
    if not good:
        raise UserError(f"none of the {len(bad)} photo(s) could be read")
    model_path = args.model or classify.default_model()
    backend = classify.run_config(model_path, args.backend, args.device, allow_download=not args.no_download,
                                  precision=args.precision, compile_mode=args.compile_mode).create_backend()
    print(f"{model_path} on {backend.describe()}")
    images = np.stack([image for _, image in good])
    fidelity.gate(backend, lambda: (images[:fidelity.GATE_IMAGES], "the photos given"), args.max_logit_error)
    probabilities = classify.predict_probabilities(backend, images)
    for (path, _), row in zip(good, probabilities):
        print(path)
        for guess in classify.top_k(row, args.topk):
            print(guess.line())
    return 2 if bad else 0


def run():
    """The installed command's entry point."""
    run_main(main)


if __name__ == "__main__":
    run()

"""Stand-ins for the quick start when the real weights or ImageNet are not on the machine.

    python3 -m convmixer_suite.guide.samples checkpoint RANDOM_WEIGHTS_convmixer_1536_20.pth.tar
    python3 -m convmixer_suite.guide.samples dataset ./imagenet_sample --num-images 8

``checkpoint`` writes a seeded random ConvMixer-1536/20 state dict in the locuslab release layout: the
whole pipeline runs on it, but its accuracy means nothing. ``dataset`` writes an ImageNet-layout folder
(``val/ILSVRC2012_val_%08d.JPEG`` and ``val_label.txt``) of generated pictures whose labels follow a fixed
rule (image i has class ``(i * 997) % 1000``), not their content: accuracy on them means nothing either.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from convmixer_suite.model.net import ARCHS, DEFAULT_ARCH
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import atomic_path, write_text_atomic
from convmixer_suite.util.cli import run_main

LABEL_RULE = "image i has class (i * 997) % 1000"
# test/demo.sh names its random checkpoint RANDOM_WEIGHTS_<arch>.pth.tar; a report says such a run means nothing.
RANDOM_WEIGHTS_PREFIX = "RANDOM_WEIGHTS_"
PICTURE_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480))  # typical ImageNet val sizes


def write_random_checkpoint(path, arch=DEFAULT_ARCH, seed: int = 0, batchnorm_images=None) -> Path:
    """A seeded random state dict of ``arch`` (a name of ``ARCHS`` or an ``ArchSpec``) with the released
    checkpoint's keys. ``batchnorm_images`` (a float32 [N,3,224,224] array): the BatchNorm statistics are those of
    these images, so that activations keep a realistic scale through the blocks (PyTorch's default init lets them
    fade to almost nothing, which would make a reduced precision look better than it is)."""
    import torch
    torch.manual_seed(seed)
    model = (ARCHS[arch] if isinstance(arch, str) else arch).build()
    if batchnorm_images is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a plain average over the batch
        model.train()
        with torch.no_grad():
            model(torch.from_numpy(batchnorm_images))
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(model.eval().state_dict(), tmp)
    return path


def seeded_checkpoint(spec, seed: int, folder) -> Path:
    """Seeded random weights of ``spec`` (PyTorch's default init) in ``folder``, written once."""
    path = Path(folder) / f"{RANDOM_WEIGHTS_PREFIX}{spec.name}_seed{seed}.pth"
    return path if path.is_file() else write_random_checkpoint(path, spec, seed)


def sample_picture(index: int, size=(320, 256)) -> Image.Image:
    """A smooth coloured pattern plus noise, different for each index."""
    rng = np.random.default_rng(index)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(0.01, 0.05, size=(3, 2))
    channels = [127 + 100 * np.sin(xx * fx + yy * fy + p) for (fx, fy), p in zip(freq, phase)]
    rgb = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(h, w, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def generated_pictures(folder, count: int, first_index: int = 0) -> Path:
    """``count`` JPEG pictures of ImageNet-like sizes (``sample_picture(first_index + i)``) named as ImageNet's
    validation images, written once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        if not path.is_file():
            with atomic_path(path) as tmp:
                sample_picture(first_index + i, PICTURE_SIZES[i % len(PICTURE_SIZES)]).save(tmp, format="JPEG",
                                                                                             quality=90)
    return folder


def label_of(index: int) -> int:
    return (index * 997) % 1000


def write_sample_dataset(folder, num_images: int = 8) -> Path:
    """``folder/val/*.JPEG`` and ``folder/val_label.txt`` in the ModelZoo layout."""
    if num_images < 1:
        raise UserError(f"--num-images {num_images}: must be at least 1")
    folder = Path(folder)
    (folder / "val").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(1, num_images + 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        with atomic_path(folder / "val" / name) as tmp:
            sample_picture(i).save(tmp, format="JPEG", quality=90)
        lines.append(f"{name} {label_of(i)}")
    write_text_atomic(folder / "val_label.txt", "\n".join(lines) + "\n")
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ckpt = sub.add_parser("checkpoint", help="write a seeded random checkpoint (accuracy means nothing)")
    ckpt.add_argument("path")
    ckpt.add_argument("--seed", type=int, default=0)
    data = sub.add_parser("dataset", help="write a small ImageNet-layout sample set")
    data.add_argument("folder")
    data.add_argument("--num-images", type=int, default=8)
    args = parser.parse_args(argv)
    if args.what == "checkpoint":
        path = write_random_checkpoint(args.path, seed=args.seed)
        print(f"wrote {path}: RANDOM weights (seed {args.seed}); accuracy measured with them means nothing")
    else:
        folder = write_sample_dataset(args.folder, args.num_images)
        print(f"wrote {args.num_images} generated images and val_label.txt in {folder}; labels follow a fixed "
              f"rule ({LABEL_RULE}), not the pictures: accuracy on them means nothing")
    return 0


if __name__ == "__main__":
    run_main(main)

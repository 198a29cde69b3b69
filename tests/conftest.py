"""Fixtures shared by the test modules: small seeded ConvMixers, their checkpoints, generated photos."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import convmixer_net  # noqa: E402

# A small configuration: the real layer structure at a fraction of the cost (patch 14 as in 1024/20).
SMALL = dict(dim=32, depth=2, kernel_size=5, patch_size=14)


def seeded_model(seed=0, n_classes=1000, **config):
    """A ConvMixer with random weights and non-trivial BatchNorm statistics, in eval mode."""
    config = {**SMALL, **config}
    torch.manual_seed(seed)
    model = convmixer_net.ConvMixer(n_classes=n_classes, **config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def small_model():
    return seeded_model()


@pytest.fixture
def small_checkpoint(tmp_path, small_model):
    """The small model's raw state dict saved as a .pth.tar, as the locuslab release stores it."""
    path = tmp_path / "small.pth.tar"
    torch.save(small_model.state_dict(), path)
    return path


def write_photo(path, size=(300, 240), mode="RGB", seed=0, fmt=None):
    """A smooth random image (gradients plus noise), so resampling differences show."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (c + 1) * 255 // max(w, 1) + yy * (3 - c) * 255 // max(h, 1)) % 256
                     for c in range(3)], axis=-1).astype(np.int16)
    noise = rng.integers(-40, 40, size=base.shape)
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt or ("JPEG" if path.suffix.upper() in (".JPEG", ".JPG") else None))
    return path


@pytest.fixture
def photo_folder(tmp_path):
    """Seven ImageNet-style JPEGs of assorted sizes in a flat folder, named as in the val set."""
    folder = tmp_path / "val"
    sizes = [(500, 375), (375, 500), (224, 224), (640, 427), (233, 300), (1024, 683), (250, 250)]
    for i, size in enumerate(sizes):
        write_photo(folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG", size=size, seed=i)
    return folder


def run_script(*args, cwd=REPO, env=None, check=False, timeout=600):
    """Run a repo script (``python3 x.py …`` or ``bash test/x.sh …``) and return the CompletedProcess."""
    cmd = list(args)
    if cmd[0].endswith(".py"):
        cmd = [sys.executable, str(REPO / cmd[0])] + cmd[1:]
    elif cmd[0].endswith(".sh"):
        cmd = ["bash", str(REPO / cmd[0])] + cmd[1:]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True,
                          check=check, timeout=timeout)


# ---- issue 2: checkpoint layouts ------------------------------------------------------------------------

def timm_state_dict(state_dict, depth):
    """A locuslab-keyed state dict renamed to timm's ConvMixer keys (``stem.0.``, ``stem.2.``,
    ``blocks.i.``, ``head.``), written out independently of convmixer_suite.checkpoint's mapping."""
    renames = {"0": "stem.0", "2": "stem.2", str(3 + depth + 2): "head"}
    renames.update({str(3 + i): f"blocks.{i}" for i in range(depth)})
    out = {}
    for key, value in state_dict.items():
        index, rest = key.split(".", 1)
        out[f"{renames[index]}.{rest}"] = value
    return out

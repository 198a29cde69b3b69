"""What the benchmark runs on: the architecture, its weights and ONNX export (cached by the checkpoint's hash),
generated pictures of ImageNet-like sizes, preprocessed calibration images, the loaded configurations and
the labelled set of an accuracy run. Everything written once under the work folder, so a rerun reuses it."""
import re
from pathlib import Path

from convmixer_suite.model.net import ARCHS, ArchSpec
from convmixer_suite.bench.configs import CONFIGS, REFERENCE
from convmixer_suite.util.errors import UserError
# the benchmark reads the generated inputs through this module
from convmixer_suite.guide.samples import generated_pictures, seeded_checkpoint  # noqa: F401
from convmixer_suite.guide.transform import load_pictures  # noqa: F401

CUSTOM_ARCH_RE = re.compile(r"^convmixer_(\d+)_(\d+)_ks(\d+)_p(\d+)$")
CALIB_SEED_OFFSET = 100_000  # calibration pictures never coincide with the fidelity pictures


def arch_spec(name) -> ArchSpec:
    """A released architecture by name, or any ``convmixer_DIM_DEPTH_ksK_pP``."""
    if name in ARCHS:
        return ARCHS[name]
    match = CUSTOM_ARCH_RE.match(name)
    if not match:
        raise UserError(f"--arch {name!r}: use one of {', '.join(ARCHS)} or convmixer_DIM_DEPTH_ksK_pP")
    dim, depth, kernel, patch = map(int, match.groups())
    return ArchSpec(name, dim, depth, kernel, patch)


def cached_onnx(checkpoint: Path, work: Path, log=print) -> tuple:
    """The checkpoint exported and verified by convmixer_suite.model.export, cached by its hash; with its architecture."""
    from convmixer_suite.model.checkpoint import load_model
    from convmixer_suite.model.export import export_verified
    from convmixer_suite.util.files import file_sha256
    model, spec = load_model(checkpoint)
    path = Path(work) / f"{spec.name}-{file_sha256(checkpoint)[:12]}.onnx"
    if not path.is_file():
        log(f"==> exporting {spec.name} to {path}")
        for line in export_verified(model, path).lines():
            log(f"    {line}")
    return path, spec


def preprocess(image_dir: Path, out: Path, workers: int, batch_size: int = 1):
    """Preprocess ``image_dir`` into ``out`` as convmixer_preprocess.py does (convmixer_suite.guide.preprocess),
    its workers spawned (this process runs runtime threads, which a forked worker must not inherit); returns the
    images/s of the batch writing, or None when nothing was left to write (a cached folder)."""
    from convmixer_suite.guide.preprocess import preprocess as preprocess_folder
    return preprocess_folder(image_dir, out, batch_size, workers, start_method="spawn").images_per_s


def calibration(work: Path, num_calib: int, log=print) -> Path:
    """``num_calib`` generated pictures preprocessed for int8 calibration, written once."""
    import os
    pictures = generated_pictures(work / f"calib_pictures_{num_calib}", num_calib, CALIB_SEED_OFFSET)
    folder = work / f"calib_{num_calib}"
    log(f"==> preprocessing {num_calib} generated calibration pictures into {folder}")
    preprocess(pictures, folder, os.cpu_count() or 1)
    return folder


def run_config(name, onnx_path: Path, checkpoint: Path, threads, calib_dir, num_calib):
    """The RunConfig of the benchmark configuration ``name`` (bench.configs.CONFIGS); its batch size is
    left open: each timing sets its own."""
    from convmixer_suite.run.config import RunConfig
    backend_name, precision = CONFIGS[name]
    return RunConfig.build(checkpoint if backend_name == "torch" else onnx_path, backend=backend_name,
                           precision=precision, threads=threads, calib=calib_dir if precision == "int8" else None,
                           num_calib=num_calib)


def accuracy_set(images, labels_path):
    """Every image of ``images`` with its label from ``labels_path`` (val_label.txt), in order; they are
    preprocessed as LoadGen loads them."""
    from convmixer_suite.bench.loadgen import AccuracySet
    from convmixer_suite.guide.scoring import image_key, read_labels
    from convmixer_suite.guide.transform import list_images
    paths, _ = list_images(images)
    labels = read_labels(labels_path)
    missing = [p.name for p in paths if image_key(p.name) not in labels]
    if missing:
        raise UserError(f"{labels_path}: no label for {missing[0]} (and {len(missing) - 1} more images)")
    return AccuracySet(paths, [p.name for p in paths], [labels[image_key(p.name)] for p in paths])

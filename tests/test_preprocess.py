"""convmixer_preprocess.py: batch files, order, padding, manifest, bad images, refusal and resume."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from convmixer_suite.commands import preprocess as preprocess_command
from conftest import REPO, run_script, write_photo
from convmixer_net import DATA_CONFIG
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.manifest import read_manifest
from convmixer_suite.guide.transform import EvalTransform, load_rgb

IMAGE_SHAPE = (3, DATA_CONFIG.crop_size, DATA_CONFIG.crop_size)


def read_batch(path, batch_size):
    data = np.fromfile(path, dtype="<f4")
    assert data.size == batch_size * np.prod(IMAGE_SHAPE), f"{path} has the wrong size"
    return data.reshape(batch_size, *IMAGE_SHAPE)


def expected_rows(paths):
    transform = EvalTransform()
    return [transform(load_rgb(p)) for p in paths]


def assert_error_line(result, *fragments):
    """Exit 2, no traceback, and the last stderr line is the one error line, naming ``fragments``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("convmixer_preprocess.py: error: ")
    for fragment in fragments:
        assert fragment in last


def preprocess(images, out, *extra):
    """Run the script in a subprocess (for exit codes and stderr)."""
    return run_script("convmixer_preprocess.py", "--image-path", images, "--prep-image", out, *extra)


def preprocess_in_process(images, out, *extra):
    """Run the script's main() here (no interpreter start); user errors raise UserError."""
    preprocess_command.main([str(a) for a in ("--image-path", images, "--prep-image", out, *extra)])


def test_batches_in_name_order_with_padding(tmp_path, photo_folder, capsys):
    (photo_folder / "val_label.txt").write_text("not an image\n")
    out = tmp_path / "prep_image_bs3"
    preprocess_in_process(photo_folder, out, "--batch-size", "3", "--workers", "2")
    stdout = capsys.readouterr().out
    assert "skipped 1 non-image files" in stdout and "images/s" in stdout
    paths = sorted(photo_folder.glob("*.JPEG"))
    assert sorted(p.name for p in out.glob("*.bin")) == ["input_00000.bin", "input_00001.bin", "input_00002.bin"]
    rows = np.concatenate([read_batch(out / f"input_{k:05d}.bin", 3) for k in range(3)])
    for row, want in zip(rows, expected_rows(paths)):
        assert np.array_equal(row, want)
    assert not rows[len(paths):].any()  # the last batch's two padding rows are zeros
    manifest = read_manifest(out)
    assert manifest.images == [p.name for p in paths] and manifest.batch_size == 3
    assert manifest.num_images == 7 and manifest.num_batches == 3 and manifest.complete
    assert EvalTransform.from_dict(manifest.transform).config == DATA_CONFIG
    assert manifest.transform["resize_size"] == DATA_CONFIG.resize_size
    assert manifest.skipped == [] and manifest.format == "float32 NCHW"


def test_default_batch_size_one_and_class_subfolders(tmp_path):
    images = tmp_path / "val"
    rels = ["n02/ILSVRC2012_val_00000001.JPEG", "n01/ILSVRC2012_val_00000002.JPEG"]
    for i, rel in enumerate(rels):
        write_photo(images / rel, size=(280 + 7 * i, 250), seed=i)
    out = tmp_path / "prep"
    preprocess_in_process(images, out, "--workers", "1")
    manifest = read_manifest(out)
    assert manifest.images == rels and manifest.batch_size == 1      # the guide's order: by image number
    for k, rel in enumerate(rels):
        assert np.array_equal(read_batch(out / f"input_{k:05d}.bin", 1)[0], expected_rows([images / rel])[0])


def make_folder_with_corrupt(tmp_path):
    images = tmp_path / "val"
    for i in range(5):
        write_photo(images / f"ILSVRC2012_val_{i + 1:08d}.JPEG", size=(260, 240 + i), seed=i)
    corrupt = images / "ILSVRC2012_val_00000003.JPEG"
    corrupt.write_bytes(corrupt.read_bytes()[:1500])  # truncated JPEG
    return images, corrupt


def test_corrupt_image_stops_then_skip_bad_resumes(tmp_path):
    images, corrupt = make_folder_with_corrupt(tmp_path)
    out = tmp_path / "prep"
    result = preprocess(images, out, "--batch-size", "2", "--workers", "1")
    assert_error_line(result, str(corrupt))
    assert not (out / "input_00001.bin").exists()  # the batch holding the corrupt image
    assert not list(out.glob(".input_*"))  # no temporary files left
    assert not read_manifest(out).complete

    preprocess_in_process(images, out, "--batch-size", "2", "--skip-bad")
    manifest = read_manifest(out)
    assert [s["name"] for s in manifest.skipped] == [corrupt.name] and manifest.num_images == 4
    assert manifest.complete and manifest.images[2] == corrupt.name
    batch = read_batch(out / "input_00001.bin", 2)
    assert not batch[0].any()  # the corrupt image's row is zeros and is not scored
    assert np.array_equal(batch[1], expected_rows([images / "ILSVRC2012_val_00000004.JPEG"])[0])


def test_refuses_to_mix_runs(tmp_path, photo_folder):
    out = tmp_path / "prep"
    preprocess_in_process(photo_folder, out, "--batch-size", "4")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="batch size 4, not 2"):
        preprocess_in_process(photo_folder, out, "--batch-size", "2")
    shutil.copyfile(photo_folder / "ILSVRC2012_val_00000001.JPEG", photo_folder / "ILSVRC2012_val_00000008.JPEG")
    with pytest.raises(UserError, match="7 other images, not these 8"):
        preprocess_in_process(photo_folder, out, "--batch-size", "4")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "input_00000.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="no .manifest.json"):
        preprocess_in_process(photo_folder, foreign)


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="missing"):
        preprocess_in_process(tmp_path / "missing", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no image files"):
        preprocess_in_process(empty, tmp_path / "out")
    with pytest.raises(SystemExit):
        preprocess_in_process(empty, tmp_path / "out", "--batch-size", "0")


def test_resume_after_kill(tmp_path):
    """Kill a run once its first batch file appears; no final-named file is partial; a rerun finishes the
    rest, says how many it kept, and gives the same files as the transform of each image."""
    images = tmp_path / "val"
    sources = [write_photo(tmp_path / f"src{i}.JPEG", size=size, seed=i)
               for i, size in enumerate([(1500, 1100), (1100, 1500)])]
    images.mkdir()
    for i in range(40):  # copies of two large photos: slow enough to kill part way
        shutil.copyfile(sources[i % 3 % 2], images / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    rows = expected_rows(sources)
    expected = np.stack([rows[i % 3 % 2] for i in range(40)]).reshape(20, 2, *IMAGE_SHAPE)
    out = tmp_path / "prep"
    args = [sys.executable, str(REPO / "convmixer_preprocess.py"), "--image-path", str(images),
            "--prep-image", str(out), "--batch-size", "2", "--workers", "1"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("input_*.bin")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = sorted(out.glob("input_*.bin"))
    assert 1 <= len(done) < 20, "the run should be killed part way"
    for path in done:
        assert np.array_equal(read_batch(path, 2), expected[int(path.stem.split("_")[1])])

    result = run_script(*args[1:])
    assert result.returncode == 0, result.stderr
    assert f"resuming: {len(done)} of 20 batch files already present, skipped" in result.stdout
    assert not list(out.glob(".input_*"))
    for k in range(20):
        assert np.array_equal(read_batch(out / f"input_{k:05d}.bin", 2), expected[k]), k
    assert read_manifest(out).complete

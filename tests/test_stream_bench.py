"""convmixer_suite.bench.stream_bench: its inputs (the pooled-colour classifier, the repeated photos), one local engine
run in a process of its own, the table and the command line."""
import json

import numpy as np
import pytest

from convmixer_suite.runtimes.registry import create_backend
from convmixer_suite.guide.scoring import read_labels
from convmixer_suite.bench.stream_bench import pooled_colour_onnx, repeated_photos, run_engine, table
from convmixer_suite.guide.transform import list_images
from convmixer_suite.util.errors import UserError


def test_the_pooled_colour_model_scores_channel_means_at_any_batch_size(tmp_path):
    model = pooled_colour_onnx(tmp_path / "pooled.onnx")
    backend = create_backend("onnxruntime", model, threads=1)
    assert backend.batch_size is None
    batch = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    flat = np.broadcast_to(batch.mean(axis=(2, 3))[:, :, None, None], batch.shape).astype(np.float32)
    logits = backend.predict(batch)
    assert logits.shape == (3, 1000)
    np.testing.assert_allclose(logits, backend.predict(flat), rtol=1e-4, atol=1e-4)  # only the means count
    assert pooled_colour_onnx(tmp_path / "again.onnx").read_bytes() == model.read_bytes()  # reproducible


def test_repeated_photos_link_a_few_pictures_under_many_labelled_names(tmp_path):
    images, labels = repeated_photos(tmp_path / "set", 12, distinct=5)
    paths, _ = list_images(images)
    assert len(paths) == 12 and len({p.stat().st_ino for p in paths}) == 5
    assert len(read_labels(labels)) == 12
    assert repeated_photos(tmp_path / "set", 12, distinct=5) == (images, labels)  # kept when complete


def test_the_table_has_a_row_per_engine_and_a_line_per_replica():
    row = {"engine": "ray", "wall_s": 10.0, "end_to_end_images_per_s": 50.0, "first_batch_s": 2.0,
           "after_first_batch_images_per_s": 60.0, "driver_peak_rss_mb": 400.0,
           "replicas": {"pid 7 on node ab": {"images": 500, "end_to_end_images_per_s": 50.0}}}
    assert table([row]).splitlines()[2:] == ["| ray | 10.0 | 50.0 | 2.00 | 60.0 | 400 |",
                                             "ray replica pid 7 on node ab: 500 images, 50.0 images/s"]


def test_the_command_line_refuses_a_file_as_work_folder_and_a_zero_count(tmp_path):
    from conftest import run_script
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    refused = run_script("convmixer-stream-bench", "--work", a_file, "--num-images", 10, "--engines", "local")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [f"stream_bench.py: error: --work {a_file}: cannot be used as a "
                                                   f"folder (File exists)"]
    zero = run_script("convmixer-stream-bench", "--work", tmp_path / "w", "--num-images", 0)
    assert zero.returncode == 2 and "--num-images: must be at least 1" in zero.stderr
    assert not (tmp_path / "w").exists()


def test_the_streaming_command_imports_no_torch_to_count_in_its_peak_rss():
    import sys
    from conftest import run_script
    result = run_script(sys.executable, "-c", "import sys, convmixer_suite.commands.stream_eval; "
                                              "print('torch' in sys.modules)")
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_an_engine_run_reads_its_figures_from_the_files_the_command_writes(tmp_path):
    """The local engine on a few repeated photos, in a process of its own: figures from its stream summary (its
    peak memory among them), the accuracy JSON it wrote."""
    images, labels = repeated_photos(tmp_path / "set", 6, distinct=2)
    model = pooled_colour_onnx(tmp_path / "pooled.onnx")
    row = run_engine("local", model, images, labels, tmp_path / "out", 4, ("--workers", 1, "--threads", 1))
    assert row["engine"] == "local" and row["wall_s"] > 0
    assert 10 < row["driver_peak_rss_mb"] < 100_000
    assert row["end_to_end_images_per_s"] > 0 and row["first_batch_s"] > 0
    assert sum(share["images"] for share in row["replicas"].values()) == 6
    assert row["accuracy_json"] == (tmp_path / "out" / "local.json").read_text()
    assert json.loads(row["accuracy_json"])["value"][0] == {"key": "Number of images", "value": "6"}


def test_a_failed_engine_run_stops_with_its_last_error_line(tmp_path):
    images, labels = repeated_photos(tmp_path / "set", 2, distinct=1)
    with pytest.raises(UserError, match=r"--engine local: the streaming evaluation failed \(exit 2: "
                                        r"stream_eval.py: error: .*missing.onnx"):
        run_engine("local", tmp_path / "missing.onnx", images, labels, tmp_path / "out", 1)

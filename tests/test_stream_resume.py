"""Per-image records of the streaming evaluation: resume after kill -9, refusal of another run's records,
--fresh, and convmixer-compare-runs over two runs' records."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO, SLOW_BS as BS, SLOW_PHOTOS as NUM_PHOTOS, export_small_onnx, run_script, seeded_model
from conftest import slow_stream_args
from convmixer_suite.run.records import read_records, records_folder

def image_results(result_json) -> list:
    """A run's per-image records without the batch timings, which differ from run to run."""
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in read_records(result_json)]


def stream_eval(model, images, labels, out, *extra):
    return run_script(*slow_stream_args(model, images, labels, out, *extra))


def kill_after_records(argv, records, min_parts=3, timeout_s=120, env=None):
    """Start ``argv`` (a repo script and its arguments), kill -9 it once ``records`` holds ``min_parts`` part
    files, and return how many parts there were when it died."""
    cmd = [sys.executable, str(REPO / argv[0])] + [str(a) for a in argv[1:]]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if records.is_dir() and len(list(records.glob("part-*.jsonl"))) >= min_parts:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed half way"
    return len(list(records.glob("part-*.jsonl")))


def test_killed_local_run_resumes_with_fewer_batches_and_the_same_json(tmp_path, slow_run_inputs, slow_local_run):
    model, images, labels = slow_run_inputs
    whole, whole_json = slow_local_run
    assert whole.returncode == 0, whole.stderr
    expected = whole_json.read_text()
    assert whole.stdout.count("Inference time:") == NUM_PHOTOS // BS

    out = tmp_path / "killed"
    records = records_folder(out / f"result_bs{BS}.json")
    kill_after_records(slow_stream_args(model, images, labels, out, "--record-every", 0), records)
    assert not (out / f"result_bs{BS}.json").exists()
    resumed = stream_eval(model, images, labels, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert 0 < resumed.stdout.count("Inference time:") < NUM_PHOTOS // BS
    assert (out / f"result_bs{BS}.json").read_text() == expected
    assert image_results(out / f"result_bs{BS}.json") == image_results(whole_json)

    again = stream_eval(model, images, labels, out)  # everything recorded: nothing runs, same JSON
    assert again.returncode == 0 and again.stdout.count("Inference time:") == 0
    assert (out / f"result_bs{BS}.json").read_text() == expected
    averages = [line for line in again.stdout.splitlines() if line.startswith("Inference average time")]
    assert averages == [line for line in resumed.stdout.splitlines() if line.startswith("Inference average time")]
    log = tmp_path / "again.log"  # the averages over every recorded batch: test/parse.py still reads an fps
    log.write_text(again.stdout)
    parsed = run_script("test/parse.py", "--result-file", log, "--batch-size", BS)
    assert parsed.returncode == 0 and parsed.stdout.startswith(f"bs{BS} fps:")


def rule_labels(images, path):
    path.write_text("".join(f"{p.name} {i * 37 % 1000}\n" for i, p in enumerate(sorted(images.iterdir()))))
    return path


def test_records_of_another_run_are_refused_and_fresh_starts_over(tmp_path, small_onnx, photo_folder):
    model, images, labels = small_onnx, photo_folder, rule_labels(photo_folder, tmp_path / "val_label.txt")
    other_model = export_small_onnx(seeded_model(seed=1), tmp_path / "other.onnx")
    out = tmp_path / "out"
    assert stream_eval(model, images, labels, out).returncode == 0
    for other in ([other_model], [model, "--precision", "int8"], [model, "--batch-size", 3], [model, "--device", "cuda:0"]):
        refused = stream_eval(other[0], images, labels, out, *other[1:])  # the later --batch-size wins
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "different run" in refused.stderr
        assert "--fresh" in refused.stderr and "Traceback" not in refused.stderr
    (images / "ILSVRC2012_val_00000001.JPEG").unlink()  # another image set
    changed = stream_eval(model, images, labels, out)
    assert changed.returncode == 2 and "images differs" in changed.stderr
    fresh = stream_eval(model, images, labels, out, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.count("Inference time:") == 3  # six photos left
    assert '"Number of images", "value": "6"' in (out / f"result_bs{BS}.json").read_text()


def test_compare_runs_lists_the_images_whose_top1_changed(tmp_path, small_onnx, photo_folder):
    """Run B's records are run A's with two top-1 classes changed, as a less exact precision would."""
    model, images, labels = small_onnx, photo_folder, rule_labels(photo_folder, tmp_path / "val_label.txt")
    result_a = tmp_path / "a" / f"result_bs{BS}.json"
    assert stream_eval(model, images, labels, tmp_path / "a").returncode == 0
    records_b = tmp_path / "b" / f"result_bs{BS}_records"
    shutil.copytree(records_folder(result_a), records_b)
    changed = {}
    for part in sorted(records_b.glob("part-*.jsonl")):
        rows = [json.loads(line) for line in part.read_text().splitlines()]
        for r in rows:
            if len(changed) < 2 and r["row"] == 1:
                r["classes"][0], r["classes"][1] = r["classes"][1], r["classes"][0]
                changed[r["image"]] = (r["classes"][1], r["classes"][0])
        part.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_script("convmixer-compare-runs", result_a, records_b)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("ILSVRC2012_val_")}
    assert set(listed) == set(changed)
    for image, (class_a, class_b) in changed.items():
        assert f"A {class_a} (" in listed[image] and f"B {class_b} (" in listed[image]
    assert "2 images changed their top-1; top-1 agreement: 71.43% (5 of 7 images)" in result.stdout
    same = run_script("convmixer-compare-runs", result_a, result_a)
    assert same.returncode == 0 and "top-1 agreement: 100.00%" in same.stdout
    missing = run_script("convmixer-compare-runs", tmp_path / "a", records_b)
    assert missing.returncode == 2 and "no per-image records" in missing.stderr
    corrupt = sorted(records_b.glob("part-*.jsonl"))[0]
    corrupt.write_text(corrupt.read_text()[:-20])  # a part cut short (as by a full disk)
    broken = run_script("convmixer-compare-runs", result_a, records_b)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.strip().count("\n") == 0 and f"{corrupt}: unreadable record file" in broken.stderr

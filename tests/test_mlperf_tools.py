"""MLPerf Inference's own tools on what convmixer-benchmark leaves (mlcommons/inference,
vision/classification_and_detection/tools/accuracy-imagenet.py, as FORMATS.md describes it): the script is
re-enacted here step by step, as tests/test_guide_scripts.py re-enacts the ModelZoo scripts, and must give the
top-1 that the guide's convmixer_eval_acc.py gives on the same images."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from test_benchmark import eval_acc_top1, labels_partly_as_predicted

pytest.importorskip("mlperf_loadgen")


# ---- mlcommons/inference tools/accuracy-imagenet.py, re-enacted ----------------------------------------------

def mlperf_accuracy_imagenet(mlperf_accuracy_file, imagenet_val_file, dtype=np.float32) -> str:
    """What ``accuracy-imagenet.py --mlperf-accuracy-file F --imagenet-val-file V`` prints: val_map's line i is
    (image, label) of qsl_idx i; each logged entry once per qsl_idx; the class is ``int(data[0])`` of the
    entry's hex bytes read as ``dtype``; ``accuracy={:.3f}%, good={}, total={}`` over the distinct samples."""
    imagenet = []
    for line in Path(imagenet_val_file).read_text().splitlines():
        cols = line.strip().split()
        imagenet.append((cols[0], int(cols[1])))
    seen, good = set(), 0
    for entry in json.loads(Path(mlperf_accuracy_file).read_text()):
        idx = entry["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        _, label = imagenet[idx]
        found = int(np.frombuffer(bytes.fromhex(entry["data"]), dtype)[0])
        good += label == found
    return "accuracy={:.3f}%, good={}, total={}".format(100.0 * good / len(seen), good, len(seen))


def test_mlperf_accuracy_script_scores_our_folder_to_our_top1(tmp_path, small_checkpoint, small_model, photo_folder):
    """``--quick --scenarios SingleStream --loadgen-accuracy --images DIR --labels FILE``: the folder it leaves
    holds MLPerf's layout, and MLPerf's accuracy script scores the full log beside val_map.txt to our top-1."""
    labels, paths = labels_partly_as_predicted(small_model, photo_folder, tmp_path / "val_label.txt", 3)
    out = tmp_path / "bench"
    result = run_script("convmixer-benchmark", "--quick", "--out", out, "--checkpoint", small_checkpoint,
                        "--configs", "onnxruntime-fp32", "--batch-sizes", 1, "--scenarios", "SingleStream",
                        "--loadgen-accuracy", "--images", photo_folder, "--labels", labels, "--no-ceiling",
                        "--prep-images", 4, "--stream-images", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "benchmark.json").read_text())
    expected = eval_acc_top1(tmp_path, next((out / "work").glob("convmixer_*.onnx")), photo_folder, labels)
    assert 0 < expected < 100
    accuracy = {r["config"]: r for r in report["loadgen_accuracy"]}
    assert set(accuracy) == {"torch-fp32", "onnxruntime-fp32"}
    for config, run in accuracy.items():
        folder, full = Path(run["log_dir"]), Path(run["full_log_dir"])
        system = folder.parts[-4]
        scenario_dir = out / "open" / "ConvMixerSuite" / "results" / system / report["arch"] / "SingleStream"
        assert folder == scenario_dir / "accuracy" and full == out / "accuracy_logs" / system / report["arch"] / \
            "SingleStream"
        val_map = (full / "val_map.txt").read_text()
        assert val_map == "".join(f"{p.name} {line.split()[1]}\n" for p, line in
                                  zip(paths, labels.read_text().splitlines()))  # QSL order
        line = mlperf_accuracy_imagenet(full / "mlperf_log_accuracy.json", full / "val_map.txt")
        assert float(re.match(r"accuracy=([\d.]+)%", line).group(1)) == pytest.approx(expected, abs=0.01)
        digest = hashlib.sha256((full / "mlperf_log_accuracy.json").read_bytes()).hexdigest()
        assert (folder / "accuracy.txt").read_text() == f"{line}\nhash={digest}\n"
        assert not run["log_truncated"]  # 7 images: a log under the checker's size stays whole
        assert (folder / "mlperf_log_accuracy.json").read_bytes() == (full / "mlperf_log_accuracy.json").read_bytes()
        assert run["accuracy_line"] == line and f"| {line} |" in (out / "benchmark.md").read_text()
        for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
            assert (folder / name).is_file()
        performance = folder.parent / "performance" / "run_1"
        assert "Result is : VALID" in (performance / "mlperf_log_summary.txt").read_text()
        user_conf = scenario_dir / "user.conf"
        conf = dict(re.findall(r"^\S+\.SingleStream\.(\w+) = (\S+)$", user_conf.read_text(), re.MULTILINE))
        detail = (performance / "mlperf_log_detail.txt").read_text()
        assert f'"key": "effective_min_duration_ms", "value": {conf["min_duration"]},' in detail  # our user.conf
        assert '"key": "requested_qsl_rng_seed", "value": 2085463073848966840,' in detail  # mlperf.conf's seed
        assert '"is_error": true' not in detail

"""test/parse.py on logs and JSON files written as msame, ais_bench and convmixer_eval_acc.py write them."""
import json

import pytest

from conftest import run_script
from convmixer_suite.guide.scoring import write_accuracy_json

MSAME_FOLDER_LOG = """[INFO] acl init success
[INFO] open device 0 success
[INFO] create context success
[INFO] create stream success
[INFO] get run mode success
[INFO] load model ./convmixer_1536_20_bs4.om success
[INFO] create model description success
[INFO] get input dynamic gear count success
[INFO] create model output success
[INFO] start to process file:./prep_image_bs4/input_00000.bin
[INFO] model execute success
Inference time: 62.183ms
[INFO] get max dynamic batch size success
[INFO] output data success
[INFO] start to process file:./prep_image_bs4/input_00001.bin
[INFO] model execute success
Inference time: 59.87ms
[INFO] get max dynamic batch size success
[INFO] output data success
Inference average time : 61.03 ms
Inference average time without first time: 59.87 ms
[INFO] destroy model input success
[INFO] unload model success, model Id is 1
[INFO] Execute sample success
[INFO] end to destroy stream
[INFO] end to destroy context
[INFO] end to reset device is 0
[INFO] end to finalize acl
"""

MSAME_SINGLE_FILE_LOG = """[INFO] start to process file:./prep_image_bs1/input_00000.bin
[INFO] model execute success
Inference time: 14.942ms
[INFO] model execute success
Inference time: 14.9ms
Inference average time: 14.921000 ms
[INFO] unload model success, model Id is 1
"""

AIS_BENCH_LOG = """[INFO] acl init success
[INFO] open device 0 success
[INFO] load model convmixer_1536_20_bs4.om success
[INFO] create model description success
[INFO] try get model batchsize:4
[INFO] warm up 1 done
Inference array Processing: 100%|██████████| 2/2 [00:00<00:00, 10.73it/s]
[INFO] -----------------Performance Summary------------------
[INFO] NPU_compute_time (ms): min = 59.8, max = 62.1, mean = 60.95, median = 60.95, percentile(99%) = 62.08
[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(60.95): 65.62756357670222
[INFO] ------------------------------------------------------
[INFO] unload model success, model Id is 1
"""


def parse(path, *extra, cwd=None):
    return run_script("test/parse.py", "--result-file", path, *extra, **({"cwd": cwd} if cwd else {}))


def assert_prints(result, *lines):
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == list(lines)


def test_msame_folder_log_uses_without_first_time(tmp_path):
    log = tmp_path / "msame_bs4.txt"
    log.write_text(MSAME_FOLDER_LOG)
    assert_prints(parse(log, "--batch-size", "4", cwd=tmp_path), f"bs4 fps:{4 * 1000 / 59.87:.3f}")


def test_msame_single_file_log_uses_average(tmp_path):
    log = tmp_path / "msame_bs1.txt"
    log.write_text(MSAME_SINGLE_FILE_LOG)
    assert_prints(parse(log, "--batch-size", "1"), f"bs1 fps:{1000 / 14.921:.3f}")


def test_msame_one_batch_folder_log_falls_back_to_average(tmp_path):
    """With one input file msame prints 0.00 for the 'without first time' average."""
    log = tmp_path / "msame_bs1.txt"
    log.write_text("Inference time: 15.2ms\nInference average time : 15.20 ms\n"
                   "Inference average time without first time: 0.00 ms\n")
    assert_prints(parse(log), f"bs1 fps:{1000 / 15.20:.3f}")


def test_ais_bench_log_and_summaries(tmp_path):
    log = tmp_path / "ais_bench_bs4.txt"
    log.write_text(AIS_BENCH_LOG)
    assert_prints(parse(log, "--batch-size", "4"), "bs4 fps:65.628")
    summary = tmp_path / "2023_01_03-10_11_12_summary.json"
    summary.write_text(json.dumps({"NPU_compute_time": {"min": 59.8, "max": 62.1, "mean": 60.95, "median": 60.95,
                                                        "percentile(99%)": 62.08, "count": 2},
                                   "throughput": 65.62756357670222, "args": [], "filesinfo": {}}))
    assert_prints(parse(summary, "--batch-size", "4"), "bs4 fps:65.628")
    ours = tmp_path / "summary_bs1.json"
    ours.write_text(json.dumps({"latency_ms": {"mean": 300.0}, "throughput_images_per_s": 3.3333333}))
    assert_prints(parse(ours), "bs1 fps:3.333")


def test_accuracy_json(tmp_path):
    path = write_accuracy_json(tmp_path / "result_bs1.json", 50000, 1000, [0.81354, 0.9, 0.93, 0.945, 0.95512])
    assert_prints(parse(path, "--batch-size", "1"),
                  "top1:81.35%", "top2:90.0%", "top3:93.0%", "top4:94.5%", "top5:95.51%")


@pytest.mark.parametrize("content", ["", "hello\n", "Inference time: 12.0ms\n", '{"title": "x"}', "[1, 2]",
                                     AIS_BENCH_LOG.replace("mean(4)", "mean(8)")])
def test_anything_else_is_refused(tmp_path, content):
    path = tmp_path / "result.txt"
    path.write_text(content)
    result = parse(path, "--batch-size", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parse.py: error: ") and str(path) in lines[0]


def test_missing_file_is_refused(tmp_path):
    result = parse(tmp_path / "nope.txt")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "nope.txt" in result.stderr

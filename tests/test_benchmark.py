"""test/benchmark.py --quick: it runs, and its numbers agree with each other (never a speed assertion)."""
import importlib.util
import json

import pytest

from conftest import run_script


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_script("test/benchmark.py", "--quick", "--out", out, "--num-calib", 4, "--prep-images", 6)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.loads((out / "benchmark.json").read_text()), result


def test_latencies_throughputs_and_ratios_are_consistent(quick_report):
    _, report, _ = quick_report
    rows = report["results"]
    measured = {r["config"] for r in rows}
    assert measured | set(report["skipped"]) == set(report["settings"]["configs"])
    assert {"torch-fp32", "onnxruntime-fp32", "onnxruntime-int8"} <= measured
    assert len(rows) == len(measured) * len(report["settings"]["batch_sizes"])
    reference = {r["batch_size"]: r for r in rows if r["config"] == "torch-fp32"}
    for r in rows:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["iterations"] == report["settings"]["iters"]
        assert r["throughput_images_per_s"] == pytest.approx(r["batch_size"] * 1000 / lat["mean"])
        assert r["per_image_ms"] == pytest.approx(lat["mean"] / r["batch_size"])
        ref = reference[r["batch_size"]]["throughput_images_per_s"]
        assert r["ratio_to_torch_fp32"] == pytest.approx(r["throughput_images_per_s"] / ref)


def test_fidelity_is_measured_against_pytorch(quick_report):
    _, report, _ = quick_report
    fid = report["fidelity"]
    assert fid["torch-fp32"]["max_abs_diff"] == 0 and fid["torch-fp32"]["top1_agreement"] == 1
    assert fid["onnxruntime-fp32"]["max_rel_diff"] < 1e-4
    int8 = fid["onnxruntime-int8"]
    assert 0 < int8["max_rel_diff"] < 0.2
    assert int8["max_rel_diff"] == pytest.approx(int8["max_abs_diff"] / int8["max_abs_logit"])


def test_pipeline_checks_and_targets_are_reported(quick_report):
    _, report, _ = quick_report
    stream = report["streaming"]
    assert stream["num_images"] == 4 and stream["config"] in report["fidelity"]
    assert stream["ratio_to_n_times_batch_latency"] == pytest.approx(stream["pipeline_s"] /
                                                                     stream["n_times_batch_latency_s"])
    prep = report["preprocessing"]
    assert prep["speedup_2_vs_1"] == pytest.approx(prep["images_per_s_2_workers"] / prep["images_per_s_1_worker"])
    assert all(isinstance(t["met"], bool) and t["measured"] for t in report["targets"])
    assert len(report["targets"]) >= 4


def test_markdown_table_and_plot(quick_report):
    out, report, result = quick_report
    table = (out / "benchmark.md").read_text()
    lines = table.splitlines()
    for r in report["results"]:
        cells = f" | {r['batch_size']} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p90']:.1f} | "
        assert sum(line.startswith(f"| {r['config']}") and cells in line for line in lines) == 1
    if report["openvino_default_precision"] == "bfloat16" and "openvino-bf16" not in report["skipped"]:
        assert "| openvino-bf16 (OpenVINO's default here) | 1 |" in table
    assert report["machine"]["cpu"] in table and table in result.stdout
    if importlib.util.find_spec("matplotlib"):
        assert (out / "benchmark_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "no plot written" in result.stdout


def test_unknown_configuration_is_refused_in_one_line(tmp_path):
    result = run_script("test/benchmark.py", "--quick", "--configs", "tensorflow-fp32", "--out", tmp_path)
    assert result.returncode == 2 and "tensorflow-fp32" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_rerun_reuses_the_cached_models_and_calibration(quick_report):
    out, first, _ = quick_report
    work_files = sorted(p.name for p in (out / "work").rglob("*") if p.is_file())
    result = run_script("test/benchmark.py", "--quick", "--out", out, "--num-calib", 4, "--prep-images", 6,
                        "--configs", "torch-fp32,onnxruntime-int8", "--batch-sizes", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "quantizing" not in result.stdout + result.stderr       # the int8 model came from the cache
    assert sorted(p.name for p in (out / "work").rglob("*") if p.is_file()) == work_files
    assert [r["config"] for r in json.loads((out / "benchmark.json").read_text())["results"]] == \
        ["torch-fp32", "onnxruntime-int8"]


def test_engines_check_runs_local_and_ray_on_the_same_images(tmp_path):
    """--engines-check: three configurations, the same JSON from each, figures that agree with each other.
    The Ray runs start Ray on this machine, as --engine ray does without --ray-address."""
    pytest.importorskip("ray")
    result = run_script("test/benchmark.py", "--quick", "--engines-check", "--engines-rounds", 1,
                        "--engines-images", 3, "--out", tmp_path, env={"RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "engines_check.json").read_text())
    assert report["same_json"] and set(report["configs"]) == {"local", "ray x1", "ray x2"}
    for name, figures in report["configs"].items():
        assert figures["num_images"] == 3
        assert figures["end_to_end_images_per_s"] == pytest.approx(3 / figures["wall_s"])
        assert 0 < figures["first_batch_s"] < figures["pipeline_s"] < figures["wall_s"]
    assert len(report["configs"]["ray x2"]["replicas_last_run"]) in (1, 2)  # a replica may start after the last batch
    assert "| ray x2 | 3 |" in (tmp_path / "engines_check.md").read_text()

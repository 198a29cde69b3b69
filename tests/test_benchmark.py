"""convmixer-benchmark --quick: it runs, and its numbers agree with each other (never a speed assertion)."""
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_script


def labels_partly_as_predicted(model, folder, path, right: int) -> tuple:
    """val_label.txt of ``folder``: the first ``right`` images labelled as ``model`` predicts them, the rest with
    its third choice, so a top-1 is neither 0 nor 1. Returns (its path, the images in list order)."""
    import torch
    from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch
    paths, _ = list_images(folder)
    with torch.no_grad():
        logits = model(torch.from_numpy(load_batch(paths, EvalTransform())[0])).numpy()
    path.write_text("".join(f"{p.name} {int(row.argmax()) if i < right else int(row.argsort()[-3])}\n"
                            for i, (p, row) in enumerate(zip(paths, logits))))
    return path, paths


def eval_acc_top1(tmp_path, onnx, images, labels) -> float:
    """The guide's flow on the same images: preprocess -> infer -> convmixer_eval_acc.py; its Top1 in %."""
    prep, outputs = tmp_path / "prep", tmp_path / "outputs"
    run_script("convmixer_preprocess.py", "--image-path", images, "--prep-image", prep, "--batch-size", 1, check=True)
    run_script("convmixer_infer.py", "--model", onnx, "--input", prep, "--output", outputs, check=True)
    run_script("convmixer_eval_acc.py", "--folder-davinci-target", outputs, "--annotation-file-path", labels,
               "--result-json-path", tmp_path, "--json-file-name", "acc.json", "--batch-size", 1, check=True)
    top1 = json.loads((tmp_path / "acc.json").read_text())
    return float(next(v["value"] for v in top1["value"] if v["key"] == "Top1 accuracy").rstrip("%"))


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_script("convmixer-benchmark", "--quick", "--out", out, "--num-calib", 4, "--prep-images", 6,
                        "--scenarios", "SingleStream,Offline", "--profile", "openvino-int8")
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
    assert "targets" not in report  # figures only: no targets judged


def test_a_configuration_beyond_the_fidelity_limit_is_marked_and_never_fastest(quick_report):
    out, report, _ = quick_report
    limit = report["settings"]["max_logit_error"]
    assert limit == 0.02
    for name, f in report["fidelity"].items():
        assert f["within_limit"] == (f["max_rel_diff"] <= limit)
    within = [r for r in report["results"] if r["batch_size"] == 1 and report["fidelity"][r["config"]]["within_limit"]]
    fastest = max(within, key=lambda r: r["throughput_images_per_s"])["config"]
    assert report["fastest_within_limit_batch_1"] == fastest
    assert f"Fastest at batch 1 within the limit: {fastest}." in (out / "benchmark.md").read_text()
    assert report["streaming"]["config"] == fastest  # --stream-config auto takes it


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
    html = (out / "report.html").read_text()
    assert str(out / "report.html") in result.stdout and html.count("<tr><td>") >= len(report["results"])
    if importlib.util.find_spec("matplotlib"):
        assert (out / "benchmark_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "no plot written" in result.stdout


def test_unknown_configuration_is_refused_in_one_line(tmp_path):
    result = run_script("convmixer-benchmark", "--quick", "--configs", "tensorflow-fp32", "--out", tmp_path)
    assert result.returncode == 2 and "tensorflow-fp32" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_loadgen_singlestream_and_offline_are_valid_with_their_logs(quick_report):
    out, report, _ = quick_report
    runs = {(r["config"], r["scenario"]): r for r in report["loadgen"]}
    measured = {r["config"] for r in report["results"]}
    assert set(runs) == {(c, s) for c in measured for s in ("SingleStream", "Offline")}
    table = (out / "benchmark.md").read_text()
    for (config, scenario), run in runs.items():
        assert run["result"] == "VALID", run
        folder = Path(run["log_dir"])  # MLPerf's layout: results/<system>/<model>/<scenario>/performance/run_1
        assert folder.parts[-6:] == ("results", folder.parts[-5], report["arch"], scenario, "performance", "run_1")
        gaps = report["submission"]["checker_will_reject"][f"{folder.parts[-5]}/{report['arch']}/{scenario}"]
        assert any(gap.startswith("no accuracy run") for gap in gaps)  # said, not hidden
        assert folder.parts[-5].endswith("_" + config) and folder.is_relative_to(out)
        summary = (folder / "mlperf_log_summary.txt").read_text()
        assert (folder / "mlperf_log_detail.txt").is_file() and "Result is : VALID" in summary
        assert f"Scenario : {scenario}" in summary
        for key, value in run["figures"].items():  # exactly as LoadGen printed them
            assert f"{key} : {value}" in summary or f"{key}: {value}" in summary
            assert f"{key}: {value}" in table
        figure = "90.0th percentile latency (ns)" if scenario == "SingleStream" else "Samples per second"
        assert float(run["figures"][figure]) > 0
    best_batch = {c: max((r for r in report["results"] if r["config"] == c),
                         key=lambda r: r["throughput_images_per_s"])["batch_size"] for c in measured}
    assert all(runs[(c, "Offline")]["settings"]["batch_size"] == best_batch[c] for c in measured)


def test_the_cpu_is_named_with_its_flags(quick_report):
    _, report, _ = quick_report
    machine = report["machine"]
    assert machine["vendor"] and machine["family"] and machine["model"]
    assert machine["logical_cpus"] >= 1 and isinstance(machine["flags"], list)
    assert all(flag in machine["cpu"] for flag in machine["flags"])
    assert all(r["load_average_1min_before"] >= 0 and r["load_average_1min_after"] >= 0 for r in report["results"])


def test_loadgen_server_bisection_and_accuracy_run(tmp_path, small_checkpoint, small_model, photo_folder):
    """Server: each bisection step's logs are kept, then the final run at the QPS found; AccuracyOnly: the logged
    classes give the top-1 that preprocess -> infer -> convmixer_eval_acc.py gives on the same photos.
    ``--submission-layout none``: LoadGen's logs alone in loadgen/, no submission around them."""
    labels, paths = labels_partly_as_predicted(small_model, photo_folder, tmp_path / "val_label.txt", 4)
    out = tmp_path / "bench"
    result = run_script("convmixer-benchmark", "--quick", "--out", out, "--checkpoint", small_checkpoint,
                        "--configs", "onnxruntime-fp32", "--batch-sizes", 1, "--scenarios", "Server",
                        "--server-steps", 2, "--server-queries", 100, "--loadgen-accuracy", "--images", photo_folder,
                        "--labels", labels, "--submission-layout", "none",
                        "--prep-images", 4, "--stream-images", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "benchmark.json").read_text())
    assert report["submission"] is None and not (out / "open").exists() and "MLPerf open" not in result.stdout
    for run in report["loadgen"]:
        assert run["scenario"] == "Server" and 1 <= len(run["bisection"]) <= 2
        folder = Path(run["log_dir"])
        assert folder.relative_to(out / "loadgen").parts[1:] == (report["arch"], "Server", "performance", "run_1")
        for step in run["bisection"]:  # every step's logs kept
            assert f"Result is : {step['result']}" in (Path(step["log_dir"]) / "mlperf_log_summary.txt").read_text()
        assert run["chosen_step_dir"] in [step["log_dir"] for step in run["bisection"]]
        finals = run["final_attempts"]  # at the QPS the bisection found, then halved while the bound fails
        assert finals[0]["target_qps"] == pytest.approx(next(s["target_qps"] for s in run["bisection"]
                                                             if s["log_dir"] == run["chosen_step_dir"]))
        assert [f["target_qps"] for f in finals] == pytest.approx([finals[0]["target_qps"] / 2 ** i
                                                                   for i in range(len(finals))])
        assert all(f["performance_constraints_satisfied"] != "Yes" for f in finals[:-1]) and len(finals) <= 3
        assert run["settings"]["server_target_qps"] == pytest.approx(finals[-1]["target_qps"])
        assert all(Path(f["log_dir"], "mlperf_log_summary.txt").is_file() for f in finals)
        assert Path(finals[-1]["log_dir"]) == folder
        assert run["settings"]["min_query_count"] == 100  # --server-queries (1024 by default: early stopping)
        assert "Scenario : Server" in (folder / "mlperf_log_summary.txt").read_text()
        assert run["latency_bound_met"] == any(s["performance_constraints_satisfied"] == "Yes"
                                               for s in run["bisection"])
    expected = eval_acc_top1(tmp_path, next((out / "work").glob("convmixer_*.onnx")), photo_folder, labels)
    accuracy = {r["config"]: r for r in report["loadgen_accuracy"]}
    assert set(accuracy) == {"torch-fp32", "onnxruntime-fp32"}
    for run in accuracy.values():
        assert run["num_images"] == len(paths) and run["scenario"] == "Server"
        assert 100 * run["top1"] == pytest.approx(expected, abs=0.005)
        assert (Path(run["log_dir"]) / "mlperf_log_accuracy.json").is_file()
        assert Path(run["log_dir"]).parts[-2:] == ("Server", "accuracy")


def test_each_onnx_configuration_has_its_ceiling_timed_in_the_same_run(quick_report):
    out, report, _ = quick_report
    ceiling = {(r["config"], r["batch_size"]): r for r in report["ceiling"]["results"]}
    table = (out / "benchmark.md").read_text()
    assert "efficiency" in table and report["ceiling"]["what"] in table
    for r in report["results"]:
        if r["config"] == "torch-fp32":  # no ceiling model in PyTorch eager
            assert r["efficiency"] is None
            continue
        c = ceiling[("ceiling:" + r["config"], r["batch_size"])]
        assert c["iterations"] == r["iterations"] and c["precision"] == r["precision"]
        assert r["ceiling_ms"] == c["latency_ms"]["p50"]
        assert r["efficiency"] == pytest.approx(c["latency_ms"]["p50"] / r["latency_ms"]["p50"])
        assert f"| {r['efficiency']:.2f} |" in next(line for line in table.splitlines()
                                                   if line.startswith(f"| {r['config']}") and
                                                   f" | {r['batch_size']} | {r['latency_ms']['p50']:.1f} | " in line)


def test_the_profile_sums_the_runtimes_own_counters(quick_report):
    out, report, _ = quick_report
    if "openvino-int8" in report["skipped"]:
        pytest.skip("not installed: openvino, nncf")
    profile = report["profile"]
    assert profile["config"] == "openvino-int8" and profile["nodes"]
    kinds = {n["node_type"] for n in profile["nodes"]}
    assert {"Convolution", "GroupConvolution"} <= kinds  # pointwise and depthwise layers, as OpenVINO names them
    assert all(n["ms"] >= 0 and n["nodes"] >= 1 for n in profile["nodes"])
    assert "Layer-by-layer profile of openvino-int8" in (out / "benchmark.md").read_text()


def test_a_rerun_reuses_the_cached_models_and_a_tight_fidelity_limit_marks_int8(quick_report, tmp_path):
    """One rerun checks two things: the int8 model and calibration come from the cache, and a tight
    --max-logit-error marks the int8 configuration (never called fastest). It reruns in a copy of the quick
    report's folder, whose files the other tests read, so it may run in any order."""
    out = Path(shutil.copytree(quick_report[0], tmp_path / "bench"))
    work_files = sorted(p.name for p in (out / "work").rglob("*") if p.is_file())
    result = run_script("convmixer-benchmark", "--quick", "--out", out, "--num-calib", 4, "--prep-images", 6,
                        "--configs", "torch-fp32,onnxruntime-int8", "--batch-sizes", "1", "--max-logit-error", "1e-9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "quantizing" not in result.stdout + result.stderr       # the int8 model came from the cache
    assert sorted(p.name for p in (out / "work").rglob("*") if p.is_file()) == work_files
    report = json.loads((out / "benchmark.json").read_text())
    assert [r["config"] for r in report["results"]] == ["torch-fp32", "onnxruntime-int8"]

    assert not report["fidelity"]["onnxruntime-int8"]["within_limit"]
    assert report["fastest_within_limit_batch_1"] == "torch-fp32"
    assert "| no: never called fastest |" in (out / "benchmark.md").read_text()
    rows = list(csv.DictReader(next(out.glob("benchmark-*.csv")).open()))
    assert [(r["config"], r["batch_size"]) for r in rows] == [("torch-fp32", "1"), ("onnxruntime-int8", "1")]
    assert float(rows[1]["p50_ms"]) == pytest.approx(report["results"][1]["latency_ms"]["p50"])


def test_engines_check_runs_local_and_ray_on_the_same_images(tmp_path):
    """--engines-check: three configurations, the same JSON from each, figures that agree with each other.
    The Ray runs start Ray on this machine, as --engine ray does without --ray-address."""
    pytest.importorskip("ray")
    result = run_script("convmixer-benchmark", "--quick", "--engines-check", "--engines-rounds", 1,
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

"""The benchmark's modules on their own: bench.loadgen (LoadGen's summary read as printed, the Server
bisection's logic, user.conf read through FromConfig, the accuracy QSL's lazy loading; mlperf_layout: the
accuracy log read back and cut, accuracy.txt, val_map.txt, the submission folders; mlperf_submission: what the
checker will reject), cpu_info (/proc/cpuinfo parsed), ceiling (the pointwise model,
the work counted, the efficiency math), profiling (ONNX Runtime's profiler summed per node type), loading
(a configuration that fails is failed, with its line, one this machine cannot run skipped) and the reports of
both."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from convmixer_suite.bench import loadgen as lh
from convmixer_suite.util.errors import UserError
from convmixer_suite.precision.cpu_info import describe_cpu, parse_cpuinfo

SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Server
Completed samples per second    : 92.77
Result is : INVALID
  Performance constraints satisfied : Yes
  Early stopping satisfied: NO
 * Processed 21 queries.
99.00 percentile latency (ns)   : 3817549
"""


def test_summary_values_are_kept_as_printed(tmp_path):
    path = tmp_path / "mlperf_log_summary.txt"
    path.write_text(SUMMARY)
    summary = lh.read_summary(path)
    assert summary["Result is"] == "INVALID" and summary["Completed samples per second"] == "92.77"
    assert summary["Performance constraints satisfied"] == "Yes"
    assert summary["99.00 percentile latency (ns)"] == "3817549"
    assert not any(key.startswith("*") for key in summary)
    with pytest.raises(UserError, match="no summary"):
        lh.read_summary(tmp_path / "missing.txt")


@pytest.mark.parametrize("capacity", [0.5, 3.3, 7.9, 12.0])
def test_server_bisection_finds_the_highest_passing_qps(capacity):
    def run_at(qps, step):
        ok = "Yes" if qps <= capacity else "NO"
        return SimpleNamespace(summary={lh.PERFORMANCE_CONSTRAINTS: ok}, qps=qps)
    best, runs = lh.find_server_qps(run_at, 0.0, 10.0, 6)
    tried = [r.qps for r in runs]
    if capacity >= 10:
        assert tried == [10.0] and best.qps == 10.0
        return
    assert len(runs) == 6
    passing = [q for q in tried if q <= capacity]
    assert (best.qps if best else None) == (max(passing) if passing else None)
    assert capacity - 10.0 / 2 ** 5 <= (best.qps if best else 0.0) <= capacity


def test_accuracy_log_is_read_back_by_sample_index_and_scored_into_accuracy_txt(tmp_path):
    import hashlib
    from convmixer_suite.bench import mlperf_layout
    classes = [7, 3, 999]
    entries = [{"seq_id": i, "qsl_idx": idx, "data": np.float32(classes[idx]).tobytes().hex().upper()}
               for i, idx in enumerate([2, 0, 1, 2])]  # sample 2 logged twice: counted once
    (tmp_path / "mlperf_log_accuracy.json").write_text(json.dumps(entries))
    np.testing.assert_array_equal(mlperf_layout.classes_by_sample(tmp_path, 3), classes)
    scored = mlperf_layout.write_accuracy_txt(tmp_path, [7, 4, 999])
    digest = hashlib.sha256((tmp_path / "mlperf_log_accuracy.json").read_bytes()).hexdigest()
    assert (tmp_path / "accuracy.txt").read_text() == f"accuracy=66.667%, good=2, total=3\nhash={digest}\n"
    assert scored["good"] == 2 and scored["total"] == 3
    with pytest.raises(UserError, match=r"samples \[3\]"):
        mlperf_layout.classes_by_sample(tmp_path, 4)


def test_val_map_and_the_submission_layout(tmp_path):
    from convmixer_suite.bench import mlperf_layout as ml
    path = ml.write_val_map(tmp_path, ["b.JPEG", "a.JPEG"], [5, 0])
    assert path.name == "val_map.txt" and path.read_text() == "b.JPEG 5\na.JPEG 0\n"
    system = ml.system_name(ml.cpu_hardware_name({"model_name": "AMD EPYC 9R45", "family": "26", "model": "2",
                                                  "logical_cpus": 2}), "openvino-int8")
    assert system == "AMD_EPYC_9R45_f26m2_2cpus_openvino-int8"
    assert ml.results_dir("r", system, "convmixer_1536_20", "Offline") == \
        Path("r") / system / "convmixer_1536_20/Offline/performance/run_1"
    assert ml.results_dir("r", system, "m", "Offline", accuracy=True) == Path("r") / system / "m/Offline/accuracy"
    assert ml.scenario_dir("r", system, "m", "Server") == Path("r") / system / "m/Server"


def test_settings_come_from_mlperf_conf_and_our_user_conf(tmp_path):
    """Our user.conf's keys reach LoadGen's TestSettings through FromConfig; LoadGen's built-in mlperf.conf
    fills the rest (its Server p99 percentile), and reading them again in the same process changes nothing."""
    lg = pytest.importorskip("mlperf_loadgen")
    settings = lh.LoadGenSettings(min_duration_ms=300, min_query_count=64, server_queries=500)
    server = lh.scenario_conf(settings, "Server", latency_ms=20.0, throughput_qps=40.0, server_qps=30.0)
    conf = lh.write_user_conf(tmp_path / "Server" / "user.conf", "m", "Server", server)
    assert "m.Server.target_qps = 30.0\n" in conf.read_text()
    for _ in range(2):
        ts = lh.test_settings(lg, "Server", conf, "m")
        assert ts.server_target_latency_ns == 60_000_000 and ts.server_target_qps == 30.0
        assert ts.server_target_latency_percentile == pytest.approx(0.99)  # mlperf.conf's
        assert ts.min_duration_ms == 300 and ts.min_query_count == 500  # the final run: --server-queries
    step = lh.scenario_conf(settings, "Server", latency_ms=20.0, throughput_qps=40.0, server_qps=30.0, final=False)
    assert step["min_query_count"] == 64 and step["min_duration"] == settings.bisection_min_duration_ms
    offline = lh.write_user_conf(tmp_path / "o.conf", "m", "Offline", lh.scenario_conf(
        settings, "Offline", latency_ms=20.0, throughput_qps=40.0))
    single = lh.write_user_conf(tmp_path / "s.conf", "m", "SingleStream", lh.scenario_conf(
        settings, "SingleStream", latency_ms=20.0, throughput_qps=40.0))
    assert lh.test_settings(lg, "Offline", offline, "m").offline_expected_qps == pytest.approx(60.0)
    ts = lh.test_settings(lg, "SingleStream", single, "m", accuracy=True)
    assert ts.single_stream_expected_latency_ns == pytest.approx(20e6 / 1.5, abs=1)
    assert ts.mode == lg.TestMode.AccuracyOnly
    conf = lh.write_user_conf(tmp_path / "sub.conf", "m", "Offline", lh.scenario_conf(
        lh.LoadGenSettings(**lh.SUBMISSION), "Offline", latency_ms=20.0, throughput_qps=40.0))
    ts = lh.test_settings(lg, "Offline", conf, "m")
    assert ts.min_duration_ms == 600_000  # mlperf.conf's minimum, left as it is
    assert ts.performance_sample_count_override == 1024 and ts.min_query_count == 24_576
    (tmp_path / "bad.conf").write_text("m.Offline.target_qps = fast\n")
    with pytest.raises(UserError, match="bad.conf"):
        lh.test_settings(lg, "Offline", tmp_path / "bad.conf", "m")


def test_cpuinfo_is_parsed_with_the_speed_flags():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
            "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_int8\n"
            "processor\t: 1\nvendor_id\t: Other\n")
    info = parse_cpuinfo(text)
    assert (info["vendor"], info["family"], info["model"]) == ("GenuineIntel", "6", "143")
    assert info["flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_int8", "amx_tile"]
    line = describe_cpu({**info, "logical_cpus": 2})
    assert "family 6, model 143" in line and "amx_tile" in line and "no AMX" not in line
    assert "no AMX" in describe_cpu({**parse_cpuinfo("flags : avx2"), "logical_cpus": 2})


def test_ceiling_model_is_the_pointwise_chain_and_its_work_is_counted(tmp_path):
    import onnxruntime as ort
    from convmixer_net import ARCHS, ArchSpec
    from convmixer_suite.bench import ceiling
    full = ARCHS["convmixer_1536_20"]
    assert ceiling.ceiling_input_shape(full) == (1536, 32, 32)
    assert ceiling.pointwise_macs(full) == 20 * 1536 * 1536 * 1024  # ~48.3 GMAC
    assert 50.5e9 < ceiling.model_macs(full) < 51.5e9               # ~102 GFLOP an image with the depthwise
    assert ceiling.gops(10**9, 2, 4.0) == pytest.approx(1000.0)      # 2 GOP per GMAC, 2 images in 4 ms
    spec = ArchSpec("convmixer_8_3_ks3_p28", 8, 3, 3, 28)
    path = ceiling.build_pointwise_onnx(spec, tmp_path / "pw.onnx")
    import onnx
    from onnx import numpy_helper
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    x = ceiling.ceiling_input(spec, 2)
    assert x.shape == (2, 8, 8, 8)
    expected = x
    for i in range(3):
        w, b = weights[f"pw{i}.weight"][:, :, 0, 0], weights[f"pw{i}.bias"]
        expected = np.einsum("oc,nchw->nohw", w, expected) + b[None, :, None, None]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_efficiency_is_ceiling_time_over_model_time():
    from convmixer_net import ARCHS
    from convmixer_suite.bench.ceiling import efficiency_rows, model_macs
    spec = ARCHS["convmixer_1536_20"]
    rows = [{"config": "a", "batch_size": 1, "latency_ms": {"p50": 100.0, "mean": 180.0}},
            {"config": "b", "batch_size": 4, "latency_ms": {"p50": 400.0, "mean": 400.0}}]
    efficiency_rows(rows, {("a", 1): 55.0}, spec)
    assert rows[0]["efficiency"] == pytest.approx(0.55) and rows[0]["ceiling_ms"] == 55.0
    assert rows[0]["model_gops"] == pytest.approx(2 * model_macs(spec) / 100e6)
    assert rows[1]["efficiency"] is None and rows[1]["ceiling_gops"] is None


def test_onnxruntime_profile_counts_every_conv_of_the_model(small_onnx):
    from convmixer_suite.runtimes.registry import create_backend
    from convmixer_suite.bench.profiling import profile_backend, profile_markdown
    backend = create_backend("onnxruntime", small_onnx)
    rows = profile_backend(backend, np.zeros((1, 3, 224, 224), np.float32), runs=2)
    assert rows and all(r["ms"] >= 0 for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert any(r["node_type"] in ("Conv", "FusedConv") for r in rows)
    table = profile_markdown("onnxruntime-fp32", rows)
    assert table[0].startswith("Layer-by-layer profile of onnxruntime-fp32") and len(table) == 4 + min(len(rows), 15)


def test_server_final_run_is_repeated_at_half_the_qps_while_its_bound_fails(tmp_path):
    """A short bisection step can pass by luck: the long final run that fails its bound is kept under
    bisection/ and repeated at half the QPS, at most FINAL_ATTEMPTS runs in all."""
    harness = lh.Harness(tmp_path, tmp_path / "results", "cpu", "m", lh.LoadGenSettings(), log=lambda line: None)
    verdicts = iter(["NO", "NO", "Yes"])
    tried = []

    def fake_run(backend, images, config, scenario, conf, batch_size, accuracy=False, folder=None):
        log_dir = tmp_path / "results" / "run_1"
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "mlperf_log_summary.txt").write_text(f"qps {conf['target_qps']}\n")
        tried.append(conf["target_qps"])
        assert conf["min_query_count"] == 1024  # --server-queries: the final run is the long one
        return lh.ScenarioResult(config, scenario, str(log_dir), "VALID", {},
                                 {lh.PERFORMANCE_CONSTRAINTS: next(verdicts)}, {"server_target_qps": conf["target_qps"]})
    harness.run = fake_run
    final, attempts = harness.server_final(None, None, "c", 10.0, 100.0, 80.0, tmp_path / "steps")
    assert tried == [80.0, 40.0, 20.0] and final is attempts[-1]
    assert [Path(a.log_dir) for a in attempts] == [tmp_path / "steps/final_0", tmp_path / "steps/final_1",
                                                    tmp_path / "results/run_1"]
    assert (tmp_path / "steps/final_1/mlperf_log_summary.txt").read_text() == "qps 40.0\n"
    verdicts = iter(["NO"] * 5)
    tried.clear()
    final, attempts = harness.server_final(None, None, "c", 10.0, 100.0, 80.0, tmp_path / "steps2")
    assert len(attempts) == lh.FINAL_ATTEMPTS == 3 and final.summary[lh.PERFORMANCE_CONSTRAINTS] == "NO"


def test_a_performance_sample_count_above_the_images_repeats_them():
    """MLPerf's 1024 performance samples from the images held: sample i is image i mod N."""
    made = {}
    fake_lg = SimpleNamespace(ConstructQSL=lambda total, performance, load, unload: made.update(
        total=total, performance=performance) or "qsl")
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
    qsl = lh.QuerySampleLibrary(fake_lg, images, performance_sample_count=1024)
    assert made == {"total": 1024, "performance": 1024}
    assert qsl.batch([0, 4, 1023]).ravel().tolist() == [0.0, 1.0, 0.0]
    lh.QuerySampleLibrary(fake_lg, images)
    assert made == {"total": 3, "performance": 3}


def test_a_run_that_outran_its_expectation_is_rerun_with_a_faster_one(tmp_path):
    """LoadGen generates the queries from the expected rate: a run that left its minimum duration unfilled is
    run again expecting LoadGen's measured rate or twice the last expectation, at most SIZING_RUNS times."""
    harness = lh.Harness(tmp_path, tmp_path / "results", "cpu", "m", lh.LoadGenSettings(), log=lambda line: None)
    expected, filled = [], iter(["NO", "NO", "Yes"])

    def fake_run(backend, images, config, scenario, conf, batch_size, accuracy=False, folder=None):
        expected.append(conf["target_qps"])
        return lh.ScenarioResult(config, scenario, "x", "VALID", {"Samples per second": "30.0"},
                                 {"Min duration satisfied": next(filled)}, {})
    harness.run = fake_run
    run = harness.sized(None, None, "c", "Offline", 10.0, 10.0, 2)
    assert expected == pytest.approx([15.0, 45.0, 90.0])  # 1.5x of 10, of max(30, 20), of max(30, 60)
    assert run.settings["runs_to_fill_min_duration"] == 3


def test_without_loadgen_the_scenarios_say_how_to_install_it(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # an import of it now fails
    with pytest.raises(UserError, match=r"--scenarios \(MLPerf LoadGen\).*requirements-bench.txt"):
        lh.import_loadgen()


def test_submission_durations_leave_mlperf_conf_its_600_s():
    """--submission-durations: no minimum duration or query count of ours (mlperf.conf's 600 s stand),
    MLPerf's 1024 performance samples and Offline's 24576; --quick's short runs otherwise."""
    from convmixer_suite.bench.benchmark import loadgen_settings
    from convmixer_suite.commands import benchmark as cli
    quick = loadgen_settings(cli.parse_args(["--quick", "--out", "o"]))
    assert (quick.min_duration_ms, quick.min_query_count, quick.server_queries) == (200, 64, 1024)
    assert quick.performance_sample_count == 1024  # MLPerf's: the QSL repeats the images it holds
    full = loadgen_settings(cli.parse_args(["--quick", "--out", "o", "--submission-durations", "--server-steps", "4"]))
    assert full.min_duration_ms is None and full.min_query_count is None and full.server_queries is None
    assert (full.performance_sample_count, full.offline_min_query_count) == (1024, 24_576)
    assert (full.bisection_min_duration_ms, full.server_bisection_steps) == (200, 4)


def test_an_accuracy_log_over_the_checkers_size_is_cut_as_truncate_accuracy_log_cuts_it(tmp_path):
    """Its first and last 4096 bytes around a ``...`` line, once accuracy.txt holds the full log's hash; a log
    within the checker's 10240 bytes stays whole."""
    import hashlib
    from convmixer_suite.bench import mlperf_layout as ml
    entries = [{"seq_id": i, "qsl_idx": i, "data": np.float32(i % 1000).tobytes().hex().upper()} for i in range(400)]
    log = tmp_path / "accuracy" / ml.ACCURACY_LOG
    log.parent.mkdir()
    log.write_text(json.dumps(entries))
    whole = log.read_bytes()
    assert len(whole) > ml.MAX_ACCURACY_LOG_BYTES
    kept = ml.keep_full_accuracy_log(log.parent, tmp_path / "full")
    ml.write_accuracy_txt(log.parent, [i % 1000 for i in range(400)])
    assert ml.truncate_accuracy_log(log.parent)
    assert log.read_bytes() == whole[:4096] + b"\n\n...\n\n" + whole[-4096:] and kept.read_bytes() == whole
    assert (log.parent / "accuracy.txt").read_text().endswith(f"hash={hashlib.sha256(whole).hexdigest()}\n")
    log.write_text(json.dumps(entries[:3]))
    assert not ml.truncate_accuracy_log(log.parent) and log.read_text() == json.dumps(entries[:3])


def test_the_accuracy_qsl_preprocesses_only_the_set_loadgen_loads(tmp_path):
    """A whole dataset folder never sits in memory: images are decoded when LoadGen loads their set and dropped
    when it unloads it; an image that cannot be read is kept as the run's error, not raised into LoadGen."""
    from convmixer_suite.guide.samples import write_sample_dataset
    made = {}
    fake_lg = SimpleNamespace(ConstructQSL=lambda total, performance, load, unload: made.update(
        total=total, performance=performance, load=load, unload=unload) or "qsl")
    paths = sorted((write_sample_dataset(tmp_path / "data", 3) / "val").iterdir())
    qsl = lh.AccuracyQSL(fake_lg, lh.AccuracySet(paths, [p.name for p in paths], [0, 1, 2]))
    assert (made["total"], made["performance"]) == (3, 3) and qsl.loaded == {}
    made["load"]([2, 0])
    assert sorted(qsl.loaded) == [0, 2] and qsl.batch([2, 0]).shape == (2, 3, 224, 224)
    made["unload"]([2, 0])
    assert qsl.loaded == {}
    paths[1].write_bytes(b"not a picture")
    made["load"]([1])
    assert qsl.loaded == {} and isinstance(qsl.error, UserError) and paths[1].name in str(qsl.error)


def test_a_run_says_what_the_checker_will_reject():
    from convmixer_suite.bench import mlperf_submission as sub
    short = {"settings": {"min_duration_ms": 200}}
    full = {"settings": {"min_duration_ms": 600_000}}
    assert [g.split(":")[0] for g in sub.checker_gaps(short, None)] == ["SHORT RUN", "no accuracy run"]
    assert sub.checker_gaps(full, {"num_images": 50_000}) == []
    assert "covered 16 images" in sub.checker_gaps(full, {"num_images": 16})[0]
    with pytest.raises(UserError, match="--system-name 'a b'"):
        sub.check_name("a b", "--system-name")


# ---- loading: failed or skipped ------------------------------------------------------------------------------

def broken_runtime(name):
    try:
        raise ValueError("kernel table corrupt")
    except ValueError as exc:
        raise RuntimeError(f"{name}: the runtime could not start\nmore detail") from exc


def raising(exc):
    def load():
        raise exc
    return load


def test_a_configuration_that_fails_is_failed_with_its_line_and_one_that_cannot_run_here_skipped(small_onnx,
                                                                                                  monkeypatch):
    import sys
    from convmixer_suite.bench.loading import load_each
    from convmixer_suite.runtimes.registry import create_backend
    from convmixer_suite.util.errors import SettingError
    monkeypatch.setitem(sys.modules, "openvino", None)  # an optional library missing: `import openvino` fails
    loaders = {"onnxruntime-fp32": lambda: create_backend("onnxruntime", small_onnx),
               "openvino-fp32": lambda: create_backend("openvino", small_onnx),
               "torch-cuda": raising(SettingError("device", "cuda:0: no GPU", unavailable=True)),
               "broken": lambda: broken_runtime("broken"),
               "not-a-model": raising(UserError("x.onnx: not a model"))}
    lines = []
    loaded, skipped, failed = load_each(loaders, lambda name: loaders[name](), lines.append)
    assert list(loaded) == ["onnxruntime-fp32"]
    assert list(skipped) == ["openvino-fp32", "torch-cuda"] and skipped["openvino-fp32"].endswith("pip install openvino")
    assert failed == {"broken": "RuntimeError: broken: the runtime could not start", "not-a-model": "x.onnx: not a model"}
    assert "    FAILED: RuntimeError: broken: the runtime could not start" in lines
    assert "    skipped: device cuda:0: no GPU" in lines
    with pytest.raises(RuntimeError) as raised:  # the reference: nothing is measured without it
        load_each(loaders, lambda name: loaders[name](), lines.append, required=("broken",))
    assert isinstance(raised.value.__cause__, ValueError)
    with pytest.raises(RuntimeError):
        load_each(["broken"], broken_runtime, lines.append, raise_failures=True)
    assert load_each(["torch-cuda"], lambda name: loaders[name](), lines.append, raise_failures=True)[1]


def test_the_reports_show_a_failed_configuration_as_failed_and_a_skipped_one_as_skipped(tmp_path):
    import csv
    from conftest import REPO
    from convmixer_suite.bench.html_report import benchmark_html
    from convmixer_suite.bench.markdown_report import markdown, write_report
    report = json.loads(next(REPO.glob("docs/results/*/benchmark.json")).read_text())
    report.update(failed={"openvino-int8": "RuntimeError: the runtime could not start"},
                  skipped={"openvino-bf16": "the openvino backend needs the Python package 'openvino'"})
    report["ceiling"]["failed"] = {"onnxruntime-int8": "RuntimeError: no kernel"}
    text = markdown(report)
    assert "\nFAILED: openvino-int8 (RuntimeError: the runtime could not start)\n" in text
    assert "\nFAILED: ceiling of onnxruntime-int8 (RuntimeError: no kernel)\n" in text
    assert "\nSkipped: openvino-bf16 (the openvino backend needs the Python package 'openvino')\n" in text
    write_report(report, tmp_path)
    rows = list(csv.DictReader(next(tmp_path.glob("benchmark-*.csv")).open()))
    assert [r["status"] for r in rows] == ["measured"] * len(report["results"]) + ["failed", "skipped"]
    assert (rows[-2]["config"], rows[-2]["reason"], rows[-2]["p50_ms"]) == \
        ("openvino-int8", "RuntimeError: the runtime could not start", "")
    html = benchmark_html(report)
    assert '<p class="bad" id="failed">FAILED: openvino-int8 (RuntimeError: the runtime could not start)</p>' in html
    assert '<p class="bad" id="ceiling-of-failed">FAILED: ceiling of onnxruntime-int8' in html
    assert '<p class="note" id="skipped">Skipped: openvino-bf16' in html

"""MLPerf LoadGen scenarios (SingleStream, Offline, Server) over any backend of convmixer_suite.backends.

As in MLPerf Inference's vision reference: a query sample library (QSL) holds preprocessed images in memory;
one system under test (SUT) class serves every runtime through the backend interface (``predict(batch)``).
LoadGen (``mlcommons-loadgen``, requirements-bench.txt) issues the queries, times them and judges the run; its
own logs are kept in the folder given (``mlperf_log_summary.txt``, ``mlperf_log_detail.txt``, and for an
accuracy run ``mlperf_log_accuracy.json``), and the report carries its ``Result is`` line and figures exactly
as LoadGen printed them.

- SingleStream: one image per query, the next when the last returns; the figure is the 90th percentile latency.
- Offline: every sample in one query; the SUT runs them in batches of the runtime's best batch size.
- Server: Poisson arrivals at a target QPS; ``find_server_qps`` bisects the target QPS over LoadGen runs for
  the highest whose 99th percentile latency stays under a bound.
- AccuracyOnly: every image once; the SUT returns each image's logits (float32), which ``accuracy_logits``
  reads back from LoadGen's accuracy log for scoring.
"""
import array
import json
import queue
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convmixer_suite.cli import UserError

SCENARIOS = ("SingleStream", "Offline", "Server")
INSTALL_HINT = "pip install -r requirements-bench.txt  (mlcommons-loadgen)"
# Figures of LoadGen's summary that the report carries, by scenario, as LoadGen names them.
SUMMARY_FIGURES = {"SingleStream": ("90.0th percentile latency (ns)",),
                   "Offline": ("Samples per second",),
                   "Server": ("Scheduled samples per second", "Completed samples per second",
                              "99.00 percentile latency (ns)")}
SUMMARY_LINE_RE = re.compile(r"^\s*([^:*][^:]*?)\s*:\s*(.+?)\s*$")
PERFORMANCE_CONSTRAINTS = "Performance constraints satisfied"


def import_loadgen():
    try:
        import mlperf_loadgen
    except ImportError:
        raise UserError(f"--scenarios needs MLPerf LoadGen (Python module mlperf_loadgen): {INSTALL_HINT}") from None
    return mlperf_loadgen


@dataclass
class LoadGenSettings:
    """How long LoadGen runs each scenario: at least ``min_duration_ms`` and ``min_query_count`` queries.
    SingleStream's early-stopping estimate needs at least 64 queries for a VALID result."""
    min_duration_ms: int = 10_000
    min_query_count: int = 64
    server_latency_ms: "float | None" = None  # None: 3x the configuration's own batch-1 latency
    server_bisection_steps: int = 5


@dataclass
class ScenarioResult:
    """One LoadGen run: its log folder, ``Result is`` line and figures as printed, and the summary's lines."""
    config: str
    scenario: str
    log_dir: str
    result: str
    figures: dict
    summary: dict = field(repr=False)
    settings: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.result == "VALID"

    def as_dict(self) -> dict:
        return {"config": self.config, "scenario": self.scenario, "log_dir": self.log_dir, "result": self.result,
                "figures": self.figures, "settings": self.settings,
                "performance_constraints_satisfied": self.summary.get(PERFORMANCE_CONSTRAINTS)}


class QuerySampleLibrary:
    """Preprocessed [N,3,224,224] float32 images held in memory; LoadGen picks samples by index."""

    def __init__(self, lg, images: np.ndarray):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        count = len(self.images)
        self.handle = lg.ConstructQSL(count, count, self._load, self._unload)

    def _load(self, indices):  # already in memory
        pass

    def _unload(self, indices):
        pass


class BackendSUT:
    """The system under test: one worker thread runs each LoadGen query on ``backend`` in chunks of
    ``batch_size`` and answers every sample with its logits (float32 bytes, logged in accuracy mode)."""

    def __init__(self, lg, backend, qsl: QuerySampleLibrary, batch_size: int = 1):
        self.lg, self.backend, self.qsl, self.batch_size = lg, backend, qsl, max(1, int(batch_size))
        self.queue = queue.Queue()
        self.error = None
        self.worker = threading.Thread(target=self._serve, daemon=True)
        self.worker.start()
        self.handle = lg.ConstructSUT(self.queue.put, self._flush)

    def _flush(self):
        pass

    def _serve(self):
        while True:
            samples = self.queue.get()
            if samples is None:
                return
            for start in range(0, len(samples), self.batch_size):
                self._answer(samples[start:start + self.batch_size])

    def _answer(self, samples):
        try:
            logits = self.backend.predict(self.qsl.images[[s.index for s in samples]])
            rows = [array.array("B", np.ascontiguousarray(row, dtype=np.float32).tobytes()) for row in logits]
        except Exception as exc:  # kept and re-raised after the run: LoadGen would wait forever otherwise
            self.error = self.error or exc
            rows = [array.array("B") for _ in samples]
        responses = [self.lg.QuerySampleResponse(s.id, *row.buffer_info()) for s, row in zip(samples, rows)]
        self.lg.QuerySamplesComplete(responses)

    def close(self):
        self.queue.put(None)
        self.worker.join()
        self.lg.DestroySUT(self.handle)


def test_settings(lg, scenario, settings: LoadGenSettings, *, latency_ms, throughput_qps, accuracy=False,
                  server_qps=None):
    """LoadGen's TestSettings for one run. ``latency_ms`` and ``throughput_qps`` are the runtime's measured
    batch-1 latency and best throughput: LoadGen sizes the run from them (SingleStream pre-generates
    min duration / expected latency queries, Offline issues expected QPS x min duration samples), so both
    expectations are set 1.5x fast, to be sure to fill the minimum duration."""
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
    ts.min_duration_ms = int(settings.min_duration_ms)
    ts.min_query_count = int(settings.min_query_count)
    ts.single_stream_expected_latency_ns = max(1, int(latency_ms / 1.5 * 1e6))
    ts.offline_expected_qps = max(throughput_qps * 1.5, 1e-3)
    if scenario == "Server":
        ts.server_target_qps = server_qps
        ts.server_target_latency_ns = int(server_latency_ms(settings, latency_ms) * 1e6)
    return ts


def server_latency_ms(settings: LoadGenSettings, latency_ms: float) -> float:
    return settings.server_latency_ms or 3.0 * latency_ms


def run_scenario(backend, images, config, scenario, log_dir, settings: LoadGenSettings, *, latency_ms,
                 throughput_qps, batch_size=1, accuracy=False, server_qps=None) -> ScenarioResult:
    """One LoadGen run of ``scenario`` on ``backend``; logs into ``log_dir`` (emptied first)."""
    if scenario not in SCENARIOS:
        raise UserError(f"--scenarios: unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    lg = import_loadgen()
    log_dir = Path(log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)  # never mix a previous run's logs into this one's
    log_dir.mkdir(parents=True)
    ts = test_settings(lg, scenario, settings, latency_ms=latency_ms, throughput_qps=throughput_qps,
                       accuracy=accuracy, server_qps=server_qps)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    qsl = QuerySampleLibrary(lg, images)
    sut = BackendSUT(lg, backend, qsl, batch_size if scenario == "Offline" else 1)
    try:
        lg.StartTestWithLogSettings(sut.handle, qsl.handle, ts, log)
    finally:
        sut.close()
        lg.DestroyQSL(qsl.handle)
    if sut.error is not None:
        raise sut.error
    summary = read_summary(log_dir / "mlperf_log_summary.txt")
    result = summary.get("Result is", "no result line")
    figures = {key: summary[key] for key in SUMMARY_FIGURES[scenario] if key in summary}
    run_settings = {"mode": "AccuracyOnly" if accuracy else "PerformanceOnly", "batch_size": sut.batch_size,
                    "min_duration_ms": ts.min_duration_ms, "min_query_count": ts.min_query_count,
                    "expected_latency_ms": latency_ms, "expected_qps": throughput_qps}
    if scenario == "Server":
        run_settings.update(server_target_qps=server_qps,
                            server_target_latency_ms=server_latency_ms(settings, latency_ms))
    return ScenarioResult(config, scenario, str(log_dir), result, figures, summary, run_settings)


def run_sized(backend, images, config, scenario, log_dir, settings, *, latency_ms, throughput_qps,
              batch_size=1, accuracy=False) -> ScenarioResult:
    """``run_scenario``, once more if LoadGen found its minimum duration unmet because the runtime ran
    faster than expected (LoadGen generates the queries up front from the expectation): then with LoadGen's
    own measured latency and rate as the expectation."""
    run = run_scenario(backend, images, config, scenario, log_dir, settings, latency_ms=latency_ms,
                       throughput_qps=throughput_qps, batch_size=batch_size, accuracy=accuracy)
    if not accuracy and run.summary.get("Min duration satisfied") == "NO":
        if scenario == "Offline":
            throughput_qps = float(run.figures["Samples per second"])
        else:
            latency_ms = float(run.summary["Mean latency (ns)"]) / 1e6
        run = run_scenario(backend, images, config, scenario, log_dir, settings, latency_ms=latency_ms,
                           throughput_qps=throughput_qps, batch_size=batch_size)
        run.settings["rerun_after_duration_unmet"] = True
    return run


def read_summary(path: Path) -> dict:
    """``key : value`` lines of mlperf_log_summary.txt, values as the strings LoadGen printed (first wins)."""
    if not path.is_file():
        raise UserError(f"{path}: LoadGen wrote no summary")
    summary = {}
    for line in path.read_text().splitlines():
        match = SUMMARY_LINE_RE.match(line)
        if match and not line.startswith("="):
            summary.setdefault(match.group(1), match.group(2))
    return summary


def find_server_qps(run_at, low_qps: float, high_qps: float, steps: int):
    """Bisect the Server target QPS between ``low_qps`` and ``high_qps``: ``run_at(qps, step)`` runs LoadGen
    and returns its ScenarioResult; a run passes when LoadGen reports its latency constraint satisfied.
    Returns (the passing run at the highest QPS tried, or None; every run in order)."""
    best, runs = None, []
    for step in range(steps):
        qps = high_qps if step == 0 else (low_qps + high_qps) / 2  # first try the Offline rate itself
        run = run_at(qps, step)
        runs.append(run)
        if run.summary.get(PERFORMANCE_CONSTRAINTS) == "Yes":
            best, low_qps = run, qps
            if step == 0:
                break
        else:
            high_qps = qps
    return best, runs


def accuracy_logits(log_dir, num_samples: int) -> np.ndarray:
    """[num_samples, classes] logits read back from LoadGen's mlperf_log_accuracy.json, by QSL index."""
    path = Path(log_dir) / "mlperf_log_accuracy.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read LoadGen's accuracy log ({exc})") from None
    rows = {}
    for entry in entries:
        rows[int(entry["qsl_idx"])] = np.frombuffer(bytes.fromhex(entry["data"]), dtype=np.float32)
    missing = sorted(set(range(num_samples)) - set(rows))
    if missing:
        raise UserError(f"{path}: no output logged for samples {missing[:5]}")
    return np.stack([rows[i] for i in range(num_samples)])


def measured_rates(rows, config):
    """(batch-1 latency ms, best batch size, its images/s) of ``config`` from the benchmark's timing rows."""
    own = [r for r in rows if r["config"] == config]
    best = max(own, key=lambda r: r["throughput_images_per_s"])
    one = next((r for r in own if r["batch_size"] == 1), best)
    return one["latency_ms"]["mean"] / one["batch_size"], best["batch_size"], best["throughput_images_per_s"]


def run_scenarios(backends: dict, images, rows, out_dir, scenarios, settings: LoadGenSettings, log=print) -> list:
    """Every scenario for every configuration of ``backends`` ({config: backend}), logs under
    ``out_dir/<config>/<scenario>/`` (Server's bisection steps in ``step_N`` subfolders, the chosen step's
    logs copied up). ``rows`` are the benchmark's timing rows: they set LoadGen's expectations and Offline's
    batch size (the runtime's best). Returns the results as dicts."""
    results = []
    for config, backend in backends.items():
        latency_ms, best_batch, best_qps = measured_rates(rows, config)
        for scenario in scenarios:
            folder = Path(out_dir) / config / scenario
            log(f"==> LoadGen {scenario} on {config}" + (f" (batch {best_batch})" if scenario == "Offline" else ""))
            if scenario == "Server":
                result = server_result(backend, images, config, folder, settings, latency_ms, best_qps, log)
            else:
                run = run_sized(backend, images, config, scenario, folder, settings, latency_ms=latency_ms,
                                throughput_qps=best_qps, batch_size=best_batch)
                if scenario == "Offline":  # LoadGen's own rate bounds the Server bisection
                    best_qps = float(run.figures.get("Samples per second", best_qps))
                result = run.as_dict()
            log(f"    Result is : {result['result']}; " + "; ".join(f"{k}: {v}" for k, v in result["figures"].items()))
            results.append(result)
    return results


def server_result(backend, images, config, folder, settings, latency_ms, best_qps, log) -> dict:
    """Server's bisection for ``config``: the chosen run's result, with every step's target QPS and verdict."""
    def run_at(qps, step):
        run = run_scenario(backend, images, config, "Server", folder / f"step_{step}", settings,
                           latency_ms=latency_ms, throughput_qps=best_qps, server_qps=qps)
        log(f"    step {step}: target {qps:.4g} QPS, latency constraint satisfied: "
            f"{run.summary.get(PERFORMANCE_CONSTRAINTS)}")
        return run
    if folder.exists():
        shutil.rmtree(folder)
    best, runs = find_server_qps(run_at, 0.0, best_qps, settings.server_bisection_steps)
    chosen = best or runs[-1]
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copy2(Path(chosen.log_dir) / name, folder / name)
    result = chosen.as_dict()
    result.update(log_dir=str(folder), chosen_step_dir=chosen.log_dir, latency_bound_met=best is not None,
                  bisection=[{"target_qps": r.settings["server_target_qps"], "result": r.result,
                              "performance_constraints_satisfied": r.summary.get(PERFORMANCE_CONSTRAINTS),
                              "figures": r.figures} for r in runs])
    return result

"""MLPerf LoadGen scenarios (SingleStream, Offline, Server) over any backend of convmixer_suite.runtimes.

As in MLPerf Inference's vision reference: a query sample library (QSL) holds preprocessed images in memory;
one system under test (SUT) class serves every runtime through the backend interface (``predict(batch)``) and
answers each sample as the reference does, with one float32: the predicted class index. LoadGen
(``mlcommons-loadgen``, requirements-bench.txt) issues the queries, times them and judges the run. Its settings
come as MLPerf's harnesses take them: LoadGen's built-in ``mlperf.conf`` plus a ``user.conf`` of ours, through
``TestSettings.FromConfig``; its logs land in MLPerf's submission layout (convmixer_suite.bench.mlperf_layout), and the
report carries its ``Result is`` line and figures exactly as LoadGen printed them.

- SingleStream: one image per query, the next when the last returns; the figure is the 90th percentile latency.
- Offline: every sample in one query; the SUT runs them in batches of the runtime's best batch size.
- Server: Poisson arrivals at a target QPS; ``find_server_qps`` bisects the target QPS over short LoadGen runs
  (each step's logs kept) for the highest whose 99th percentile latency stays under a bound, then one run at
  that QPS long enough (``server_queries``) for LoadGen's early-stopping estimate (at half the QPS again, up to
  ``FINAL_ATTEMPTS`` runs, should the bound fail over the longer run).
- AccuracyOnly: every image of the accuracy set once (a whole dataset folder: the images are preprocessed as
  LoadGen loads each set of samples, never all at once); ``accuracy.txt`` beside the log, which is then cut to
  the checker's size where it is larger, the full log kept with ``val_map.txt`` outside the submission.
"""
import array
import math
import queue
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convmixer_suite.bench import mlperf_layout as layout
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.libraries import import_library
from convmixer_suite.util.files import write_text_atomic

SCENARIOS = ("SingleStream", "Offline", "Server")
INSTALL_HINT = "pip install -r requirements-bench.txt  (mlcommons-loadgen)"
# Figures of LoadGen's summary that the report carries, by scenario, as LoadGen names them.
SUMMARY_FIGURES = {"SingleStream": ("90.0th percentile latency (ns)",),
                   "Offline": ("Samples per second",),
                   "Server": ("Scheduled samples per second", "Completed samples per second",
                              "99.00 percentile latency (ns)")}
SUMMARY_LINE_RE = re.compile(r"^\s*([^:*][^:]*?)\s*:\s*(.+?)\s*$")
PERFORMANCE_CONSTRAINTS = "Performance constraints satisfied"
EXPECTATION_MARGIN = 1.5  # expected latency and QPS set this much fast: LoadGen sizes its runs from them
SIZING_RUNS = 3  # runs at most until LoadGen's minimum duration is filled (the expectation raised each time)
FINAL_ATTEMPTS = 3  # Server: final runs at most, halving the QPS after a failed latency constraint


def import_loadgen():
    return import_library("mlperf_loadgen", "--scenarios (MLPerf LoadGen)", INSTALL_HINT)


@dataclass(frozen=True)
class LoadGenSettings:
    """What our user.conf sets over mlperf.conf; None leaves mlperf.conf's value (600 s minimum duration).
    SingleStream's early-stopping estimate needs at least 64 queries for a VALID result, Server's at its 99th
    percentile some 460 or more (``server_queries``: the final Server run's minimum query count). The bisection
    steps before it run ``bisection_min_duration_ms`` each."""
    min_duration_ms: "int | None" = 10_000
    min_query_count: "int | None" = 64
    performance_sample_count: "int | None" = 1024  # MLPerf's for ResNet-50 (the QSL repeats the images); None: N
    offline_min_query_count: "int | None" = None
    server_queries: "int | None" = 1024
    server_latency_ms: "float | None" = None  # None: 3x the configuration's own batch-1 latency
    server_bisection_steps: int = 5
    bisection_min_duration_ms: int = 10_000


# MLPerf's own minimums for a ResNet-50-class model (the submission rules): 600 s from mlperf.conf and Offline's
# 24576 samples (its performance_sample_count, 1024, is every run's).
SUBMISSION = dict(min_duration_ms=None, min_query_count=None, offline_min_query_count=24_576, server_queries=None)
ACCURACY_LOAD_SET = 1024  # an accuracy run's images preprocessed and held at a time


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
    """Preprocessed [N,3,224,224] float32 images held in memory; LoadGen picks samples by index. With a
    ``performance_sample_count`` above N, sample i is image i mod N (LoadGen's rules ask 1024 samples)."""

    def __init__(self, lg, images: np.ndarray, performance_sample_count=None):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        count = max(len(self.images), performance_sample_count or 0)
        self.handle = lg.ConstructQSL(count, performance_sample_count or count, self._load, self._unload)

    def batch(self, indices) -> np.ndarray:
        return self.images[[i % len(self.images) for i in indices]]

    def _load(self, indices):  # already in memory
        pass

    def _unload(self, indices):
        pass


class AccuracyQSL:
    """The images of an accuracy run, preprocessed when LoadGen loads a set of them and dropped when it
    unloads it, so that a whole dataset folder (ImageNet's 50,000) never sits in memory at once."""

    def __init__(self, lg, data: "AccuracySet"):
        from convmixer_suite.guide.transform import EvalTransform
        self.paths, self.transform, self.loaded, self.error = list(data.paths), EvalTransform(), {}, None
        count = len(self.paths)
        self.handle = lg.ConstructQSL(count, min(count, ACCURACY_LOAD_SET), self._load, self._unload)

    def batch(self, indices) -> np.ndarray:
        return np.stack([self.loaded[i] for i in indices])

    def _load(self, indices):
        from convmixer_suite.guide.transform import load_batch
        try:
            batch, _ = load_batch([self.paths[i] for i in indices], self.transform)
        except Exception as exc:  # kept and raised after the run: an exception must not cross into LoadGen
            self.error = self.error or exc
            return
        self.loaded.update(zip(indices, batch))

    def _unload(self, indices):
        for i in indices:
            self.loaded.pop(i, None)


class BackendSUT:
    """The system under test: one worker thread runs each LoadGen query on ``backend`` in chunks of
    ``batch_size`` and answers every sample with its predicted class as one float32 (the vision reference's
    response; PyTorch-style 1000 classes, so offset 0)."""

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
            classes = np.asarray(self.backend.predict(self.qsl.batch([s.index for s in samples]))).argmax(axis=1)
            rows = [array.array("B", np.float32(c).tobytes()) for c in classes]
        except Exception as exc:  # kept and re-raised after the run: LoadGen would wait forever otherwise
            self.error = self.error or exc
            rows = [array.array("B") for _ in samples]
        responses = [self.lg.QuerySampleResponse(s.id, *row.buffer_info()) for s, row in zip(samples, rows)]
        self.lg.QuerySamplesComplete(responses)

    def close(self):
        self.queue.put(None)
        self.worker.join()
        self.lg.DestroySUT(self.handle)


def server_latency_ms(settings: LoadGenSettings, latency_ms: float) -> int:
    """The Server p99 bound in whole ms (user.conf's ``target_latency`` is read as an integer of ms)."""
    return max(1, math.ceil(settings.server_latency_ms or 3.0 * latency_ms))


def scenario_conf(settings: LoadGenSettings, scenario, *, latency_ms, throughput_qps, server_qps=None,
                  final=True) -> dict:
    """The user.conf keys of one run. ``latency_ms`` and ``throughput_qps`` are the runtime's measured batch-1
    latency and best throughput: LoadGen sizes the run from them (SingleStream pre-generates min duration /
    expected latency queries, Offline issues expected QPS x min duration samples), so both are set 1.5x fast.
    ``final=False``: a Server bisection step, short."""
    conf = {"min_duration": settings.min_duration_ms if final else settings.bisection_min_duration_ms,
            "min_query_count": settings.min_query_count if final else (settings.min_query_count or 64),
            "performance_sample_count_override": settings.performance_sample_count}
    if scenario == "SingleStream":
        conf["target_latency"] = max(latency_ms / EXPECTATION_MARGIN, 1e-6)
    elif scenario == "Offline":
        conf["target_qps"] = max(throughput_qps * EXPECTATION_MARGIN, 1e-3)
        conf["min_query_count"] = settings.offline_min_query_count or conf["min_query_count"]
    else:
        conf.update(target_qps=float(server_qps), target_latency=server_latency_ms(settings, latency_ms))
        if final and settings.server_queries:
            conf["min_query_count"] = settings.server_queries
    return conf


def write_user_conf(path, model, scenario, conf: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, layout.user_conf_text(model, scenario, conf))
    return path


def test_settings(lg, scenario, user_conf, model, accuracy=False):
    """LoadGen's TestSettings from its built-in mlperf.conf and our ``user_conf``. Both read explicitly
    (``conf_type`` 0, then 2): ``FromConfig``'s default (1) loads mlperf.conf only on a process's first call
    and logs "Multiple conf files are used" into every later run's detail log, and this process runs many."""
    ts = lg.TestSettings()
    if ts.FromConfig("", model, scenario, 0) != 0 or ts.FromConfig(str(user_conf), model, scenario, 2) != 0:
        raise UserError(f"{user_conf}: LoadGen could not read it as a user.conf")
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
    return ts


def run_scenario(backend, images, config, scenario, log_dir, user_conf, model, *, batch_size=1, accuracy=None,
                 performance_sample_count=None) -> ScenarioResult:
    """One LoadGen run of ``scenario`` on ``backend`` with the settings of ``user_conf``; logs into
    ``log_dir`` (emptied first). ``accuracy`` (an AccuracySet): an AccuracyOnly run on its images instead of a
    performance run on ``images``."""
    if scenario not in SCENARIOS:
        raise UserError(f"--scenarios: unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    lg = import_loadgen()
    log_dir = Path(log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)  # never mix a previous run's logs into this one's
    log_dir.mkdir(parents=True)
    ts = test_settings(lg, scenario, user_conf, model, accuracy=accuracy is not None)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False  # as the vision reference runs without --debug: the trace is large, no tool reads it
    qsl = QuerySampleLibrary(lg, images, performance_sample_count) if accuracy is None else AccuracyQSL(lg, accuracy)
    sut = BackendSUT(lg, backend, qsl, batch_size if scenario == "Offline" else 1)
    try:
        lg.StartTestWithLogSettings(sut.handle, qsl.handle, ts, log)
    finally:
        sut.close()
        lg.DestroyQSL(qsl.handle)
    for error in (getattr(qsl, "error", None), sut.error):  # an image that failed to load comes first
        if error is not None:
            raise error
    summary = read_summary(log_dir / "mlperf_log_summary.txt")
    figures = {key: summary[key] for key in SUMMARY_FIGURES[scenario] if key in summary}
    run_settings = {"mode": "PerformanceOnly" if accuracy is None else "AccuracyOnly", "batch_size": sut.batch_size,
                    "user_conf": str(user_conf), "min_duration_ms": ts.min_duration_ms,
                    "min_query_count": ts.min_query_count}
    if scenario == "Server":
        run_settings.update(server_target_qps=ts.server_target_qps,
                            server_target_latency_ms=ts.server_target_latency_ns / 1e6)
    return ScenarioResult(config, scenario, str(log_dir), summary.get("Result is", "no result line"), figures,
                          summary, run_settings)


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


def measured_rates(rows, config):
    """(batch-1 latency ms, best batch size, its images/s) of ``config`` from the benchmark's timing rows."""
    own = [r for r in rows if r["config"] == config]
    best = max(own, key=lambda r: r["throughput_images_per_s"])
    one = next((r for r in own if r["batch_size"] == 1), best)
    return one["latency_ms"]["mean"] / one["batch_size"], best["batch_size"], best["throughput_images_per_s"]


def step_dict(run: ScenarioResult) -> dict:
    return {"target_qps": run.settings["server_target_qps"], "result": run.result, "log_dir": run.log_dir,
            "figures": run.figures, "performance_constraints_satisfied": run.summary.get(PERFORMANCE_CONSTRAINTS)}


@dataclass(frozen=True)
class AccuracySet:
    """The images of an AccuracyOnly run (their paths; QSL order) with their file names and labels."""
    paths: list
    names: list
    labels: list


@dataclass
class Harness:
    """Every LoadGen run of one benchmark: where it writes (``results_root``: the submission's results folder,
    in MLPerf's layout; ``out``: what stays outside the submission, the Server search's steps and the full
    accuracy logs), under which system name (``hardware`` plus the configuration) and model name, with which
    settings."""
    out: Path
    results_root: Path
    hardware: str
    model: str
    settings: LoadGenSettings
    log: object = print

    def __post_init__(self):
        self.offline_rate, self.server_qps = {}, {}  # by configuration: LoadGen's Offline rate, the Server QPS found
        self.written = set()  # the user.conf files this benchmark wrote

    def folders(self, config, scenario, accuracy=False):
        system = layout.system_name(self.hardware, config)
        return (layout.results_dir(self.results_root, system, self.model, scenario, accuracy),
                layout.scenario_dir(self.results_root, system, self.model, scenario) / layout.USER_CONF)

    def run(self, backend, images, config, scenario, conf, batch_size, accuracy=None, folder=None):
        log_dir, conf_path = self.folders(config, scenario, accuracy is not None)
        if folder is not None:  # a Server bisection step: logs and user.conf of its own
            log_dir, conf_path = folder, folder.parent / f"{folder.name}.user.conf"
        if not (accuracy is not None and conf_path in self.written):  # the performance run's user.conf stays
            self.written.add(write_user_conf(conf_path, self.model, scenario, conf))
        return run_scenario(backend, images, config, scenario, log_dir, conf_path, self.model,
                            batch_size=batch_size, accuracy=accuracy,
                            performance_sample_count=self.settings.performance_sample_count)

    def performance(self, backend, images, config, scenario, rows) -> dict:
        """A PerformanceOnly run (Server: its bisection, then the final run); its result as a dict."""
        latency_ms, best_batch, best_qps = measured_rates(rows, config)
        self.log(f"==> LoadGen {scenario} on {config}" + (f" (batch {best_batch})" if scenario == "Offline" else ""))
        if scenario == "Server":
            result = self.server(backend, images, config, latency_ms, rows)
        else:
            result = self.sized(backend, images, config, scenario, latency_ms, best_qps, best_batch).as_dict()
        self.log(f"    Result is : {result['result']}; " + "; ".join(f"{k}: {v}" for k, v in result["figures"].items()))
        return result

    def sized(self, backend, images, config, scenario, latency_ms, qps, batch_size) -> ScenarioResult:
        """A run, again (at most ``SIZING_RUNS`` in all) while LoadGen finds its minimum duration unmet because
        the runtime ran faster than expected (LoadGen generates the queries up front from the expectation):
        then expecting LoadGen's own measured rate or twice the last expectation, whichever is faster (on a
        shared machine the rate moves between runs); the user.conf of the run kept is the one kept."""
        for attempt in range(SIZING_RUNS):
            run = self.run(backend, images, config, scenario, scenario_conf(
                self.settings, scenario, latency_ms=latency_ms, throughput_qps=qps), batch_size)
            if run.summary.get("Min duration satisfied") != "NO":
                break
            if scenario == "Offline":
                qps = max(float(run.figures["Samples per second"]), 2 * qps)
            else:
                latency_ms = min(float(run.summary["Mean latency (ns)"]) / 1e6, latency_ms / 2)
        run.settings["runs_to_fill_min_duration"] = attempt + 1
        return run

    def server(self, backend, images, config, latency_ms, rows) -> dict:
        """Server: the QPS bisection over short runs (every step's logs kept under ``out``/bisection/), bounded
        by LoadGen's own Offline rate where an Offline run came first, then the final run at the QPS found."""
        system = layout.system_name(self.hardware, config)
        steps_dir = Path(self.out) / "bisection" / system / self.model / "Server"
        if steps_dir.exists():
            shutil.rmtree(steps_dir)
        high_qps = self.offline_rate.get(config) or measured_rates(rows, config)[2]

        def run_at(qps, step):
            conf = scenario_conf(self.settings, "Server", latency_ms=latency_ms, throughput_qps=high_qps,
                                 server_qps=qps, final=False)
            run = self.run(backend, images, config, "Server", conf, 1, folder=steps_dir / f"step_{step}")
            self.log(f"    step {step}: target {qps:.4g} QPS, latency constraint satisfied: "
                     f"{run.summary.get(PERFORMANCE_CONSTRAINTS)}")
            return run
        best, runs = find_server_qps(run_at, 0.0, high_qps, self.settings.server_bisection_steps)
        chosen = best or runs[-1]
        final, attempts = self.server_final(backend, images, config, latency_ms, high_qps,
                                            chosen.settings["server_target_qps"], steps_dir)
        self.server_qps[config] = final.settings["server_target_qps"]
        result = final.as_dict()
        result.update(chosen_step_dir=chosen.log_dir, latency_bound_met=best is not None,
                      bisection=[step_dict(r) for r in runs], final_attempts=[step_dict(r) for r in attempts],
                      final_attempts_limit=FINAL_ATTEMPTS)
        return result

    def server_final(self, backend, images, config, latency_ms, high_qps, qps, steps_dir) -> tuple:
        """The final Server run, ``server_queries`` long, at ``qps``; should its latency constraint fail (a short
        step can pass by luck), again at half the QPS, at most ``FINAL_ATTEMPTS`` runs in all. Returns the last
        run (its logs in performance/run_1) and every run in order (the failed ones' logs moved to final_N)."""
        attempts = []
        for attempt in range(FINAL_ATTEMPTS):
            self.log(f"    final run at {qps:.4g} QPS")
            run = self.run(backend, images, config, "Server", scenario_conf(
                self.settings, "Server", latency_ms=latency_ms, throughput_qps=high_qps, server_qps=qps), 1)
            attempts.append(run)
            if run.summary.get(PERFORMANCE_CONSTRAINTS) == "Yes" or attempt == FINAL_ATTEMPTS - 1:
                return run, attempts
            kept = steps_dir / f"final_{attempt}"
            shutil.copytree(run.log_dir, kept)
            run.log_dir = str(kept)
            qps /= 2

    def accuracy(self, backend, data: AccuracySet, config, scenario, rows) -> dict:
        """An AccuracyOnly run on ``data``; accuracy.txt beside LoadGen's accuracy log, which is then cut to the
        checker's size where it is larger; the full log and val_map.txt in ``out``/accuracy_logs/."""
        latency_ms, best_batch, best_qps = measured_rates(rows, config)
        self.log(f"==> LoadGen {scenario} accuracy run on {config}: {len(data.names)} images")
        conf = scenario_conf(self.settings, scenario, latency_ms=latency_ms, throughput_qps=best_qps,
                             server_qps=self.server_qps.get(config, best_qps))
        run = self.run(backend, None, config, scenario, conf, best_batch, accuracy=data)
        full_dir = Path(self.out) / "accuracy_logs" / layout.system_name(self.hardware, config) / self.model / scenario
        layout.keep_full_accuracy_log(run.log_dir, full_dir)
        layout.write_val_map(full_dir, data.names, data.labels)
        scored = layout.write_accuracy_txt(run.log_dir, data.labels)
        truncated = layout.truncate_accuracy_log(run.log_dir)
        self.log(f"    {scored['accuracy_line']}" + ("; the log cut to the checker's size" if truncated else ""))
        return {"config": config, "scenario": scenario, "log_dir": run.log_dir, "full_log_dir": str(full_dir),
                "log_truncated": truncated, "result": run.result, "num_images": scored["total"],
                "top1": scored["good"] / scored["total"], **scored}


def run_scenarios(harness: Harness, backends: dict, images, rows, scenarios, accuracy: "AccuracySet | None" = None,
                  performance=True) -> tuple:
    """Every scenario for every configuration of ``backends`` ({config: backend}): a performance run (when
    ``performance``) and, given ``accuracy``, an AccuracyOnly run. ``rows`` are the benchmark's timing rows:
    they set LoadGen's expectations and Offline's batch size (the runtime's best). Returns (performance
    results, accuracy results) as dicts."""
    results, accuracy_results = [], []
    for config, backend in backends.items():
        for scenario in scenarios:
            if performance:
                result = harness.performance(backend, images, config, scenario, rows)
                if scenario == "Offline":  # LoadGen's own rate bounds the Server bisection
                    harness.offline_rate[config] = float(result["figures"].get("Samples per second", 0)) or None
                results.append(result)
            if accuracy is not None:
                accuracy_results.append(harness.accuracy(backend, accuracy, config, scenario, rows))
    return results, accuracy_results

"""convmixer-benchmark's open-division submission against the submission checker's v6.1 rules as docs/formats.md
writes them down (the bullets of "The submission checker's v6.1 rules" are read here, so the page and the test
cannot drift apart). No MLPerf code is read: the rules are facts from mlcommons/inference's checker, and the
real checker's verdict on such a tree is in docs/benchmarks.md."""
import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

import pytest

from conftest import REPO, run_script

pytest.importorskip("mlperf_loadgen")

FORMATS = REPO / "docs" / "formats.md"
NUM_IMAGES = 200  # enough for an accuracy log over the checker's size, so that it is cut
SUBMITTER, SYSTEM = "TestOrg", "test-host"


def rule(label: str) -> str:
    """The text of the docs/formats.md bullet that starts with ``- **label**`` (with its continuation lines)."""
    found = re.search(r"^- \*\*" + re.escape(label) + r"\*\*(.*?)(?=^- |^#|\Z)", FORMATS.read_text(), re.M | re.S)
    assert found, f"docs/formats.md has no bullet **{label}**"
    return " ".join(found.group(1).split())


def names(text: str) -> list:
    """The backquoted names of ``text``."""
    return re.findall(r"`([^`]+)`", text)


def listed(label: str, after: str = "holds:") -> list:
    """The backquoted names a rule lists after ``after``, up to its first ``;``."""
    return names(rule(label).split(after, 1)[1].split(";")[0])


def detail_log(path: Path) -> dict:
    """LoadGen's detail log as {key: value} (first value of each key), and its entries flagged as errors."""
    values, errors = {}, []
    for line in path.read_text().splitlines():
        if line.startswith(":::MLLOG "):
            entry = json.loads(line[len(":::MLLOG "):])
            values.setdefault(entry["key"], entry["value"])
            if entry.get("metadata", {}).get("is_error"):
                errors.append(entry["value"])
    return {**values, "errors": errors}


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    from convmixer_suite.guide.samples import write_sample_dataset
    tmp = tmp_path_factory.mktemp("submission")
    data = write_sample_dataset(tmp / "data", NUM_IMAGES)
    out = tmp / "bench"
    stale = out / "open" / SUBMITTER / "results" / "an-earlier-run_torch-fp32" / "m" / "Offline"
    stale.mkdir(parents=True)  # an earlier run's results: removed, never mixed into this one's
    result = run_script("convmixer-benchmark", "--quick", "--out", out, "--configs", "onnxruntime-fp32",
                        "--batch-sizes", "1,2", "--scenarios", "SingleStream,Offline", "--loadgen-accuracy",
                        "--images", data / "val", "--labels", data / "val_label.txt", "--no-ceiling",
                        "--prep-images", 4, "--stream-images", 2, "--submitter", SUBMITTER, "--system-name", SYSTEM)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.loads((out / "benchmark.json").read_text()), result.stdout


def scenario_dirs(root: Path) -> list:
    return sorted(p for p in (root / "results").glob("*/*/*") if p.is_dir())


def test_the_tree_has_the_checkers_folders_and_model_mapping(submission):
    out, report, stdout = submission
    root = out / "open" / SUBMITTER
    assert sorted(p.name for p in root.iterdir()) == sorted(listed("Submitter folder"))
    benchmark, dataset_size, performance_count = re.search(
        r"benchmark `(\w+)`: dataset size `(\d+)`, performance sample count `(\d+)`", rule("Model mapping")).groups()
    assert json.loads((root / "model_mapping.json").read_text()) == {report["arch"]: benchmark}
    src = {p.name: p.read_text() for p in (root / "src").iterdir()}
    assert f"mlcommons-loadgen=={importlib.metadata.version('mlcommons-loadgen')}" in src["requirements.txt"]
    assert "convmixer-benchmark --quick" in src["README.md"] and f"--submitter {SUBMITTER}" in src["README.md"]
    systems = {p.name for p in (root / "results").iterdir()}
    assert systems == {f"{SYSTEM}_torch-fp32", f"{SYSTEM}_onnxruntime-fp32"}  # a system per configuration
    assert f"removing {out / 'open' / SUBMITTER} of an earlier run" in stdout
    assert {p.stem for p in (root / "systems").iterdir()} == systems
    found = [p.relative_to(root / "results").parts for p in scenario_dirs(root)]
    assert sorted(found) == sorted((s, report["arch"], c) for s in systems for c in ("SingleStream", "Offline"))
    assert report["submission"]["root"] == str(root) and report["submission"]["mlperf_benchmark"] == benchmark
    assert int(dataset_size) != NUM_IMAGES and int(performance_count) == 1024


def test_every_scenario_has_the_required_files_and_fields(submission):
    out, report, _ = submission
    root = out / "open" / SUBMITTER
    wanted, accuracy_files = listed("Scenario folder"), listed("Accuracy files")
    performance_files, optional = listed("Performance files"), listed("Performance files", "optional there and in")[1:]
    fields = listed("Required measurements.json fields", "):")
    assert wanted and performance_files and accuracy_files and len(fields) == 5
    for folder in scenario_dirs(root):
        assert sorted(p.name for p in folder.iterdir()) == sorted({w.split("/")[0] for w in wanted})
        assert all((folder / w).exists() for w in wanted)
        assert (folder / "user.conf").stat().st_size > 0 and (folder / "README.md").stat().st_size > 0
        run_files = {p.name for p in (folder / "performance" / "run_1").iterdir()}
        assert set(performance_files) <= run_files <= set(performance_files) | set(optional)
        assert set(accuracy_files) <= {p.name for p in (folder / "accuracy").iterdir()} <= \
            set(accuracy_files) | set(optional)
        measured = json.loads((folder / "measurements.json").read_text())
        assert set(fields) <= set(measured) and all(measured[f] for f in fields)
        config = folder.parts[-3][len(SYSTEM) + 1:]
        assert measured["weight_data_types"] == config.split("-")[1]
        assert "seed 0" in measured["starting_weights_filename"]  # seeded weights say so


def test_every_system_description_has_the_required_fields(submission):
    out, _, _ = submission
    root = out / "open" / SUBMITTER
    required = [n for n in names(rule("Required system fields")) if "/" not in n]
    meaningful = names(rule("System fields that need a non-empty value"))
    values = rule("System values")
    statuses = names(re.search(r"`status` one of (.*?);", values).group(1))
    types = names(re.search(r"`system_type` one of (.*?);", values).group(1))
    assert len(required) == 35 and set(meaningful) <= set(required)
    for path in (root / "systems").iterdir():
        system = json.loads(path.read_text())
        assert set(required) <= set(system), set(required) - set(system)
        assert all(isinstance(system[k], str) and system[k] for k in meaningful)
        assert system["status"] in statuses and system["system_type"] in types
        assert system["division"] == "open" and system["submitter"] == SUBMITTER
        assert system["accelerators_per_node"] == "0" and system["accelerator_model_name"] == "N/A"  # a CPU
        assert system["framework"].startswith("ONNX Runtime" if "onnxruntime" in path.stem else "PyTorch")
        assert system["host_processor_core_count"].isdigit()


def test_logs_carry_this_loadgens_seeds_and_the_short_run_is_marked(submission):
    out, report, stdout = submission
    root = out / "open" / SUBMITTER
    seeds_rule = next(line for line in FORMATS.read_text().splitlines() if "**Seeds of LoadGen" in line)
    assert re.search(r"LoadGen ([\d.]+)", seeds_rule).group(1) == importlib.metadata.version("mlcommons-loadgen")
    seeds = {k: int(v) for k, v in re.findall(r"`(\w+_rng_seed)` = `(\d+)`", rule(seeds_rule.split("**")[1]))}
    minimum_ms = int(re.search(r"`effective_min_duration_ms` at least `(\d+)`", rule("Performance runs")).group(1))
    assert len(seeds) == 3
    for folder in scenario_dirs(root):
        log = detail_log(folder / "performance" / "run_1" / "mlperf_log_detail.txt")
        assert all(log[f"effective_{name}"] == value for name, value in seeds.items())
        assert log["errors"] == [] and log["result_validity"] == "VALID"
        assert log["effective_performance_sample_count"] >= 1024
        assert log["effective_min_duration_ms"] < minimum_ms  # the quick run is short, and says so
        assert "SHORT RUN" in (folder / "README.md").read_text()
        where = "/".join(folder.parts[-3:])
        assert f"notice: {where}: SHORT RUN" in stdout
        assert any("SHORT RUN" in gap for gap in report["submission"]["checker_will_reject"][where])


def test_accuracy_logs_are_cut_to_the_checkers_size_with_the_full_logs_hash(submission):
    out, report, _ = submission
    size_rule = rule("Accuracy log size")
    limit, kept = [int(n) for n in names(size_rule) if n.isdigit()][:2]  # the limit, then the bytes kept
    mark = names(size_rule)[-1].encode().decode("unicode_escape").encode()
    pattern = next(n for n in names(rule("Accuracy files")) if n.startswith("^accuracy"))
    assert len(report["loadgen_accuracy"]) == 4
    for run in report["loadgen_accuracy"]:
        folder, full = Path(run["log_dir"]), Path(run["full_log_dir"]) / "mlperf_log_accuracy.json"
        whole, cut = full.read_bytes(), (folder / "mlperf_log_accuracy.json").read_bytes()
        assert len(whole) > limit and run["log_truncated"]
        assert len(cut) <= limit and cut == whole[:kept] + mark + whole[-kept:]
        lines = (folder / "accuracy.txt").read_text().splitlines()
        assert re.match(pattern, lines[0]) and lines[1] == f"hash={hashlib.sha256(whole).hexdigest()}"
        assert len(json.loads(whole)) >= NUM_IMAGES  # the full log is whole JSON: every sample at least once
        log = detail_log(folder / "mlperf_log_detail.txt")
        assert log["qsl_reported_total_count"] == NUM_IMAGES and log["errors"] == []
        assert len((full.parent / "val_map.txt").read_text().splitlines()) == NUM_IMAGES
        readme = (folder.parent / "README.md").read_text()
        assert f"covered {NUM_IMAGES} images" in readme and run["accuracy_line"] in readme


def test_a_submitter_that_cannot_name_a_folder_is_refused_in_one_line(tmp_path):
    result = run_script("convmixer-benchmark", "--quick", "--out", tmp_path, "--submitter", "My Org/1")
    assert result.returncode == 2 and "--submitter 'My Org/1'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

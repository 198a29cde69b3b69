"""--engine ray on multi-node Ray clusters made on this machine (``ray.cluster_utils.Cluster`` on 127.0.0.1, one
CPU per node): replicas and decode tasks on every node of 2 (the plan that hung before: 2 replicas on 2 one-CPU
nodes), and a whole node killed mid-run on 3 nodes. Every run is bounded in time."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, SLOW_BS, export_small_onnx, run_script, seeded_model, slow_stream_args
from convmixer_suite.run.records import records_folder
from convmixer_suite.bench.stream_bench import LOOPBACK_ENV, loopback_cluster, loopback_environment
from test_stream_eval import labelled  # noqa: F401  (a fixture: labels that make top-1 4/7)
from test_stream_resume import NUM_PHOTOS, image_results

RUN_TIMEOUT_S = 240
# Slower per batch than test_stream_resume's model (about 0.1 s an image on one thread), so that a node can be
# killed while most batches are still to run.
SLOWER = dict(dim=768, depth=8, kernel_size=9, patch_size=7)


# Where a worker of the run's runtime_env imports the suite from (Ray's copy of py_modules, where no checkout
# is at the driver's path).
WORKER_IMPORTS = """
import json, sys, ray
from convmixer_suite.run import ray_engine
ray_engine.connect(ray, sys.argv[1])
@ray.remote
def where():
    import convmixer_suite.model.net
    return [convmixer_suite.__file__, convmixer_suite.model.net.__file__]
print(json.dumps(ray.get(where.remote())))
ray.shutdown()
"""


@pytest.fixture(scope="module")
def cluster():
    """Two one-CPU nodes, started once for this module's tests; Ray's loopback settings hold while it runs (also for
    a Ray this test process imported before), and the environment is restored after. A test that adds a node
    removes it again, so each test finds the two nodes whatever ran before it."""
    pytest.importorskip("ray")
    with loopback_cluster(nodes=2, cpus_per_node=1) as two_nodes:
        yield two_nodes


def summary_run(summary_json) -> dict:
    return json.loads(summary_json.read_text())["run"]


def test_two_one_cpu_nodes_both_decode_and_host_a_replica(tmp_path, small_onnx, photo_folder, labelled, cluster):
    local = run_script(*slow_stream_args(small_onnx, photo_folder, labelled, tmp_path / "local"), timeout=RUN_TIMEOUT_S)
    assert local.returncode == 0, local.stderr
    assert len(cluster.list_all_nodes()) == 2
    result = run_script(*slow_stream_args(small_onnx, photo_folder, labelled, tmp_path / "ray", "--engine", "ray",
                                          "--ray-address", cluster.address), timeout=RUN_TIMEOUT_S)
    # A driver started outside the checkout: Ray adds the driver's folder to the workers' sys.path (ahead of
    # py_modules), so this is what a node without the checkout sees.
    shipped = run_script(sys.executable, "-c", WORKER_IMPORTS, cluster.address, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO)}, timeout=RUN_TIMEOUT_S)
    assert shipped.returncode == 0, shipped.stderr
    for path in json.loads(shipped.stdout.strip().splitlines()[-1]):
        assert "/runtime_resources/py_modules_files/" in path and not path.startswith(str(REPO)), path
    assert result.returncode == 0, result.stderr
    assert "2 nodes, 2 CPUs" in result.stdout and "2 replicas on the node's cores each" in result.stdout
    run = summary_run(tmp_path / "ray" / f"result_bs{SLOW_BS}_stream_summary.json")
    assert sorted(run["decode_tasks_per_node"].values()) == [1, 1]  # one decode task on each node
    replica_nodes = {line.split(" on node ")[1].split()[0] for line in result.stdout.splitlines()
                     if line.startswith("[INFO] replica ")}
    assert len(replica_nodes) == 2, result.stdout  # Ray spread the two replicas over both nodes
    assert (tmp_path / "ray" / f"result_bs{SLOW_BS}.json").read_text() == \
        (tmp_path / "local" / f"result_bs{SLOW_BS}.json").read_text()


def run_and_kill_a_node(argv, records, cluster, node, stderr_path, min_parts=3):
    """Start ``argv``; once ``records`` holds ``min_parts`` parts, kill ``node`` (its raylet and all) of
    ``cluster``; returns the run's (return code, stderr)."""
    cmd = [sys.executable, str(REPO / argv[0])] + [str(a) for a in argv[1:]]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if records.is_dir() and len(list(records.glob("part-*.jsonl"))) >= min_parts:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before a node could be killed"
            cluster.remove_node(node, allow_graceful=False)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, stderr_path.read_text()


def test_a_node_killed_mid_run_gives_the_local_json_or_one_line_and_a_rerun_does(tmp_path, slow_run_inputs, cluster):
    _, images, labels = slow_run_inputs
    model = export_small_onnx(seeded_model(seed=5, **SLOWER), tmp_path / "slower.onnx")
    local = run_script(*slow_stream_args(model, images, labels, tmp_path / "local"), timeout=RUN_TIMEOUT_S)
    assert local.returncode == 0, local.stderr
    expected = (tmp_path / "local" / f"result_bs{SLOW_BS}.json").read_text()
    out = tmp_path / "ray"
    cluster.add_node(num_cpus=1, include_dashboard=False)  # a third node, the one killed
    cluster.wait_for_nodes()
    ray_args = ("--engine", "ray", "--ray-address", cluster.address, "--record-every", 0)
    code, stderr = run_and_kill_a_node(slow_stream_args(model, images, labels, out, *ray_args,
                                                        "--stall-timeout", 60),  # a hang would end too
                                       records_folder(out / f"result_bs{SLOW_BS}.json"), cluster,
                                       cluster.list_all_nodes()[-1], tmp_path / "killed.stderr")
    print(f"the run with a node killed: exit {code}; stderr:\n{stderr}")  # -rP
    assert "Traceback" not in stderr
    if code != 0:  # stopped: Ray's failure in one line (not the user's: exit 1), and the rerun finishes the job
        last = stderr.strip().splitlines()[-1]
        assert code == 1 and last.startswith("convmixer_stream_eval.py: error: RuntimeError: Ray engine: ")
        assert last.endswith("the records so far are kept: the same command resumes (run with --debug or "
                             "CONVMIXER_DEBUG=1 for the traceback)")
        rerun = run_script(*slow_stream_args(model, images, labels, out, *ray_args), timeout=RUN_TIMEOUT_S)
        assert rerun.returncode == 0, rerun.stderr
        assert 0 < rerun.stdout.count("Inference time:") < NUM_PHOTOS // SLOW_BS
    assert (out / f"result_bs{SLOW_BS}.json").read_text() == expected
    assert image_results(out / f"result_bs{SLOW_BS}.json") == image_results(tmp_path / "local" /
                                                                            f"result_bs{SLOW_BS}.json")


def test_importing_this_module_leaves_the_environment_alone():
    """It once set Ray's loopback variables at import, so every test collected with it ran under them."""
    check = "import os; before = dict(os.environ); import test_ray_cluster; print(dict(os.environ) == before)"
    env = {name: value for name, value in os.environ.items() if name not in LOOPBACK_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_the_loopback_settings_hold_only_while_the_cluster_runs(monkeypatch):
    constants = pytest.importorskip("ray._private.ray_constants")  # Ray imported before the cluster starts
    for name in LOOPBACK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", True)
    before = dict(os.environ)
    with loopback_environment():
        assert {name: os.environ.get(name) for name in LOOPBACK_ENV} == LOOPBACK_ENV
        assert constants.ENABLE_RAY_CLUSTER is False  # 127.0.0.1 only, though Ray read the variable before
    assert dict(os.environ) == before and constants.ENABLE_RAY_CLUSTER is True

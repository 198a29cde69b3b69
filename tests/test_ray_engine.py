"""--engine ray of convmixer_stream_eval.py on a local Ray head of 2 CPUs, started once for this module: the same
JSON and per-image records as the local engine, 2 replicas on 2 CPUs without a hang, a replica that dies,
the driver killed and rerun, a bad image, Ray not installed."""
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import SLOW_BS, export_small_onnx, run_script, slow_stream_args, write_dark_photo
from convmixer_suite.run.records import records_folder
from convmixer_suite.util.errors import UserError
from convmixer_suite.run.ray_decode import decode_block
from convmixer_suite.run.ray_engine import (FAULT_ENV, HANG_ENV, MIN_STALL_S, REPLICA_CPUS, SINGLE_MACHINE_ENV, STALL_BATCHES, StallWatch, batch_results, block_sizes, plan_replicas)
from convmixer_suite.run.config import RunConfig
from convmixer_suite.run.stream import EvalJob
from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch
from test_stream_eval import BS, labelled, recorded_images, stops_at_the_dark_photo  # noqa: F401  (labelled: a fixture,
# labels that make top-1 4/7)
from test_stream_resume import NUM_PHOTOS, image_results, kill_after_records

# Token authentication keys on ~/.ray/auth_token, which any other Ray on this machine may rewrite; this head
# and its drivers use 127.0.0.1 only (Ray otherwise swaps 127.0.0.1 for the machine's network address).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", SINGLE_MACHINE_ENV: "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A Ray head with 2 CPUs on free ports, in a process group of its own that teardown ends."""
    pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2",
           "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
           f"--dashboard-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    raylet = os.path.join(temp_dir, "session_latest", "sockets", "raylet")
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(raylet) and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert head.poll() is None and os.path.exists(raylet), "the Ray head did not start"
        yield address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # ray start --block leaves some on SIGTERM
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        shutil.rmtree(temp_dir, ignore_errors=True)


# What a decode task's process imports to run decode_block, and what a replica's imports to run an ONNX model: a
# fresh process, as a Ray worker is (torch costs each worker seconds at start-up, before the run's first batch).
WORKER_IMPORTS = """
import json, sys
import numpy as np
import convmixer_suite.run.ray_decode
decode_task = sorted(name for name in sys.modules if name.startswith("convmixer"))
from convmixer_suite.run import ray_engine
from convmixer_suite.run.config import RunConfig
from convmixer_suite.run.stream import EvalJob
job = EvalJob([], [], [], [], RunConfig.build(sys.argv[1], backend=sys.argv[2], threads=1, batch_size=2))
assert job.run.create_backend().predict(np.zeros((2, 3, 224, 224), np.float32)).shape[0] == 2
print(json.dumps({"decode_task": decode_task, "torch": "torch" in sys.modules}))
"""
DECODE_TASK_MODULES = {"convmixer_suite", "convmixer_suite.util", "convmixer_suite.util.errors",
                       "convmixer_suite.model", "convmixer_suite.model.data_config", "convmixer_suite.run",
                       "convmixer_suite.run.ray_decode", "convmixer_suite.guide", "convmixer_suite.guide.transform"}


def stream_eval(model, images, labels, out, *extra, env=None):
    return run_script("convmixer_stream_eval.py", "--model", model, "--image-path", images,
                      "--annotation-file-path", labels, "--result-json-path", out, "--json-file-name",
                      f"result_bs{BS}.json", "--batch-size", BS, "--threads", 1, *extra, env={**RAY_ENV, **(env or {})})


def test_ray_gives_the_local_json_and_records_with_two_replicas_on_two_cpus(tmp_path, small_onnx, photo_folder,
                                                                          labelled, ray_address):
    local = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "local")
    assert local.returncode == 0, local.stderr
    distributed = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "ray", "--engine", "ray",
                              "--ray-address", ray_address, "--replicas", 2)
    assert distributed.returncode == 0, distributed.stderr
    expected = (tmp_path / "local" / f"result_bs{BS}.json").read_text()
    assert '"Top1 accuracy", "value": "57.14%"' in expected
    assert (tmp_path / "ray" / f"result_bs{BS}.json").read_text() == expected
    assert image_results(tmp_path / "ray" / f"result_bs{BS}.json") == \
        image_results(tmp_path / "local" / f"result_bs{BS}.json")
    assert distributed.stdout.count("Inference time:") == 3
    assert "2 replicas on the node's cores each" in distributed.stdout and "2 decode tasks" in distributed.stdout
    log = tmp_path / "ray.log"
    log.write_text(distributed.stdout)
    parsed = run_script("test/parse.py", "--result-file", log, "--batch-size", BS)
    assert parsed.returncode == 0 and parsed.stdout.startswith(f"bs{BS} fps:")
    before, after = distributed.stdout.split("Inference average time :")
    assert [line for line in before.splitlines() if line.startswith("[INFO] replica ")]
    assert re.fullmatch(r" [\d.]+ ms\nInference average time without first time: [\d.]+ ms\n", after)  # last


def test_a_replica_that_dies_is_restarted_and_the_json_is_the_same(tmp_path, small_onnx, photo_folder, labelled,
                                                                   ray_address):
    marker = tmp_path / "replica_exited"
    local = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "local")
    crashed = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "ray", "--engine", "ray",
                          "--ray-address", ray_address, env={FAULT_ENV: str(marker)})
    assert local.returncode == 0 and crashed.returncode == 0, crashed.stderr
    assert marker.exists()  # a replica did end its process mid-run
    assert (tmp_path / "ray" / f"result_bs{BS}.json").read_text() == \
        (tmp_path / "local" / f"result_bs{BS}.json").read_text()
    assert crashed.stdout.count("Inference time:") == 3


def test_a_killed_ray_driver_resumes_with_fewer_batches_and_the_same_json(tmp_path, slow_run_inputs, slow_local_run,
                                                                          ray_address):
    model, images, labels = slow_run_inputs
    whole, whole_json = slow_local_run
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "ray"
    ray_args = ("--engine", "ray", "--ray-address", ray_address, "--replicas", 2)
    kill_after_records(slow_stream_args(model, images, labels, out, "--record-every", 0, *ray_args),
                       records_folder(out / f"result_bs{SLOW_BS}.json"), min_parts=2, env=RAY_ENV)
    assert not (out / f"result_bs{SLOW_BS}.json").exists()
    resumed = run_script(*slow_stream_args(model, images, labels, out, *ray_args), env=RAY_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert 0 < resumed.stdout.count("Inference time:") < NUM_PHOTOS // SLOW_BS
    assert (out / f"result_bs{SLOW_BS}.json").read_text() == whole_json.read_text()


def test_a_stalled_run_stops_with_one_line_naming_ray_s_demand_and_the_rerun_resumes(tmp_path, slow_run_inputs,
                                                                                      slow_local_run, ray_address):
    """The replica that gets the last batch never returns (HANG_ENV): the run must stop, keep what it recorded,
    and the rerun finish with the local JSON. Which batches came back first is Ray's choice."""
    model, images, labels = slow_run_inputs
    whole, whole_json = slow_local_run
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "ray"
    ray_args = ("--engine", "ray", "--ray-address", ray_address, "--record-every", 0)
    batches = NUM_PHOTOS // SLOW_BS
    started = time.monotonic()
    stalled = run_script(*slow_stream_args(model, images, labels, out, *ray_args, "--stall-timeout", 4),
                         env={**RAY_ENV, HANG_ENV: f"{tmp_path / 'hung'}:{batches - 1}"}, timeout=400)
    assert time.monotonic() - started < 360  # it ends: no process left waiting
    assert stalled.returncode == 2 and "Traceback" not in stalled.stderr
    last = stalled.stderr.strip().splitlines()[-1]
    due = re.fullmatch(r"convmixer_stream_eval.py: error: Ray engine: no batch completed for 4 s \(--stall-timeout\) "
                       r"while batch (\d+) was due; Ray's pending demand: .+; the records so far are kept: the same "
                       r"command resumes", last)
    assert due and 0 < int(due.group(1)) < batches, last
    assert (tmp_path / "hung").exists() and not (out / f"result_bs{SLOW_BS}.json").exists()
    resumed = run_script(*slow_stream_args(model, images, labels, out, *ray_args), env=RAY_ENV, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {due.group(1)} batches already recorded" in resumed.stderr
    assert resumed.stdout.count("Inference time:") == batches - int(due.group(1))
    assert (out / f"result_bs{SLOW_BS}.json").read_text() == whole_json.read_text()


def test_a_bad_image_stops_the_ray_run_by_name_or_is_skipped(tmp_path, small_onnx, photo_folder, labelled,
                                                             ray_address):
    (photo_folder / "ILSVRC2012_val_00000004.JPEG").write_bytes(b"not a jpeg")
    ray_args = ("--engine", "ray", "--ray-address", ray_address)
    stopped = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "s1", *ray_args)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("convmixer_stream_eval.py: error: ")
    assert "ILSVRC2012_val_00000004.JPEG: cannot decode image" in stopped.stderr
    assert not (tmp_path / "s1" / f"result_bs{BS}.json").exists()
    local = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "local", "--skip-bad")
    skipped = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "s2", "--skip-bad", *ray_args)
    assert local.returncode == 0 and skipped.returncode == 0, skipped.stderr
    expected = (tmp_path / "local" / f"result_bs{BS}.json").read_text()
    assert '"Number of images", "value": "6"' in expected
    assert (tmp_path / "s2" / f"result_bs{BS}.json").read_text() == expected


def test_logits_that_are_not_finite_stop_the_ray_run_naming_the_image(tmp_path, nan_onnx, photo_folder, labelled,
                                                                     ray_address):
    write_dark_photo(photo_folder / "ILSVRC2012_val_00000005.JPEG")
    out = tmp_path / "out"
    result = stream_eval(nan_onnx, photo_folder, labelled, out, "--engine", "ray", "--ray-address", ray_address,
                         "--record-every", "0")
    stops_at_the_dark_photo(result, out, lambda: recorded_images(out))


def test_without_ray_one_line_says_how_to_install_it(tmp_path, small_onnx, photo_folder, labelled):
    shadow = tmp_path / "no_ray"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    result = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "out", "--engine", "ray",
                         env={"PYTHONPATH": str(shadow)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("convmixer_stream_eval.py: error: --engine ray needs Ray Data, "
                                                      "which is not installed; install it with: "
                                                      "pip install -r requirements-dist.txt")
    local_only = run_script("convmixer_stream_eval.py", "--model", small_onnx, "--image-path", photo_folder,
                            "--annotation-file-path", labelled, "--result-json-path", tmp_path / "o",
                            "--json-file-name", "r.json", "--replicas", 2)
    assert local_only.returncode == 2 and "--replicas needs --engine ray" in local_only.stderr


def test_eval_acc_perf_passes_the_ray_engine_through(tmp_path, small_onnx, photo_folder, labelled, ray_address):
    """The guide's wrapper with --stream=true --engine=ray: the same accuracy and an fps that parse.py read."""
    datasets = tmp_path / "imagenet"
    shutil.copytree(photo_folder, datasets / "val")
    shutil.copy(labelled, datasets / "val_label.txt")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_onnx, work / "convmixer_1536_20.onnx")
    result = run_script("test/eval_acc_perf.sh", f"--batch_size={BS}", f"--datasets_path={datasets}", "--stream=true",
                        "--engine=ray", f"--ray_address={ray_address}", "--replicas=2", "--threads=1", cwd=work,
                        env=RAY_ENV)
    assert result.returncode == 0, result.stderr
    assert "2 replicas on the node's cores each" in (work / f"msame_bs{BS}.txt").read_text()
    assert result.stdout.split("====performance data====\n")[1].startswith(f"bs{BS} fps:")
    assert result.stdout.split("====accuracy data====\n")[1].split("\n")[0] == "top1:57.14%"
    assert (work / "result" / f"result_bs{BS}_records" / "identity.json").is_file()


def test_a_replicas_user_error_is_one_line(tmp_path, small_model, photo_folder, labelled, ray_address):
    fixed = export_small_onnx(small_model, tmp_path / "fixed_bs2.onnx", batch_size=2)
    result = stream_eval(fixed, photo_folder, labelled, tmp_path / "out", "--engine", "ray", "--ray-address",
                         ray_address)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"convmixer_stream_eval.py: error: {fixed}: the model takes "
                                                      f"batches of 2, not --batch-size {BS}")


# ---- replica planning, the stall watch and the driver's checks (no cluster needed) ----------------------------

def nodes(*cpus, **accelerators):
    """Nodes as ray_engine.alive_nodes gives them: CPUs per node, and e.g. GPU=[4, 0] per node."""
    return [{"id": f"node{i}", "CPU": c, **{kind: counts[i] for kind, counts in accelerators.items()}}
            for i, c in enumerate(cpus)]


@pytest.mark.parametrize("cpus", [1, 2, 3, 16])
@pytest.mark.parametrize("replicas", [None, 1, 2, 3, 8])
def test_a_node_runs_one_decode_task_per_core_whatever_replicas_it_hosts(cpus, replicas):
    """Ray schedules by declared CPUs: were every replica on this node, its decode tasks must still fit."""
    plan = plan_replicas(nodes(cpus), replicas, None, None)
    assert plan.replicas == (replicas or 1) and plan.num_cpus == REPLICA_CPUS
    assert plan.decode_slots == {"node0": cpus}
    assert plan.replicas * plan.num_cpus + cpus * plan.decode_cpus <= cpus + 1e-9
    assert plan.threads == (None if plan.replicas == 1 else max(1, cpus // plan.replicas))


def test_two_one_cpu_nodes_each_keep_a_decode_task_beside_their_replicas():
    """The issue's hang: 2 nodes of 1 CPU, 2 replicas; each node must fit a decode task even with both."""
    plan = plan_replicas(nodes(1, 1), None, None, None)
    assert plan.replicas == 2 and plan.decode_slots == {"node0": 1, "node1": 1}
    assert 2 * plan.num_cpus + plan.decode_cpus <= 1
    mixed = plan_replicas(nodes(1, 16), None, None, None)
    assert mixed.decode_slots == {"node0": 1, "node1": 16}


def test_a_replica_takes_one_gpu_or_npu_and_sees_it_as_device_0():
    gpus = plan_replicas(nodes(16, 8, GPU=[4, 0]), None, "cuda:3", None)
    assert (gpus.replicas, gpus.device, gpus.remote_args()["num_gpus"]) == (4, "cuda:0", 1)
    assert gpus.decode_slots == {"node0": 16, "node1": 8}
    assert plan_replicas(nodes(16, GPU=[4]), 2, "gpu.1", 4).device == "gpu.0"
    npus = plan_replicas(nodes(8, NPU=[8]), None, "3", None)
    assert (npus.replicas, npus.device, npus.remote_args()["resources"]) == (8, "0", {"NPU": 1})
    assert "num_gpus" not in npus.remote_args() and npus.threads is None
    with pytest.raises(UserError, match="has no GPU resource"):
        plan_replicas(nodes(2), None, "cuda:0", None)
    with pytest.raises(UserError, match="--replicas 3: the Ray cluster has 2 NPUs"):
        plan_replicas(nodes(8, NPU=[2]), 3, "0", None)


def test_a_node_that_would_host_replicas_without_room_to_decode_is_refused_by_name():
    with pytest.raises(UserError, match=r"^Ray node node1 \(0 CPUs\) could host 2 replicas but would keep under "
                                        r"0.5 CPU to decode beside them"):
        plan_replicas(nodes(4, 0, GPU=[0, 2]), None, "cuda:0", None)
    with pytest.raises(UserError, match=r"node0 \(1 CPUs\) could host 60 replicas"):
        plan_replicas(nodes(1), 60, None, None)
    with pytest.raises(UserError, match="no CPUs for decode tasks"):
        plan_replicas(nodes(0, GPU=[1]), None, "cuda:0", None)


def test_one_cpu_replica_per_node_by_default():
    plan = plan_replicas(nodes(2, 2, 2, 2), None, None, None)
    assert (plan.replicas, plan.threads, plan.decode_tasks) == (4, None, 8)
    assert "4 replicas on the node's cores each" in plan.describe() and "8 decode tasks" in plan.describe()


def test_the_default_stall_timeout_follows_the_slowest_batch_and_is_never_short():
    watch = StallWatch()
    assert watch.timeout_s == MIN_STALL_S >= 180
    watch.saw_batch(latency_ms=1)
    assert watch.timeout_s == MIN_STALL_S
    watch.saw_batch(latency_ms=60_000)
    assert watch.timeout_s == STALL_BATCHES * 60
    given = StallWatch(2.5)
    assert given.timeout_s == MIN_STALL_S  # the first batch waits for the start-up
    given.saw_batch(latency_ms=1)
    assert given.timeout_s == 2.5


class NoRay:
    """Stands for the ray module where the driver asks Ray what it waits for, and Ray cannot answer."""
    def get_runtime_context(self):
        raise ConnectionError("no cluster")


def result_rows(*ks, n=BS):
    rows = queue.Queue()
    for k in ks:
        rows.put({"k": k, "n": n, "classes": np.zeros((n, 5), dtype=np.int64), "scores": np.zeros((n, 5)),
                  "num_classes": 1000, "latency_ms": 1.0, "bad": "{}", "decode_s": 0.1, "replica": "r",
                  "non_finite": np.zeros(n, dtype=np.int64)})
    return rows


def small_job(num_images=3 * BS):
    paths = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(num_images)]
    run = RunConfig(model="m.onnx", model_sha256="", model_bytes=0, backend="onnxruntime", batch_size=BS)
    return EvalJob(paths, paths, [0] * num_images, list(range(-(-num_images // BS))), run)


def test_rows_out_of_order_missing_or_cut_stop_the_run_with_one_line():
    job = small_job()
    assert [r.k for r in batch_results(result_rows(0, 1, 2), job, NoRay(), StallWatch(5))] == [0, 1, 2]
    with pytest.raises(UserError, match="^Ray engine: Ray Data returned batch 2 where batch 1 was due"):
        list(batch_results(result_rows(0, 2, 1), job, NoRay(), StallWatch(5)))
    ended = result_rows(0)
    ended.put(None)
    with pytest.raises(UserError, match="returned the end of the rows where batch 1 was due"):
        list(batch_results(ended, job, NoRay(), StallWatch(5)))
    with pytest.raises(UserError, match=f"returned 1 rows of batch 0, not {BS}"):
        list(batch_results(result_rows(0, n=1), job, NoRay(), StallWatch(5)))


def test_a_task_s_exception_reaches_the_driver_as_itself_or_in_one_line_with_its_type():
    """Ray hands the driver a RayTaskError holding the task's exception as ``cause`` (its dual-class form from
    as_instanceof_cause too): a UserError is raised itself, anything else in one line naming its type; a Ray
    failure that is no task's (a lost node) in one line as well, and a driver's own UserError as it is."""
    from ray.exceptions import ActorDiedError, RayTaskError
    from convmixer_suite.run.ray_engine import driver_failure
    mistake = UserError("m.onnx: the model takes batches of 2, not --batch-size 3")
    for raised in (RayTaskError("Replica", "Traceback ...", mistake),
                   RayTaskError("Replica", "Traceback ...", mistake).as_instanceof_cause()):
        assert driver_failure(raised) is mistake
    bug = RayTaskError("Replica", "Traceback ...", RuntimeError("a kernel failed\nat line 2")).as_instanceof_cause()
    failure = driver_failure(bug)
    assert type(failure) is RuntimeError and str(failure) == (
        "Ray engine: RuntimeError: a kernel failed; the records so far are kept: the same command resumes")
    lost = driver_failure(ActorDiedError())
    assert str(lost).startswith("Ray engine: ActorDiedError: The actor died unexpectedly before finishing this task")
    stalled = UserError("Ray engine: no batch completed")
    assert driver_failure(stalled) is stalled


def test_no_row_for_the_stall_timeout_stops_the_run_with_one_line():
    started = time.monotonic()
    with pytest.raises(UserError) as stalled:
        list(batch_results(result_rows(0), small_job(), NoRay(), StallWatch(0.2)))  # batch 0 came, then nothing
    assert time.monotonic() - started < 5
    assert str(stalled.value).startswith("Ray engine: no batch completed for 0.2 s (--stall-timeout) while batch 1 "
                                         "was due; Ray's pending demand: unknown (ConnectionError: no cluster)")


def test_a_ray_started_by_the_run_is_its_own_while_another_runs_here(tmp_path, small_onnx, photo_folder, labelled,
                                                                    ray_address):
    """Without --ray-address the run starts a Ray of its own, even where RAY_ADDRESS (or Ray's file of the last
    cluster started here) names another user's: Ray would join that one and refuse the run's num_cpus."""
    result = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "out", "--engine", "ray",
                         env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\[INFO\] Ray [\d.]+ at 127\.0\.0\.1:\d+: 1 node,", result.stdout, re.M), result.stdout
    assert ray_address not in result.stdout and "top1:57.14%" in result.stdout


def test_an_address_where_no_cluster_listens_is_one_line_at_once(tmp_path, small_onnx, photo_folder, labelled):
    pytest.importorskip("ray")
    port = free_port()  # closed again: nothing listens there
    started = time.monotonic()
    result = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "out", "--engine", "ray",
                         "--ray-address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there" in result.stderr.strip().splitlines()[-1]
    assert time.monotonic() - started < 60  # Ray alone waits minutes


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_decode_tasks_and_onnx_replicas_import_neither_torch_nor_more_than_they_run(small_onnx, backend):
    pytest.importorskip(backend)
    result = run_script(sys.executable, "-c", WORKER_IMPORTS, small_onnx, backend)
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(imported["decode_task"]) <= DECODE_TASK_MODULES, imported["decode_task"]
    assert not imported["torch"]


def test_decode_blocks_ramp_up_from_one_batch_and_hold_every_batch_once():
    assert block_sizes(157, 4, 2) == [1, 1, 2, 2] + [4] * 37 + [3]
    assert block_sizes(3, 4, 2) == [1, 1, 1] and block_sizes(7, 4, 1) == [1, 2, 4] and block_sizes(5, 1, 2) == [1] * 5
    for batches in range(1, 60):
        for most in (1, 2, 4, 8):
            for parallel in (1, 2, 3):
                sizes = block_sizes(batches, most, parallel)
                assert sum(sizes) == batches and 0 < min(sizes) and max(sizes) <= most
                assert sizes[:parallel] == [1] * min(parallel, batches)


def test_a_decode_block_gives_one_padded_row_per_batch_in_order(photo_folder):
    paths = [str(p) for p in list_images(photo_folder)[0]]
    listings = np.array([json.dumps([[0, paths[0:2]], [1, paths[2:4]]]), json.dumps([[3, paths[6:7]]])], dtype=object)
    rows = decode_block({"batches": listings}, batch_size=2, transform=EvalTransform().to_dict())
    assert list(rows["k"]) == [0, 1, 3] and list(rows["n"]) == [2, 2, 1] and rows["image"].shape == (3, 2, 3, 224, 224)
    assert np.array_equal(rows["image"][1], load_batch(paths[2:4], EvalTransform())[0])
    assert np.array_equal(rows["image"][2][0], load_batch(paths[6:7], EvalTransform())[0][0])
    assert not rows["image"][2][1].any() and [json.loads(b) for b in rows["bad"]] == [{}, {}, {}]

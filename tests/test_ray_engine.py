"""--engine ray of convmixer_stream_eval.py on a local Ray head of 2 CPUs, started once for this module: the same
JSON and per-image records as the local engine, 2 replicas on 2 CPUs without a hang, a replica that dies,
the driver killed and rerun, a bad image, Ray not installed."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import export_small_onnx, run_script
from convmixer_suite.records import records_folder
from convmixer_suite.cli import UserError
from convmixer_suite.ray_engine import FAULT_ENV, SINGLE_MACHINE_ENV, plan_replicas
from test_stream_eval import BS, labelled  # noqa: F401  (a fixture: labels that make top-1 4/7)
from test_stream_resume import NUM_PHOTOS, image_results, kill_after_records, slow_run_inputs  # noqa: F401
from test_stream_resume import BS as SLOW_BS
from test_stream_resume import stream_args as slow_stream_args

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
    assert "2 replicas of 0.5 CPU each" in distributed.stdout
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


def test_a_killed_ray_driver_resumes_with_fewer_batches_and_the_same_json(tmp_path, slow_run_inputs, ray_address):
    model, images, labels = slow_run_inputs
    whole = run_script(*slow_stream_args(model, images, labels, tmp_path / "local"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "ray"
    ray_args = ("--engine", "ray", "--ray-address", ray_address, "--replicas", 2)
    kill_after_records(slow_stream_args(model, images, labels, out, "--record-every", 0, *ray_args),
                       records_folder(out / f"result_bs{SLOW_BS}.json"), min_parts=2, env=RAY_ENV)
    assert not (out / f"result_bs{SLOW_BS}.json").exists()
    resumed = run_script(*slow_stream_args(model, images, labels, out, *ray_args), env=RAY_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert 0 < resumed.stdout.count("Inference time:") < NUM_PHOTOS // SLOW_BS
    assert (out / f"result_bs{SLOW_BS}.json").read_text() == \
        (tmp_path / "local" / f"result_bs{SLOW_BS}.json").read_text()


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
    assert "2 replicas of 0.5 CPU each" in (work / f"msame_bs{BS}.txt").read_text()
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


# ---- replica planning (no cluster needed) -----------------------------------------------------------------

@pytest.mark.parametrize("cpus", [1, 2, 3, 16])
@pytest.mark.parametrize("replicas", [None, 1, 2, 3, 8])
def test_replicas_always_leave_a_decode_task_room(cpus, replicas):
    """Ray schedules by declared CPUs: whatever the replicas, one decode task must still fit beside them."""
    plan = plan_replicas({"CPU": cpus}, 1, replicas, None, None)
    assert plan.replicas == (replicas or 1) and 0 < plan.num_cpus <= 1
    assert plan.replicas * plan.num_cpus + plan.decode_cpus <= cpus + 1e-9
    assert plan.decode_slots(cpus) >= 1
    assert plan.threads == (None if plan.replicas == 1 else max(1, cpus // plan.replicas))


def test_a_replica_takes_one_gpu_or_npu_and_sees_it_as_device_0():
    gpus = plan_replicas({"CPU": 16, "GPU": 4}, 2, None, "cuda:3", None)
    assert (gpus.replicas, gpus.device, gpus.remote_args()["num_gpus"]) == (4, "cuda:0", 1)
    assert plan_replicas({"CPU": 16, "GPU": 4}, 1, 2, "gpu.1", 4).device == "gpu.0"
    npus = plan_replicas({"CPU": 8, "NPU": 8}, 1, None, "3", None)
    assert (npus.replicas, npus.device, npus.remote_args()["resources"]) == (8, "0", {"NPU": 1})
    assert "num_gpus" not in npus.remote_args() and npus.threads is None
    with pytest.raises(UserError, match="has no GPU resource"):
        plan_replicas({"CPU": 2}, 1, None, "cuda:0", None)
    with pytest.raises(UserError, match="--replicas 3: the Ray cluster has 2 NPUs"):
        plan_replicas({"CPU": 8, "NPU": 2}, 1, 3, "0", None)


def test_one_cpu_replica_per_node_by_default():
    plan = plan_replicas({"CPU": 8}, 4, None, None, None)
    assert (plan.replicas, plan.threads, plan.decode_cpus) == (4, None, 1.0)
    assert plan.num_cpus == 1.0


def test_an_address_where_no_cluster_listens_is_one_line_at_once(tmp_path, small_onnx, photo_folder, labelled):
    pytest.importorskip("ray")
    port = free_port()  # closed again: nothing listens there
    started = time.monotonic()
    result = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "out", "--engine", "ray",
                         "--ray-address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there" in result.stderr.strip().splitlines()[-1]
    assert time.monotonic() - started < 60  # Ray alone waits minutes

"""The streaming evaluation on Ray Data: model replicas on this machine's cores, its GPUs or NPUs, or a cluster's.

The pipeline, one Ray Data dataset streamed to the driver:

1. ``read_binary_files`` reads the image files still to run (a path on a shared file system, or any URI pyarrow
   reads, works on every node), one file per block;
2. ``decode_images`` tasks decode them and apply the eval transform (``transform.py``, byte for byte the local
   engine's), leaving a bad image as a zero row and its error;
3. an actor pool of ``Replica`` (one backend each, loaded once) runs the model on batches of ``batch_size`` rows,
   which Ray Data forms from the one-row blocks in order (``preserve_order``), so the batches are the local
   engine's: sorted images, the last one padded with zero rows;
4. the driver takes the rows in order, checks that each batch came back whole, and hands a ``BatchResult`` per
   batch to ``stream.record_results``, which logs, records and times it as for the local engine.

Resources: a replica takes one GPU (``num_gpus``) for ``--device cuda:N``/``tensorrt:N``/``gpu.N``, one NPU
(Ray's ``NPU`` resource, which sets ``ASCEND_RT_VISIBLE_DEVICES``) for an NPU id, else a share of the CPUs. Ray
schedules by declared CPUs: replicas declare fractions that leave ``decode_cpus`` free, so decode tasks always
have room (two replicas of one CPU each on two cores would leave none, and the run would hang).

Fault tolerance is Ray's: Ray Data restarts a replica whose process dies (``max_restarts``) and retries its
batches (``max_task_retries``).
"""
import dataclasses
import logging
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convmixer_suite.backends import IMAGE_SHAPE, parse_device
from convmixer_suite.cli import UserError
from convmixer_suite.scoring import top_k
from convmixer_suite.stream import BatchResult, EvalJob, record_results
from convmixer_suite.transform import EvalTransform, load_rgb

INSTALL_HINT = "--engine ray needs Ray Data, which is not installed; install it with: pip install -r requirements-dist.txt"
REPO = Path(__file__).resolve().parent.parent
# "0" makes Ray treat this as a single-machine instance: its processes talk over 127.0.0.1 only.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Tests only: a marker file's path. The first replica call that finds no marker creates it and ends its own
# process, as a crashed replica would; Ray must restart the replica and run the batch again.
FAULT_ENV = "CONVMIXER_TEST_REPLICA_EXIT_ONCE"
# A replica whose process dies is restarted, and its batch retried, this many times before the run fails.
REPLICA_RESTARTS = 5


def import_ray(address=None):
    """Ray and Ray Data, or a UserError with the one-line install hint.

    For a Ray started here (no ``address``), Ray is told this is a single-machine instance, so that it runs on
    127.0.0.1 rather than on this machine's network address; Ray reads that setting when it is imported.
    """
    if address is None:
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data's notices would bury the run's own lines
    return ray


def connect(ray, address) -> None:
    """Start Ray on this machine (``address`` None) or join the cluster at ``address`` (``auto`` or HOST:PORT).

    Workers import this repository's modules from the path the driver has, so every node needs the repository at
    the same path (a shared file system, as for the images). Worker output stays in Ray's logs: the driver's stdout
    is an msame log that test/parse.py reads.
    """
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if os.environ.get(FAULT_ENV):
        env_vars[FAULT_ENV] = os.environ[FAULT_ENV]
    options = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env={"env_vars": env_vars})
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **options)
        return
    check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--ray-address {address}: cannot join a Ray cluster there ({str(exc).splitlines()[0]})") \
            from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a HOST:PORT where nothing listens: Ray itself would wait minutes for a cluster that is not there."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto": Ray looks up the running cluster itself and says so at once when there is none
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                        f"start one with: ray start --head --port={port}") from None


@dataclass
class ReplicaPlan:
    """How many model replicas, what each declares to Ray, and the device and threads each backend gets."""
    replicas: int
    num_cpus: float
    decode_cpus: float
    num_gpus: float = 0
    resources: dict = field(default_factory=dict)
    device: "str | None" = None
    threads: "int | None" = None

    def decode_slots(self, cpus: float) -> int:
        """Decode tasks that can run beside the replicas on ``cpus`` CPUs."""
        return max(1, int((cpus - self.replicas * self.num_cpus) // self.decode_cpus))

    def remote_args(self) -> dict:
        args = {"num_cpus": self.num_cpus, "max_restarts": REPLICA_RESTARTS, "max_task_retries": REPLICA_RESTARTS}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.resources:
            args["resources"] = self.resources
        return args

    def describe(self) -> str:
        where = ("1 GPU" if self.num_gpus else "1 NPU" if self.resources else f"{self.num_cpus:g} CPU")
        threads = self.threads or ("the node's cores" if where.endswith("CPU") else "runtime default")
        return (f"{self.replicas} replica{'s' if self.replicas > 1 else ''} of {where} each "
                f"(device {self.device or 'cpu'}, threads {threads}); "
                f"decode tasks of {self.decode_cpus:g} CPU")


def round_down(value: float) -> float:
    """Ray counts resources in units of 1/10000."""
    return int(value * 10000) / 10000


def plan_replicas(cluster: dict, nodes: int, replicas, device, threads) -> ReplicaPlan:
    """Replicas and their resources from what the cluster has (``ray.cluster_resources()``) and the flags.

    Default replicas: one per accelerator of the asked kind, else one per node. The CPUs replicas declare leave
    ``decode_cpus`` (one, or half a one-CPU cluster) for decode tasks, so that the pipeline cannot stall.
    """
    kind, _ = parse_device(device)
    cpus = float(cluster.get("CPU", 0))
    if cpus <= 0:
        raise UserError("the Ray cluster has no CPUs for decode tasks")
    decode_cpus = round_down(min(1.0, cpus / 2))
    accelerator = {"cuda": "GPU", "tensorrt": "GPU", "gpu": "GPU", "npu": "NPU"}.get(kind)
    if accelerator:
        available = int(cluster.get(accelerator, 0))
        if available < 1:
            raise UserError(f"--device {device}: the Ray cluster has no {accelerator} resource "
                            f"(start Ray on a machine with one, or use --device cpu)")
        replicas = replicas or available
        if replicas > available:
            raise UserError(f"--replicas {replicas}: the Ray cluster has {available} {accelerator}s, one per replica")
    replicas = replicas or nodes
    num_cpus = round_down(min(1.0, (cpus - decode_cpus) / replicas))
    if num_cpus <= 0:
        raise UserError(f"--replicas {replicas}: too many for the {cpus:g} CPUs of the Ray cluster")
    plan = ReplicaPlan(replicas, num_cpus, decode_cpus)
    if accelerator == "GPU":
        plan.num_gpus, plan.device = 1, f"{kind}{'.' if kind == 'gpu' else ':'}0"  # Ray sets the visible GPU
    elif accelerator == "NPU":
        plan.resources, plan.device = {"NPU": 1}, "0"  # Ray sets ASCEND_RT_VISIBLE_DEVICES to the replica's NPU
    if threads is None and not accelerator and replicas > nodes:
        threads = max(1, int(cpus // replicas))  # several CPU replicas on a node share its cores
    plan.threads = threads
    return plan


def decode_images(batch: dict, transform: dict) -> dict:
    """Ray Data task: file bytes -> eval-transformed images; a bad image becomes a zero row and its error."""
    tf = EvalTransform.from_dict(transform)
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths),) + tf.output_shape, dtype=np.float32)
    errors, seconds = [], []
    for i, (path, data) in enumerate(zip(paths, batch["bytes"])):
        started = time.perf_counter()
        try:
            images[i] = tf(load_rgb(path, data=bytes(data)))
            errors.append("")
        except UserError as exc:
            errors.append(str(exc))
        seconds.append(time.perf_counter() - started)
    return {"path": np.array(paths, dtype=object), "image": images, "error": np.array(errors, dtype=object),
            "decode_s": np.array(seconds)}


class Replica:
    """Ray Data actor: one backend, loaded once; runs the model on one batch per call (padded to batch_size)."""

    def __init__(self, job: EvalJob, device, threads):
        import ray
        if threads is None and parse_device(device)[0] == "cpu":
            # Ray sets OMP_NUM_THREADS to the CPUs an actor declares (a fraction rounds to 1), which ONNX Runtime
            # takes as its default: a CPU replica that is alone on its node uses the node's cores instead.
            threads = os.cpu_count()
        self.backend = job.load_backend(device=device, threads=threads)
        self.batch_size, self.topk = job.batch_size, job.topk
        self.name = f"pid {os.getpid()} on {ray.util.get_node_ip_address()}"

    def __call__(self, batch: dict) -> dict:
        exit_once_for_test()
        n = len(batch["path"])
        images = np.zeros((self.batch_size,) + IMAGE_SHAPE, dtype=np.float32)
        images[:n] = batch["image"]
        started = time.perf_counter()
        logits = self.backend.predict(images)
        latency_ms = (time.perf_counter() - started) * 1000.0
        classes, scores = top_k(logits[:n], self.topk)
        return {"path": batch["path"], "error": batch["error"], "decode_s": batch["decode_s"], "classes": classes,
                "scores": scores, "num_classes": np.full(n, logits.shape[1]), "latency_ms": np.full(n, latency_ms),
                "replica": np.array([self.name] * n, dtype=object)}


def exit_once_for_test() -> None:
    marker = os.environ.get(FAULT_ENV)
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        os._exit(1)


def build_dataset(ray, job: EvalJob, plan: ReplicaPlan):
    paths = [str(job.paths[i]) for k in job.batches
             for i in range(k * job.batch_size, min((k + 1) * job.batch_size, len(job.paths)))]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # batches in run order, cut as the local engine cuts them
    context.enable_progress_bars = False  # the driver shows its own (tqdm on stderr)
    context.print_on_execution_start = False
    files = ray.data.read_binary_files(paths, include_paths=True, override_num_blocks=len(paths),
                                       num_cpus=plan.decode_cpus)
    decoded = files.map_batches(decode_images, batch_size=None, batch_format="numpy", num_cpus=plan.decode_cpus,
                                fn_kwargs={"transform": EvalTransform().to_dict()})
    # Decoding runs in tasks of its own, fused with the reads, never inside the replicas: Ray Data fuses a task
    # into the next operator only when their remote arguments match, and the replicas' restart options differ.
    runtime = dataclasses.replace(job, paths=[], names=[], labels=[], batches=[],  # what a replica needs
                                  model=str(Path(job.model).resolve()),  # replicas run in other folders
                                  calib=str(Path(job.calib).resolve()) if job.calib else None)
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_restarts and max_task_retries
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return decoded.map_batches(Replica, batch_size=job.batch_size, batch_format="numpy",
                                   compute=ray.data.ActorPoolStrategy(size=plan.replicas),
                                   fn_constructor_kwargs={"job": runtime, "device": plan.device,
                                                          "threads": plan.threads},
                                   **plan.remote_args())


def batch_results(rows, job: EvalJob):
    """The dataset's rows, in order, regrouped into one BatchResult per batch of the job."""
    rows = iter(rows)
    bs = job.batch_size
    for k in job.batches:
        expected = job.paths[k * bs:(k + 1) * bs]
        got = [next(rows) for _ in expected]
        if [Path(str(r["path"])).name for r in got] != [Path(p).name for p in expected] or \
                len({(r["replica"], float(r["latency_ms"])) for r in got}) != 1:
            raise RuntimeError(f"Ray Data returned batch {k} out of order or split across model calls")
        first = got[0]
        yield BatchResult(k, np.stack([r["classes"] for r in got]), np.stack([r["scores"] for r in got]),
                          int(first["num_classes"]), float(first["latency_ms"]),
                          {row: str(r["error"]) for row, r in enumerate(got) if r["error"]},
                          decode_s=float(sum(r["decode_s"] for r in got)), replica=str(first["replica"]))


USER_ERROR_LINE = re.compile(r"^\S*UserError: (.+)$", re.MULTILINE)


def wrapped_user_error(exc: BaseException) -> "UserError | None":
    """The UserError a Ray task or actor raised, from the exception Ray hands the driver: a task's error carries
    it as ``cause``; an actor that failed to start only as text (``…UserError: message``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return UserError(str(exc))
        found = USER_ERROR_LINE.findall(str(exc))
        if found:
            return UserError(found[-1].strip())
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def evaluate(job: EvalJob, store, address, replicas, announce=print, log=print, progress=None):
    """The Ray engine: returns (StreamTimes, run info for the summary), as stream.evaluate_local does."""
    ray = import_ray(address)
    connect(ray, address)
    try:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        plan = plan_replicas(ray.cluster_resources(), nodes, replicas, job.device, job.threads)
        announce(f"Ray {ray.__version__} at {ray.get_runtime_context().gcs_address}: {nodes} "
                 f"node{'s' if nodes > 1 else ''}, {ray.cluster_resources().get('CPU', 0):g} CPUs; "
                 f"{len(job.batches)} batches of {job.batch_size} on {plan.describe()}")
        dataset = build_dataset(ray, job, plan)
        _, times, _ = record_results(batch_results(dataset.iter_rows(), job), store, job.names, job.labels,
                                     job.batch_size, job.topk, job.skip_bad, log, progress,
                                     workers=plan.decode_slots(ray.cluster_resources().get("CPU", 1)))
    except Exception as exc:  # a replica's UserError (say, a model of another batch size) comes back wrapped
        user_error = wrapped_user_error(exc)
        if user_error is None:
            raise
        raise user_error from None
    finally:
        ray.shutdown()
    return times, {"engine": "ray", "ray_version": ray.__version__, "backend": job.backend,
                   "replicas": plan.replicas, "replica_resources": plan.remote_args(), "decode_cpus": plan.decode_cpus,
                   "replica_device": plan.device, "replica_threads": plan.threads}

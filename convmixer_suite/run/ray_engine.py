"""The streaming evaluation on Ray Data: model replicas on this machine's cores, its GPUs or NPUs, or a cluster's.

The pipeline, one Ray Data dataset streamed to the driver, one row per model batch throughout:

1. the driver lists the batches still to run (``from_items``: one row, and one block, per list of batches with
   their indexes and image paths), in run order: about ``BLOCK_IMAGES`` images a block, but the first blocks of
   one batch, then two, ... (``block_sizes``), so that the first batch waits for one batch's decoding only;
2. ``ray_decode.decode_block`` tasks, spread over every node, read and decode a block's images with the local
   engine's own code (``transform.load_batch``): each batch becomes one row holding its whole
   [batch_size,3,224,224] array, padded with zero rows as the local engine pads it, and its bad images (path on a
   shared file system: the same path on every node, as for the model);
3. an actor pool of ``Replica`` (one backend each, loaded once) runs the model on one row per call
   (``batch_size=1``): a batch can never be cut across model calls, and comes back as one row of top-k results;
4. the driver takes the rows in order (``preserve_order``), checks each is the batch that was due, and hands a
   ``BatchResult`` per batch to ``stream.record_results``, which logs, records and times it as for the local
   engine. A row that is not the batch due stops the run with one line; so does a stall (``StallWatch``): no
   batch for ``--stall-timeout`` seconds, naming the resources Ray still waits for. The records written until
   then stay for the rerun.

Resources (``plan_replicas``, per node from ``ray.nodes()``): a replica takes one GPU (``num_gpus``) for
``--device cuda:N``/``tensorrt:N``/``gpu.N``, one NPU (Ray's ``NPU`` resource, which sets
``ASCEND_RT_VISIBLE_DEVICES``) for an NPU id, and declares ``REPLICA_CPUS`` of a CPU: its threads share the
node's cores with the decode tasks, as the local engine's model shares them with its decode workers (a replica
that declared a whole CPU would leave one decode task on a 2-core node where the local engine runs two). Decode
tasks declare just under one CPU each, so that every node runs one per core beside the replicas it may host;
a node that would host replicas with no room to decode beside them is refused before anything runs.

Fault tolerance is Ray's: Ray Data restarts a replica whose process or node dies (``max_restarts``), retries
its batch (``max_task_retries``), and runs again the decode tasks whose output was lost with a node.
"""
import dataclasses
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

import convmixer_suite
from convmixer_suite.runtimes.base import parse_device
from convmixer_suite.util.cli import failure_line
from convmixer_suite.util.errors import NotAvailable, UserError, first_line
from convmixer_suite.guide.manifest import batch_span, images_in_batch, num_batches
from convmixer_suite.run.ray_decode import decode_block
from convmixer_suite.guide.scoring import non_finite_rows, top_k, top_k_probabilities
from convmixer_suite.run.stream import BatchResult, EvalJob, record_results

INSTALL_HINT = "--engine ray needs Ray Data, which is not installed; install it with: pip install -r requirements-dist.txt"
# "0" makes Ray treat this as a single-machine instance: its processes talk over 127.0.0.1 only.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Tests only: a marker file's path. The first replica call that finds no marker creates it and ends its own
# process, as a crashed replica would; Ray must restart the replica and run the batch again.
FAULT_ENV = "CONVMIXER_TEST_REPLICA_EXIT_ONCE"
# Tests only: "MARKER:K". The replica that gets batch K while no MARKER exists creates it and never returns.
HANG_ENV = "CONVMIXER_TEST_REPLICA_HANG_ONCE"
# A replica whose process dies is restarted, and its batch retried, this many times before the run fails.
REPLICA_RESTARTS = 5
REPLICA_CPUS = 0.01  # what a replica declares: enough to keep CPU replicas off nodes without CPUs
MIN_DECODE_CPUS = 0.5  # a node that hosts replicas keeps at least this for one decode task
BLOCK_IMAGES = 128  # images a decode task reads and decodes in one go (about a second of one core)
MIN_STALL_S = 300.0  # the default stall timeout is never shorter
STALL_BATCHES = 20  # ... and at least this many times the slowest batch seen so far


def import_ray(address=None):
    """Ray and Ray Data, or a UserError with the one-line install hint.

    For a Ray started here (no ``address``), Ray is told this is a single-machine instance, so that it runs on
    127.0.0.1 rather than on this machine's network address; Ray reads that setting when it is imported.
    Ray's automatic ``ray.init`` on the first call without one is turned off (also read on import): once a failed
    run has shut Ray down, a call still under way in the rows' thread or Ray Data's own started a new local Ray,
    whose messages and traceback came after the run's one line (seen once in the stall test).
    """
    if address is None:
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise NotAvailable(INSTALL_HINT) from exc
    quiet_console(logging.getLogger("ray.data"))
    return ray


def quiet_console(logger) -> None:
    """Nothing of Ray Data's on the console: its notices, and the tracebacks of tasks it retries after a lost
    node, would bury the run's own lines (a failure is the driver's one line). They stay in Ray Data's log file
    (``logs/ray-data/`` of Ray's session folder), which its other handler writes."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL + 1)


def runtime_env(address) -> dict:
    """What every worker of a cluster (``address`` given) gets: this suite's code through Ray (``py_modules``:
    uploaded once to the cluster, so a node needs neither the repository nor the package installed; the images
    and the model must still be at the same path on every node), and the tests' fault markers.

    Nothing for a Ray started here: its workers are this machine's processes, started with this process's
    environment and sys.path, so they import these very files. And only workers without a runtime_env of their
    own can be the ones Ray starts ahead with ``ray.init``: with one, each decode task and replica waited for a
    process of its own to start, several times slower (docs/ray.md)."""
    if address is None:
        return {}
    env_vars = {name: os.environ[name] for name in (FAULT_ENV, HANG_ENV) if os.environ.get(name)}
    return {"py_modules": [convmixer_suite], "env_vars": env_vars}


def connect(ray, address) -> None:
    """Start Ray on this machine (``address`` None) or join the cluster at ``address`` (``auto`` or HOST:PORT).

    Worker output stays in Ray's logs: the driver's stdout is an msame log that test/parse.py reads.
    """
    options = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env=runtime_env(address))
    if address is None:
        # Ray runs its workers at nice 15 by default; here they are the evaluation itself (as the local engine's
        # decode processes are), not background work to yield to whatever else runs on the machine.
        # "local": a Ray of this run's own, never one that another user started on this machine (which Ray would
        # otherwise join, from RAY_ADDRESS or /tmp/ray/ray_current_cluster, and then refuse num_cpus).
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 _system_config={"worker_niceness": 0}, **options)
        return
    check_reachable(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--ray-address {address}: cannot join a Ray cluster there ({first_line(exc)})") from exc


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a HOST:PORT where nothing listens: Ray itself would wait minutes for a cluster that is not there."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto": Ray looks up the running cluster itself and says so at once when there is none
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                        f"start one with: ray start --head --port={port}") from exc


def alive_nodes(ray) -> list:
    """Every live node's id and resources (``ray.nodes()``), as plan_replicas takes them."""
    return [{"id": node["NodeID"], **node.get("Resources", {})} for node in ray.nodes() if node.get("Alive")]


@dataclass
class ReplicaPlan:
    """How many model replicas, what each declares to Ray, the device and threads each backend gets, and the
    decode tasks each node runs at once beside the replicas it hosts."""
    replicas: int
    decode_cpus: float
    decode_slots: dict  # node id -> decode tasks at once
    num_cpus: float = REPLICA_CPUS
    num_gpus: float = 0
    resources: dict = field(default_factory=dict)
    device: "str | None" = None
    threads: "int | None" = None

    @property
    def decode_tasks(self) -> int:
        return sum(self.decode_slots.values())

    def remote_args(self) -> dict:
        args = {"num_cpus": self.num_cpus, "max_restarts": REPLICA_RESTARTS, "max_task_retries": REPLICA_RESTARTS}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.resources:
            args["resources"] = self.resources
        return args

    def describe(self) -> str:
        where = "1 GPU" if self.num_gpus else "1 NPU" if self.resources else "the node's cores"
        threads = self.threads or ("the node's cores" if where.endswith("cores") else "runtime default")
        nodes = len(self.decode_slots)
        return (f"{self.replicas} replica{'s' if self.replicas > 1 else ''} on {where} each "
                f"(device {self.device or 'cpu'}, threads {threads}); {self.decode_tasks} decode tasks of "
                f"{self.decode_cpus:g} CPU at once on {nodes} node{'s' if nodes > 1 else ''}")


def round_down(value: float) -> float:
    """Ray counts resources in units of 1/10000."""
    return math.floor(value * 10000) / 10000


def plan_replicas(nodes: list, replicas, device, threads) -> ReplicaPlan:
    """Replicas and their resources from each live node's resources (``alive_nodes``) and the flags.

    Default replicas: one per accelerator of the asked kind, else one per node with CPUs. Ray places replicas
    itself, so each node is planned for the most replicas it could get (all CPU replicas; as many accelerator
    replicas as it has accelerators): decode tasks declare what leaves one per core (at most one CPU each)
    beside those, so decoding can never be starved on any node. A node that could host a replica but not keep
    ``MIN_DECODE_CPUS`` beside it is refused with one line naming it.
    """
    kind, _ = parse_device(device)
    accelerator = {"cuda": "GPU", "tensorrt": "GPU", "gpu": "GPU", "npu": "NPU"}.get(kind)
    cpus = {node["id"]: float(node.get("CPU", 0)) for node in nodes}
    if not any(cpus.values()):
        raise UserError("the Ray cluster has no CPUs for decode tasks")
    if accelerator:
        hosts = {node["id"]: int(node.get(accelerator, 0)) for node in nodes if node.get(accelerator, 0) >= 1}
        available = sum(hosts.values())
        if available < 1:
            raise UserError(f"--device {device}: the Ray cluster has no {accelerator} resource "
                            f"(start Ray on a machine with one, or use --device cpu)")
        replicas = replicas or available
        if replicas > available:
            raise UserError(f"--replicas {replicas}: the Ray cluster has {available} {accelerator}s, one per replica")
        most = {node: min(replicas, count) for node, count in hosts.items()}
    else:
        hosts = [node for node, n in cpus.items() if n >= REPLICA_CPUS]
        replicas = replicas or len(hosts)
        most = {node: replicas for node in hosts}
    room = {node: cpus[node] - most.get(node, 0) * REPLICA_CPUS for node in cpus}
    for node in most:
        if room[node] < MIN_DECODE_CPUS:
            raise UserError(f"Ray node {node[:12]} ({cpus[node]:g} CPUs) could host {most[node]} replica"
                            f"{'s' if most[node] > 1 else ''} but would keep under {MIN_DECODE_CPUS:g} CPU to decode "
                            f"beside {'them' if most[node] > 1 else 'it'}: give it more CPUs (ray start --num-cpus) "
                            f"or ask for fewer --replicas")
    decode_cpus = round_down(min([1.0] + [room[node] / max(1, math.floor(cpus[node])) for node in most]))
    plan = ReplicaPlan(replicas, decode_cpus, {node: int(room[node] // decode_cpus) for node in cpus
                                               if room[node] >= decode_cpus})
    if accelerator == "GPU":
        plan.num_gpus, plan.device = 1, f"{kind}{'.' if kind == 'gpu' else ':'}0"  # Ray sets the visible GPU
    elif accelerator == "NPU":
        plan.resources, plan.device = {"NPU": 1}, "0"  # Ray sets ASCEND_RT_VISIBLE_DEVICES to the replica's NPU
    if threads is None and not accelerator and replicas > len(hosts):
        per_node = -(-replicas // len(hosts))  # several CPU replicas on a node share its cores
        threads = max(1, int(min(cpus[node] for node in hosts) // per_node))
    plan.threads = threads
    return plan


class Replica:
    """Ray Data actor: one backend, loaded once; runs the model on one whole batch (one row) per call."""

    def __init__(self, job: EvalJob, device, threads):
        import ray
        if threads is None and parse_device(device)[0] == "cpu":
            # Ray sets OMP_NUM_THREADS to the CPUs an actor declares (a fraction rounds to 1), which ONNX Runtime
            # takes as its default: a CPU replica that is alone on its node uses the node's cores instead.
            threads = os.cpu_count()
        try:
            self.backend, self.failure = job.run.create_backend(device=device, threads=threads), None
        except Exception as exc:  # raised by each call instead: Ray hands the driver a call's exception itself,
            self.backend, self.failure = None, exc  # but one of an actor that failed to start only as text
        self.topk = job.topk
        context = ray.get_runtime_context()
        self.name = f"pid {os.getpid()} on node {context.get_node_id()[:12]} ({ray.util.get_node_ip_address()})"

    def __call__(self, row: dict) -> dict:
        if self.failure is not None:
            raise self.failure
        k, n = int(row["k"][0]), int(row["n"][0])
        exit_or_hang_for_test(k)
        started = time.perf_counter()
        logits = self.backend.predict(row["image"][0])
        latency_ms = (time.perf_counter() - started) * 1000.0
        classes, scores = top_k(logits[:n], self.topk, source=f"batch {k}")
        non_finite = np.zeros(n, dtype=np.int64)
        for r, count in non_finite_rows(logits[:n]).items():
            non_finite[r] = count
        return {"k": row["k"], "n": row["n"], "classes": classes[None], "scores": scores[None],
                "non_finite": non_finite[None],
                "probabilities": top_k_probabilities(logits[:n], classes)[None],
                "num_classes": [logits.shape[1]], "latency_ms": [latency_ms], "bad": row["bad"],
                "decode_s": row["decode_s"], "replica": np.array([self.name], dtype=object)}


def exit_or_hang_for_test(k: int) -> None:
    """The tests' faults (FAULT_ENV, HANG_ENV): nothing unless they are set."""
    marker = os.environ.get(FAULT_ENV)
    if marker and create_marker(marker):
        os._exit(1)
    marker, _, hang_k = os.environ.get(HANG_ENV, "").rpartition(":")
    if marker and int(hang_k) == k and create_marker(marker):
        time.sleep(24 * 3600)


def create_marker(path) -> bool:
    try:
        with open(path, "x"):
            return True
    except FileExistsError:
        return False


def block_sizes(batches: int, most: int, parallel: int) -> list:
    """Batches per decode block, ``batches`` in all: ``parallel`` blocks of 1 batch, then ``parallel`` of 2, 4, ...
    up to ``most``. A block comes out of its task only when all its batches are decoded, and the replicas cannot
    start before the first block does; the small first blocks let them start after one batch's decoding."""
    sizes, size = [], 1
    while batches > 0:
        for _ in range(parallel):
            take = min(size, batches)
            if take:
                sizes.append(take)
                batches -= take
        size = min(most, 2 * size)
    return sizes


def build_dataset(ray, job: EvalJob, plan: ReplicaPlan):
    """The job's pending batches -> decode tasks -> replicas, as the module docstring describes: blocks of
    about BLOCK_IMAGES images (ramping up from one batch), but at least two blocks per decode task that can run
    at once."""
    bs = job.batch_size
    listed = [[k, [str(p) for p in job.paths[batch_span(k, bs)]]] for k in job.batches]
    most = max(1, min(num_batches(BLOCK_IMAGES, bs), len(listed) // (2 * plan.decode_tasks)))
    blocks, first = [], 0
    for size in block_sizes(len(listed), most, plan.decode_tasks):
        blocks.append({"batches": json.dumps(listed[first:first + size])})
        first += size
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in run order
    context.enable_progress_bars = False  # the driver shows its own (tqdm on stderr)
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # a replica's exception, not Ray Data's wrapper of it without it
    # Ray Data's default reservation held decoding to one task at a time on 2 CPUs (docs/ray.md)
    context.op_resource_reservation_enabled = False
    listing = ray.data.from_items(blocks, override_num_blocks=len(blocks))  # one block per row
    decoded = listing.map_batches(decode_block, batch_size=None, batch_format="numpy", num_cpus=plan.decode_cpus,
                                  fn_kwargs={"batch_size": bs, "transform": job.transform.to_dict()})
    # Decoding runs in tasks of its own, never inside the replicas: Ray Data fuses a task into the next operator
    # only when their remote arguments match, and the replicas' differ.
    runtime = dataclasses.replace(job, paths=[], names=[], labels=[], batches=[],  # what a replica needs
                                  run=job.run.with_absolute_paths())  # replicas run in other folders
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for max_restarts and max_task_retries
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return decoded.map_batches(Replica, batch_size=1, batch_format="numpy",
                                   compute=ray.data.ActorPoolStrategy(size=plan.replicas),
                                   fn_constructor_kwargs={"job": runtime, "device": plan.device,
                                                          "threads": plan.threads},
                                   **plan.remote_args())


class StallWatch:
    """How long the driver waits for the next batch: ``timeout_s`` when given, else the longer of MIN_STALL_S
    and STALL_BATCHES times the slowest batch so far. The first batch waits for the start-up too (worker
    processes, replicas loading the model): at least MIN_STALL_S whatever ``timeout_s``."""

    def __init__(self, timeout_s=None):
        self.fixed_s = timeout_s
        self.slowest_s = None

    def saw_batch(self, latency_ms: float) -> None:
        self.slowest_s = max(self.slowest_s or 0.0, latency_ms / 1000.0)

    @property
    def timeout_s(self) -> float:
        if self.slowest_s is None:
            return max(MIN_STALL_S, self.fixed_s or 0.0)
        return self.fixed_s or max(MIN_STALL_S, STALL_BATCHES * self.slowest_s)


def pending_demand(ray) -> str:
    """What Ray still waits to place, as ``ray status`` shows it: the resource shapes of the tasks and actors
    no node has room for, from the GCS."""
    try:
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.sdk import get_cluster_resource_state
        state = get_cluster_resource_state(GcsClient(ray.get_runtime_context().gcs_address))
    except Exception as exc:  # a diagnostic only: the run stops with its line either way
        return f"unknown ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    shapes = [f"{req.count} x {dict(req.request.resources_bundle)}" for req in state.pending_resource_requests]
    return ", ".join(shapes) or "none (every task and replica is placed: one is running without finishing)"


def rows_in_background(dataset, out: queue.Queue) -> threading.Thread:
    """Pull the dataset's rows in a thread of their own (so that the driver can stop waiting for them), putting
    each row, then None at the end, or the exception that ended the iteration."""
    def pull():
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for i in range(len(block["k"])):
                    out.put({name: column[i] for name, column in block.items()})
            out.put(None)
        except BaseException as exc:  # handed to the driver, which raises it
            out.put(exc)
    thread = threading.Thread(target=pull, name="ray-rows", daemon=True)
    thread.start()
    return thread


def batch_results(rows: queue.Queue, job: EvalJob, ray, watch: StallWatch):
    """The rows from ``rows_in_background``, checked to be the job's batches in order, as BatchResults."""
    for k in job.batches:
        try:
            row = rows.get(timeout=watch.timeout_s)
        except queue.Empty:
            raise UserError(f"Ray engine: no batch completed for {watch.timeout_s:g} s (--stall-timeout) while "
                            f"batch {k} was due; Ray's pending demand: {pending_demand(ray)}; the records so far "
                            f"are kept: the same command resumes") from None
        if isinstance(row, BaseException):
            raise row
        if row is None or int(row["k"]) != k:
            got = "the end of the rows" if row is None else f"batch {int(row['k'])}"
            raise UserError(f"Ray engine: Ray Data returned {got} where batch {k} was due; the records so far are "
                            f"kept: the same command resumes")
        n = images_in_batch(k, job.batch_size, len(job.paths))
        if row["classes"].shape[0] != n:
            raise UserError(f"Ray engine: Ray Data returned {row['classes'].shape[0]} rows of batch {k}, not {n}")
        watch.saw_batch(float(row["latency_ms"]))
        yield BatchResult(k, row["classes"], row["scores"], int(row["num_classes"]), float(row["latency_ms"]),
                          {int(r): message for r, message in json.loads(str(row["bad"])).items()},
                          decode_s=float(row["decode_s"]), replica=str(row["replica"]),
                          non_finite={int(r): int(c) for r, c in enumerate(row["non_finite"]) if c},
                          probabilities=row.get("probabilities"))


def driver_failure(exc: Exception) -> Exception:
    """What the driver raises for ``exc``, with ``exc`` as its cause: a task's or a replica's exception comes back
    as a RayTaskError holding it as ``cause`` (Ray Data raises it as it is: ``raise_original_map_exception``); a
    UserError among them is raised itself, one of the driver's own as it is, and any other failure (of a task,
    or of Ray, such as a node lost beyond the retries) in one line that says the run resumes."""
    from ray.exceptions import RayTaskError
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    if isinstance(cause, UserError) and not isinstance(cause, RayTaskError):
        return cause
    return RuntimeError(f"Ray engine: {failure_line(cause)}; the records so far are kept: the same command resumes")


def evaluate(job: EvalJob, store, address, replicas, announce=print, log=print, progress=None, stall_timeout_s=None):
    """The Ray engine: returns (StreamTimes, run info for the summary), as stream.evaluate_local does."""
    ray = import_ray(address)
    connect(ray, address)
    try:
        nodes = alive_nodes(ray)
        plan = plan_replicas(nodes, replicas, job.run.device, job.run.threads)
        announce(f"Ray {ray.__version__} at {ray.get_runtime_context().gcs_address}: {len(nodes)} "
                 f"node{'s' if len(nodes) > 1 else ''}, {sum(n.get('CPU', 0) for n in nodes):g} CPUs; "
                 f"{len(job.batches)} batches of {job.batch_size} on {plan.describe()}")
        rows = queue.Queue(maxsize=64)  # bounded: the driver holds a few batches' results at most
        rows_in_background(build_dataset(ray, job, plan), rows)
        _, times, _ = record_results(batch_results(rows, job, ray, StallWatch(stall_timeout_s)), store, job.names,
                                     job.labels, job.batch_size, job.topk, job.skip_bad, log, progress,
                                     workers=plan.decode_tasks)
    except Exception as exc:
        failure = driver_failure(exc)
        if failure is exc:
            raise
        raise failure from exc
    finally:
        ray.shutdown()
    return times, {"engine": "ray", "ray_version": ray.__version__, "backend": job.run.backend,
                   "replicas": plan.replicas, "replica_resources": plan.remote_args(), "decode_cpus": plan.decode_cpus,
                   "decode_tasks_per_node": plan.decode_slots, "replica_device": plan.device,
                   "replica_threads": plan.threads}

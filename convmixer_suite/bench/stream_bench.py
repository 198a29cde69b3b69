"""Side-by-side speed of the streaming engines where the pipeline, not the model, sets the pace.

    convmixer-stream-bench --work /tmp/stream_bench --num-images 5000 --engines local ray

The inputs are made here, reproducibly: ``pooled_colour_onnx`` writes a classifier that averages each colour
channel and maps the three means to 1000 logits (microseconds per batch, so decoding and the engine's own costs
are all that is measured), and ``repeated_photos`` writes a few distinct generated photos (guide.samples' pictures,
ImageNet-sized) and links them under as many file names as asked, with labels by guide.samples' rule. Each engine
runs the streaming evaluation (``python3 -m convmixer_suite.commands.stream_eval``) in a process of its own; its
figures, the driver's peak resident memory (``VmHWM``) among them, are read from the stream summary it writes.
The accuracy JSONs of all engines must be the same.
"""
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import atomic_path, write_text_atomic
from convmixer_suite.run.ray_engine import SINGLE_MACHINE_ENV
from convmixer_suite.bench.stream_process import run_stream_eval

PHOTO_SIZE = (500, 375)  # the most common ImageNet validation size
# Ray on one machine: 127.0.0.1 only (not the machine's network address), no token file shared with any other Ray
# here, and workers at the local engine's priority (Ray's default is nice 15; ray_engine does the same for a Ray
# it starts itself).
LOOPBACK_ENV = {SINGLE_MACHINE_ENV: "0", "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}


def pooled_colour_onnx(path, seed: int = 0) -> Path:
    """An ONNX classifier: GlobalAveragePool over each channel, then a seeded 3x1000 Gemm; any batch size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(3, 1000)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.normal(size=(1000,)).astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["means"]),
         helper.make_node("Gemm", ["means", "weight", "bias"], ["output"])],
        "pooled_colour", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return path


def repeated_photos(folder, num_images: int, distinct: int = 50) -> tuple:
    """``folder/val`` with ``num_images`` JPEGs (hard links to ``distinct`` generated photos) and
    ``folder/val_label.txt``; returns (images folder, labels file). Kept when already complete."""
    # Imported here: guide.samples imports torch, which the other uses of this module (the loopback cluster,
    # the table) do not need.
    from convmixer_suite.guide.samples import label_of, sample_picture
    folder = Path(folder)
    val, labels = folder / "val", folder / "val_label.txt"
    lines = [f"ILSVRC2012_val_{i:08d}.JPEG {label_of(i)}" for i in range(1, num_images + 1)]
    if labels.is_file() and labels.read_text() == "\n".join(lines) + "\n":
        return val, labels
    originals = folder / "distinct"
    originals.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(distinct):
        source = originals / f"photo_{i:03d}.JPEG"
        if not source.is_file():
            with atomic_path(source) as tmp:
                sample_picture(i, size=PHOTO_SIZE).save(tmp, format="JPEG", quality=90)
        sources.append(source)
    val.mkdir(exist_ok=True)
    for old in val.iterdir():
        old.unlink()
    for i in range(1, num_images + 1):
        os.link(sources[i % distinct], val / f"ILSVRC2012_val_{i:08d}.JPEG")
    write_text_atomic(labels, "\n".join(lines) + "\n")
    return val, labels


def run_engine(engine, model, images, labels, out, batch_size, extra=()) -> dict:
    """One engine's run (a fresh one) in a process of its own: its stream summary's figures and its wall time."""
    argv = ["--model", model, "--image-path", images, "--annotation-file-path", labels, "--result-json-path", out,
            "--json-file-name", f"{engine}.json", "--batch-size", batch_size, "--engine", engine, "--fresh", *extra]
    run = run_stream_eval(argv, Path(out) / f"{engine}.json", f"--engine {engine}")
    summary = run["summary"]
    if summary["driver_peak_rss_mb"] is None:
        raise UserError("this system has no /proc/self/status VmHWM line (peak memory is measured on Linux only)")
    stages = summary["stages"]
    return {"engine": engine, "wall_s": run["wall_s"], "driver_peak_rss_mb": summary["driver_peak_rss_mb"],
            **{key: stages[key] for key in ("end_to_end_images_per_s", "first_batch_s",
                                            "after_first_batch_images_per_s")},
            "replicas": {name: {key: r[key] for key in ("images", "end_to_end_images_per_s")}
                         for name, r in stages["replicas"].items()},
            "accuracy_json": run["accuracy_json"]}


def side_by_side(work, num_images: int, engines, batch_size: int = 32, ray_args=()) -> list:
    """Every engine's figures on the same made-up inputs, one after the other; their JSONs must agree."""
    work = Path(work)
    images, labels = repeated_photos(work / f"photos_{num_images}", num_images)
    model = pooled_colour_onnx(work / "pooled_colour.onnx")
    rows = [run_engine(engine, model, images, labels, work / "out", batch_size,
                       ray_args if engine == "ray" else ()) for engine in engines]
    if len({row["accuracy_json"] for row in rows}) != 1:
        raise UserError(f"the engines' accuracy JSONs in {work / 'out'} differ")
    return rows


@contextlib.contextmanager
def loopback_cluster(nodes: int, cpus_per_node: int):
    """A Ray cluster of ``nodes`` nodes on 127.0.0.1 in processes of its own (``ray.cluster_utils.Cluster``);
    yields it (``.address``, ``.add_node``, ``.remove_node``) and ends it on leaving. Its nodes share this machine's
    cores: it tests the multi-node code paths and placement, not a cluster's speed."""
    with loopback_environment():
        from ray.cluster_utils import Cluster
        node_args = dict(num_cpus=cpus_per_node, include_dashboard=False)
        cluster = Cluster(initialize_head=True, head_node_args=node_args)
        try:
            for _ in range(nodes - 1):
                cluster.add_node(**node_args)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            cluster.shutdown()


@contextlib.contextmanager
def loopback_environment():
    """LOOPBACK_ENV in this process's environment, and so in every process Ray starts, while the block runs; the
    environment as it was afterwards. Ray reads the single-machine setting into a constant when it is imported, so
    a Ray imported before the block, or during it, gets that constant set too, and restored after."""
    saved = {name: os.environ.get(name) for name in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    set_single_machine(True)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        set_single_machine(LOOPBACK_ENV[SINGLE_MACHINE_ENV] == saved[SINGLE_MACHINE_ENV])


def set_single_machine(single: bool) -> None:
    """Ray's single-machine constant (127.0.0.1 only), where Ray is imported in this process."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = not single


def table(rows) -> str:
    """The figures as a markdown table, then each replica's share (images, images/s over the run)."""
    head = ("| engine | wall s | end-to-end images/s | first batch s | images/s after it | driver peak RSS MB |\n"
            "|---|---:|---:|---:|---:|---:|")
    lines = [head] + [f"| {r['engine']} | {r['wall_s']:.1f} | {r['end_to_end_images_per_s']:.1f} | "
                      f"{r['first_batch_s']:.2f} | {r['after_first_batch_images_per_s']:.1f} | "
                      f"{r['driver_peak_rss_mb']:.0f} |" for r in rows]
    return "\n".join(lines + [f"{r['engine']} replica {name}: {share['images']} images, "
                              f"{share['end_to_end_images_per_s']:.1f} images/s"
                              for r in rows for name, share in sorted(r["replicas"].items())])


"""Where a loaded backend's time goes, layer by layer, from the runtime's own profiler.

- OpenVINO: the per-node performance counters (``PERF_COUNT: YES``, ``request.profiling_info``) of the
  backend's model compiled again with the backend's settings plus the counters.
- ONNX Runtime: its profiler (``SessionOptions.enable_profiling``), the ``Node`` events of a session made with
  the backend's settings on the backend's model.

Both are summed per (node type, kernel) and averaged over ``runs`` inferences after one untimed one.
"""
import json
import tempfile
from pathlib import Path


def profile_backend(backend, batch, runs: int = 3) -> list:
    """[{"node_type", "kernel", "nodes", "ms"}] per inference, slowest first; [] for a runtime without a
    profiler here (PyTorch eager)."""
    profilers = {"openvino": openvino_profile, "onnxruntime": onnxruntime_profile}
    if backend.name not in profilers:
        return []
    totals = profilers[backend.name](backend, batch, runs)
    rows = [{"node_type": t, "kernel": k, "nodes": n, "ms": ms / runs} for (t, k), (n, ms) in totals.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def openvino_profile(backend, batch, runs) -> dict:
    model = backend.model.clone()
    model.reshape([len(batch), *backend.input_shape])
    compiled = backend.core.compile_model(model, backend.ov_device, {**backend.ov_config, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    request.infer({0: batch})
    totals = {}
    for _ in range(runs):
        request.infer({0: batch})
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                add(totals, (info.node_type, info.exec_type), info.node_name, info.real_time.total_seconds() * 1e3)
    return {key: (len(names), ms) for key, (names, ms) in totals.items()}


def onnxruntime_profile(backend, batch, runs) -> dict:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if backend.threads:
        options.intra_op_num_threads = backend.threads
    with tempfile.TemporaryDirectory(prefix="ort_profile_") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(backend.onnx_for_precision()), options,
                                       providers=backend.session.get_providers())
        feed = {session.get_inputs()[0].name: batch}
        session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    first_timed = runs_seen[1]["ts"] if len(runs_seen) > 1 else 0  # skip the untimed run
    totals = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            args = e.get("args", {})
            add(totals, (args.get("op_name", "?"), args.get("provider", "")), e["name"], e["dur"] / 1e3)
    return {key: (len(names), ms) for key, (names, ms) in totals.items()}


def add(totals, key, node_name, ms) -> None:
    names, total = totals.get(key, (set(), 0.0))
    names.add(node_name)
    totals[key] = (names, total + ms)


def profile_markdown(config, rows, limit: int = 15) -> list:
    total = sum(r["ms"] for r in rows)
    lines = [f"Layer-by-layer profile of {config} at batch 1 ({total:.1f} ms summed over nodes):", "",
             "| node type | kernel | nodes | ms | share |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['node_type']} | {r['kernel']} | {r['nodes']} | {r['ms']:.2f} | {r['ms'] / total:.1%} |"
              for r in rows[:limit]]
    return lines if total else []


"""The work that bounds ConvMixer's speed, as a model of its own: the ``depth`` pointwise dim x dim convolutions
alone, on the model's feature map (ConvMixer-1536/20: 20 1x1 1536->1536 convolutions on 32x32, ~48 GMAC of the
model's ~51). Timed by the same runtime at the same precision, quantized by the same route
(convmixer_suite.precision.int8) as the model's configuration, it is the speed that configuration can at best
reach; efficiency = ceiling time / model time.

The model is written with onnx.helper (seeded weights, std 1/sqrt(dim) so activations stay near unit scale
through the chain, as BatchNorm keeps them in ConvMixer) with a dynamic batch axis; int8 calibration uses
seeded standard-normal feature maps, the scale of the BatchNorm outputs that feed each pointwise convolution.
"""
from pathlib import Path

import numpy as np

from convmixer_suite.util.files import atomic_path

CEILING_OPSET = 17
CALIB_SEED = 1234


def feature_map_side(spec) -> int:
    """Side of ConvMixer's feature map: the 224 input cut into patch x patch patches (stride = patch)."""
    return 224 // spec.patch_size


def ceiling_input_shape(spec) -> tuple:
    side = feature_map_side(spec)
    return (spec.dim, side, side)


def pointwise_macs(spec) -> int:
    """Multiply-accumulates of one image's pointwise convolutions: the ceiling model's whole work."""
    return spec.depth * spec.dim * spec.dim * feature_map_side(spec) ** 2


def model_macs(spec, num_classes=1000) -> int:
    """Multiply-accumulates of one image through ConvMixer: stem, depth x (depthwise k x k + pointwise), head."""
    area = feature_map_side(spec) ** 2
    stem = 3 * spec.patch_size ** 2 * spec.dim * area
    depthwise = spec.depth * spec.kernel_size ** 2 * spec.dim * area
    return stem + depthwise + pointwise_macs(spec) + spec.dim * num_classes


def gops(macs_per_image: int, batch_size: int, ms: float) -> float:
    """Billions of operations (2 per multiply-accumulate) per second."""
    return 2.0 * macs_per_image * batch_size / (ms * 1e6)


def build_pointwise_onnx(spec, path: Path, seed: int = 0) -> Path:
    """The ceiling model of ``spec`` as ONNX, written once (the name carries arch and seed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    path = Path(path)
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    dim, side = spec.dim, feature_map_side(spec)
    nodes, weights = [], []
    for i in range(spec.depth):
        w = (rng.standard_normal((dim, dim, 1, 1)) / np.sqrt(dim)).astype(np.float32)
        b = (rng.standard_normal(dim) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"pw{i}.weight"), numpy_helper.from_array(b, f"pw{i}.bias")]
        nodes.append(helper.make_node("Conv", [f"x{i}", f"pw{i}.weight", f"pw{i}.bias"], [f"x{i + 1}"],
                                      kernel_shape=[1, 1], name=f"pointwise{i}"))
    nodes[-1].output[0] = "output"
    nodes[0].input[0] = "input"
    graph = helper.make_graph(nodes, f"pointwise_ceiling_{spec.name}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dim, side, side])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dim, side, side])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", CEILING_OPSET)])
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def write_calibration(spec, folder: Path, count: int) -> Path:
    """``count`` seeded standard-normal feature maps as batch files input_NNNNN.bin (one sample each), the
    form convmixer_suite.precision.int8 reads for a model whose input is not an image; written once."""
    from convmixer_suite.guide.manifest import batch_file_name
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(CALIB_SEED)
    for i in range(count):
        sample = rng.standard_normal((1, *ceiling_input_shape(spec))).astype(np.float32)
        path = folder / batch_file_name(i)
        if not path.is_file():
            with atomic_path(path) as tmp:
                sample.tofile(tmp)
    return folder


def efficiency_rows(rows, ceilings, spec) -> None:
    """Add to each timing row its ceiling's time, efficiency = ceiling ms / model ms, and GOP/s of both
    (``ceilings``: {(config, batch size): median ms of its ceiling model}). Medians of both: on a machine
    shared with others, a burst of their load lands on a few timed batches and would move a mean."""
    for r in rows:
        ceiling_ms = ceilings.get((r["config"], r["batch_size"]))
        model_ms = r["latency_ms"]["p50"]
        r["model_gops"] = gops(model_macs(spec), r["batch_size"], model_ms)
        if ceiling_ms is None:
            r.update(ceiling_ms=None, efficiency=None, ceiling_gops=None)
            continue
        r.update(ceiling_ms=ceiling_ms, efficiency=ceiling_ms / model_ms,
                 ceiling_gops=gops(pointwise_macs(spec), r["batch_size"], ceiling_ms))


def load_ceilings(configs: dict, spec, work: Path, threads=None, num_calib: int = 32, log=print,
                  failed: "dict | None" = None) -> tuple:
    """{config: loaded backend of its ceiling model} for each {config: (backend name, precision)} that runs
    ONNX (PyTorch eager has no ceiling model here), and {config: why not} for those this machine cannot load
    (bench.loading). A ceiling that fails otherwise is recorded with its line in ``failed`` where one is given,
    else its exception is raised."""
    from convmixer_suite.bench.loading import load_each
    from convmixer_suite.runtimes.registry import create_backend
    onnx_configs = {config: runs for config, runs in configs.items() if runs[0] != "torch"}
    onnx_path = build_pointwise_onnx(spec, Path(work) / f"ceiling_pointwise_{spec.name}.onnx")
    calib_dir = (write_calibration(spec, Path(work) / f"ceiling_calib_{spec.name}_{num_calib}", num_calib)
                 if any(precision == "int8" for _, precision in onnx_configs.values()) else None)

    def load(config):
        backend_name, precision = onnx_configs[config]
        return create_backend(backend_name, onnx_path, threads=threads, precision=precision, calib_dir=calib_dir,
                              input_shape=ceiling_input_shape(spec))
    announce = (lambda config: f"==> loading the ceiling of {config}: {spec.depth} pointwise {spec.dim}x{spec.dim} "
                               f"convolutions on {'x'.join(map(str, ceiling_input_shape(spec)))}")
    loaded, skipped, not_loaded = load_each(onnx_configs, load, log, announce, raise_failures=failed is None)
    if failed is not None:
        failed.update(not_loaded)
    return loaded, skipped


def ceiling_input(spec, batch_size: int) -> np.ndarray:
    return np.random.default_rng(CALIB_SEED + 1).standard_normal(
        (batch_size, *ceiling_input_shape(spec))).astype(np.float32)

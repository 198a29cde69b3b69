"""Fixtures shared by the test modules: small seeded ConvMixers, their checkpoints, generated photos."""
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convmixer_net

REPO = Path(__file__).resolve().parent.parent

# ---- under CI, a skip for want of something CI installs fails the run ----------------------------------------

# Import names whose distribution is named otherwise in the requirements files.
DISTRIBUTIONS = {"mlperf_loadgen": "mlcommons-loadgen", "PIL": "pillow", "iree": "iree-base-runtime"}
# What the skip reasons name: pytest.importorskip's "could not import 'x'", and "not installed: x, y" of our own.
MISSING_MODULES = (re.compile(r"could not import '([\w.]+)'"), re.compile(r"not installed: ([\w., ]+)"))
CI_TOOLS = {"g++": "no C++ compiler (g++)"}  # .ci/run installs it


def required_distributions(path=REPO / "requirements-test.txt") -> set:
    """The distributions a requirements file lists, with those of the files it includes (-r), lower-case."""
    names = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= required_distributions(Path(path).parent / line[2:].strip())
        elif line:
            names.add(re.split(r"[\[=<>~!; ]", line, 1)[0].lower().replace("_", "-"))
    return names


def ci_requirement_skipped(reason: str) -> "str | None":
    """What a skip's reason says is missing, when CI installs it (requirements-test.txt, or a CI_TOOLS tool)."""
    required = required_distributions()
    for pattern in MISSING_MODULES:
        for match in pattern.finditer(reason):
            for module in re.split(r"[, ]+", match.group(1).strip()):
                top = module.split(".")[0]
                if DISTRIBUTIONS.get(top, top).lower().replace("_", "-") in required:
                    return module
    return next((tool for tool, phrase in CI_TOOLS.items() if phrase in reason), None)


def skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def fail_a_ci_skip(report) -> None:
    """Under CI=true, turn ``report`` (skipped) into a failure when what it lacks is one CI installs."""
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    missing = ci_requirement_skipped(reason)
    if missing:
        report.outcome = "failed"
        report.longrepr = (f"CI=true: skipped for want of {missing}, which CI installs (requirements-test.txt, "
                           f".ci/run): a broken install reads as a skip. The skip said: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_a_ci_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_a_ci_skip(outcome.get_result())  # a module-level importorskip


# A small configuration: the real layer structure at a fraction of the cost (patch 14 as in 1024/20).
SMALL = dict(dim=32, depth=2, kernel_size=5, patch_size=14)


def seeded_model(seed=0, n_classes=1000, **config):
    """A ConvMixer with random weights and non-trivial BatchNorm statistics, in eval mode."""
    config = {**SMALL, **config}
    torch.manual_seed(seed)
    model = convmixer_net.ConvMixer(n_classes=n_classes, **config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def small_model():
    return seeded_model()


@pytest.fixture
def small_checkpoint(tmp_path, small_model):
    """The small model's raw state dict saved as a .pth.tar, as the locuslab release stores it."""
    path = tmp_path / "small.pth.tar"
    torch.save(small_model.state_dict(), path)
    return path


def write_photo(path, size=(300, 240), mode="RGB", seed=0, fmt=None):
    """A smooth random image (gradients plus noise), so resampling differences show."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (c + 1) * 255 // max(w, 1) + yy * (3 - c) * 255 // max(h, 1)) % 256
                     for c in range(3)], axis=-1).astype(np.int16)
    noise = rng.integers(-40, 40, size=base.shape)
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt or ("JPEG" if path.suffix.upper() in (".JPEG", ".JPG") else None))
    return path


def write_photo_folder(folder):
    """Seven ImageNet-style JPEGs of assorted sizes in a flat folder, named as in the val set."""
    sizes = [(500, 375), (375, 500), (224, 224), (640, 427), (233, 300), (1024, 683), (250, 250)]
    for i, size in enumerate(sizes):
        write_photo(folder / f"ILSVRC2012_val_{i + 1:08d}.JPEG", size=size, seed=i)
    return folder


# The fixtures below copy files made once per session into each test's own tmp_path (a test may change its
# copy, and caches such as int8 models are written beside it): the same files as made per test, made once.

@pytest.fixture(scope="session")
def session_photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos") / "val")


@pytest.fixture
def photo_folder(tmp_path, session_photos):
    """Seven ImageNet-style JPEGs of assorted sizes in a flat folder, named as in the val set."""
    return Path(shutil.copytree(session_photos, tmp_path / "val"))


@pytest.fixture(scope="session")
def session_calib(tmp_path_factory, session_photos):
    out = tmp_path_factory.mktemp("calib") / "prep"
    run_script("convmixer_preprocess.py", "--image-path", session_photos, "--prep-image", out, "--batch-size", "2",
               "--workers", "1", check=True)
    return out


@pytest.fixture
def calib_dir(tmp_path, photo_folder, session_calib):
    """The seven photos preprocessed at batch size 2 by convmixer_preprocess.py: four files, the last one with a
    zero padding row."""
    return Path(shutil.copytree(session_calib, tmp_path / "prep"))


def run_script(*args, cwd=REPO, env=None, check=False, timeout=600):
    """Run a repo script (``python3 x.py …`` or ``bash test/x.sh …``), or a command (``convmixer-benchmark …`` as
``python3 -m convmixer_suite.commands.benchmark …``), and return the CompletedProcess."""
    cmd = list(args)
    if str(cmd[0]).startswith("convmixer-"):
        module = cmd[0][len("convmixer-"):].replace("-", "_")
        cmd = [sys.executable, "-m", f"convmixer_suite.commands.{module}"] + cmd[1:]
    elif cmd[0].endswith(".py"):
        cmd = [sys.executable, str(REPO / cmd[0])] + cmd[1:]
    elif cmd[0].endswith(".sh"):
        cmd = ["bash", str(REPO / cmd[0])] + cmd[1:]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True,
                          check=check, timeout=timeout)


def tracked_copy(dst):
    """The repository's tracked files (symlinks kept), as a fresh clone has them."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, names.decode().split("\0")):
        src, target = REPO / name, dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        elif src.is_file():
            target.write_bytes(src.read_bytes())
            target.chmod(src.stat().st_mode)
    return dst


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: a download from it is refused at once (tests never reach out
    to the real release address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env() -> dict:
    """Environment for scripts that may download a released checkpoint: its base URL on a closed port."""
    return {"CONVMIXER_RELEASE_URL": f"http://127.0.0.1:{closed_port()}/v1.0"}


class _ReleaseHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET with ``server.routes[path] = (status, body, announced Content-Length, delay_s)``."""

    def do_GET(self):
        self.server.requests.append(self.path)
        status, body, announced, delay_s = self.server.routes.get(self.path, (404, b"Not Found", None, 0))
        time.sleep(delay_s)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if announced is None else announced))
        self.end_headers()
        self.wfile.write(body)  # then HTTP/1.0 closes the connection, cutting a body shorter than announced

    def log_message(self, *args):
        pass


class ReleaseServer:
    """A local stand-in for the release address: ``base`` goes in $CONVMIXER_RELEASE_URL."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReleaseHandler)
        self.httpd.routes, self.httpd.requests = {}, []
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1.0"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def serve(self, name, body: bytes, status=200, announced=None, delay_s=0):
        """Serve ``body`` as ``base/name``; ``announced`` is a Content-Length other than the body's."""
        self.httpd.routes[f"/v1.0/{name}"] = (status, body, announced, delay_s)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def release_server():
    server = ReleaseServer()
    yield server
    server.close()


# ---- issue 2: checkpoint layouts ------------------------------------------------------------------------

def timm_state_dict(state_dict, depth):
    """A locuslab-keyed state dict renamed to timm's ConvMixer keys (``stem.0.``, ``stem.2.``,
    ``blocks.i.``, ``head.``), written out independently of convmixer_suite.model.checkpoint's mapping."""
    renames = {"0": "stem.0", "2": "stem.2", str(3 + depth + 2): "head"}
    renames.update({str(3 + i): f"blocks.{i}" for i in range(depth)})
    out = {}
    for key, value in state_dict.items():
        index, rest = key.split(".", 1)
        out[f"{renames[index]}.{rest}"] = value
    return out


# ---- issue 4: runners (an exported small ONNX model, a fake msame on PATH) ------------------------------

FAKE_MSAME = r'''#!/usr/bin/env python3
"""A stand-in for Ascend's msame: checks its arguments as msame does, runs the .onnx whose path the .om
file holds on ONNX Runtime, and writes msame's files and log. Each call's argv is appended to
$FAKE_MSAME_ARGS_LOG (one JSON list per line)."""
import json, os, sys, time
from pathlib import Path
import numpy as np
import onnxruntime as ort

def fail(msg):
    print(f"[ERROR] {msg}")
    sys.exit(1)

argv = sys.argv[1:]
if os.environ.get("FAKE_MSAME_ARGS_LOG"):
    with open(os.environ["FAKE_MSAME_ARGS_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")
if len(argv) % 2:
    fail("every option takes a value: --flag value")
opts = dict(zip(argv[0::2], argv[1::2]))
unknown = set(opts) - {"--model", "--input", "--output", "--outfmt", "--loop", "--device", "--debug"}
if unknown:
    fail(f"unknown option {sorted(unknown)}")
model = opts.get("--model", "")
if ".om" not in model or not os.path.isfile(model):
    fail(f"--model must be an existing .om file: {model!r}")
if "--output" not in opts or "--input" not in opts:
    fail("--input and --output are required")
outfmt = opts.get("--outfmt", "TXT")
if outfmt not in ("TXT", "BIN"):
    fail(f"--outfmt {outfmt}")
loop = int(opts.get("--loop", "1"))
if not 1 <= loop <= 100:
    fail(f"--loop {loop}: 1..100")
if not 0 <= int(opts.get("--device", "0")) <= 255:
    fail("--device 0..255")
source = Path(opts["--input"])
# as msame's Utils::ScanFiles: every file of the folder whose name does not start with a dot
files = (sorted(p for p in source.iterdir() if not p.name.startswith(".")) if source.is_dir()
         else [Path(p) for p in opts["--input"].split(",")])
for path in files:
    if path.stat().st_size % (3 * 224 * 224 * 4):
        fail(f"input file {path} size {path.stat().st_size} does not match the model input")
if source.is_dir():
    loop = 1
session = ort.InferenceSession(Path(model).read_text().strip(), providers=["CPUExecutionProvider"])
now = time.localtime()
stamp = f"{now.tm_year}{now.tm_mon}{now.tm_mday}_{now.tm_hour}_{now.tm_min}_{now.tm_sec}_{int(time.time() * 1e6) % 1000000}"
out = Path(opts["--output"]) / stamp
out.mkdir(parents=True)
print("[INFO] acl init success")
times = []
for path in files:
    print(f"[INFO] start to process file:{path}")
    batch = np.fromfile(path, dtype=np.float32).reshape(-1, 3, 224, 224)
    for _ in range(loop):
        t0 = time.perf_counter()
        logits = session.run(None, {"image": batch})[0]
        times.append((time.perf_counter() - t0) * 1000)
        print("[INFO] model execute success")
        print(f"Inference time: {times[-1]:.3f}ms")
    name = out / f"{path.stem}_output_0.{outfmt.lower()}"
    if outfmt == "BIN":
        logits.astype(np.float32).tofile(name)
    else:
        name.write_text("".join("".join(f"{v:g} " for v in row) + "\n" for row in logits))
    print(f"[INFO] output data success")
rest = times[1:]
if len(files) == 1 and not source.is_dir():
    print(f"Inference average time: {sum(times) / len(times):f} ms")
    if rest:
        print(f"Inference average time without first time: {sum(rest) / len(rest):f} ms")
else:
    print(f"Inference average time : {sum(times) / len(times):.2f} ms")
    if rest:
        print(f"Inference average time without first time: {sum(rest) / len(rest):.2f} ms")
print("[INFO] unload model success, model Id is 1")
'''


FAKE_AIS_BENCH = r'''"""A stand-in for ``python3 -m ais_bench`` (the Ascend inference tool): checks its flags, runs the .onnx
whose path the .om holds, and writes ais_bench's layout: <output>/<output_dirname>/<name>_0.txt and
<output>/<output_dirname>_summary.json."""
import json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort

opts = dict(zip(sys.argv[1::2], sys.argv[2::2]))
known = {"--model", "--input", "--output", "--output_dirname", "--outfmt", "--loop", "--device", "--batchsize"}
if len(sys.argv[1:]) % 2 or set(opts) - known or opts.get("--outfmt") not in ("NPY", "BIN", "TXT"):
    sys.exit(f"bad arguments {sys.argv[1:]}")
session = ort.InferenceSession(Path(opts["--model"]).read_text().strip(), providers=["CPUExecutionProvider"])
source = Path(opts["--input"])
out = Path(opts["--output"]) / opts["--output_dirname"]
out.mkdir(parents=True)
for path in sorted(source.iterdir()):
    logits = session.run(None, {"image": np.fromfile(path, np.float32).reshape(-1, 3, 224, 224)})[0]
    (out / f"{path.stem}_0.txt").write_text("".join(" ".join(f"{v:g}" for v in row) + "\n" for row in logits))
summary = {"NPU_compute_time": {"min": 1.0, "max": 3.0, "mean": 2.5, "median": 2.0, "percentile(99%)": 3.0,
                                "count": 3}, "throughput": 800.0}
Path(f"{out}_summary.json").write_text(json.dumps(summary))
print("[INFO] throughput 1000*batchsize.mean(2)/NPU_compute_time.mean(2.5): 800.0")
'''


def export_small_onnx(model, path, batch_size=None):
    """The small model as the ModelZoo export writes it (input ``image``, output ``class``, opset 11),
    with a dynamic batch axis unless ``batch_size`` fixes it; independent of convmixer_suite.model.export."""
    import warnings
    dynamic = None if batch_size else {"image": {0: "batch"}, "class": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as ModelZoo's
        torch.onnx.export(model, torch.zeros(batch_size or 1, 3, 224, 224), str(path), input_names=["image"],
                          output_names=["class"], dynamic_axes=dynamic, opset_version=11, dynamo=False)
    return Path(path)


DARK = -1.5  # a black photo normalises to about -2.1 in the first channel; the generated photos to about 0


class NanWhenDark(torch.nn.Module):
    """A model whose logits are NaN for an image whose first channel averages below DARK, and the small model's
    otherwise: a model that goes non-finite on some inputs only, as an fp16 overflow does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        dark = x[:, 0].mean(dim=(1, 2)) < DARK
        return torch.where(dark[:, None], torch.full_like(logits, float("nan")), logits)


@pytest.fixture
def nan_onnx(tmp_path):
    """NanWhenDark around the small model, exported as the ModelZoo export writes it (dynamic batch axis)."""
    return export_small_onnx(NanWhenDark(seeded_model()).eval(), tmp_path / "nan_when_dark.onnx")


def write_dark_photo(path):
    """A black JPEG: NanWhenDark's logits for it are NaN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (256, 256)).save(path, format="JPEG")
    return path


@pytest.fixture(scope="session")
def session_small_onnx(tmp_path_factory):
    return export_small_onnx(seeded_model(), tmp_path_factory.mktemp("small_onnx") / "small.onnx")


@pytest.fixture
def small_onnx(tmp_path, session_small_onnx):
    """The small model (``small_model``'s weights) exported to ONNX, in the test's own folder."""
    return Path(shutil.copy(session_small_onnx, tmp_path / "small.onnx"))


@pytest.fixture
def fake_msame(tmp_path):
    """A folder holding an executable fake ``msame``; returns (env with it first on PATH, argv log path)."""
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    tool = bin_dir / "msame"
    tool.write_text(FAKE_MSAME.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    tool.chmod(0o755)
    args_log = tmp_path / "msame_args.jsonl"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_MSAME_ARGS_LOG": str(args_log)}
    return env, args_log


def fake_om(path, onnx_path):
    """An .om stand-in for the fake msame: it holds the path of the .onnx to run."""
    Path(path).write_text(str(Path(onnx_path).resolve()))
    return Path(path)


# ---- the full-size tests' one export ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def full_size_demo(tmp_path_factory):
    """test/demo.sh run once on a full-size ConvMixer-1536/20 checkpoint that it downloads from a local release
    server (seeded random weights with non-trivial BatchNorm statistics, in the release's name and locuslab
    layout), with three photos labelled as PyTorch predicts them except the second. Its step 4 exports the
    downloaded .pth.tar with convmixer_pth2onnx.py: the one full-size export, which both full-size tests check.
    Returns a dict: cwd, served (the .pth.tar served), datasets, result (the demo's CompletedProcess)."""
    spec = convmixer_net.ARCHS["convmixer_1536_20"]
    cwd = tmp_path_factory.mktemp("full_size_demo")
    (cwd / "served").mkdir()
    model = seeded_model(seed=1, dim=spec.dim, depth=spec.depth, kernel_size=spec.kernel_size,
                         patch_size=spec.patch_size)
    served = cwd / "served" / spec.checkpoint
    torch.save(model.state_dict(), served)
    datasets = cwd / "imagenet"
    photos = [write_photo(datasets / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", size=(400 + 40 * i, 300), seed=i)
              for i in (1, 2, 3)]
    from convmixer_suite.guide.transform import EvalTransform, load_rgb
    transform = EvalTransform()
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.stack([transform(load_rgb(p)) for p in photos]))).argmax(1).tolist()
    del model
    wrong = (predicted[1] + 1) % 1000  # one deliberately wrong label: top-1 must be 2 of 3
    (datasets / "val_label.txt").write_text(
        "".join(f"{p.name} {c}\n" for p, c in zip(photos, [predicted[0], wrong, predicted[2]])))
    server = ReleaseServer()
    try:
        server.serve(served.name, served.read_bytes())
        result = run_script("test/demo.sh", "--install=false", f"--datasets_path={datasets}", cwd=cwd,
                            env={"CONVMIXER_RELEASE_URL": server.base}, timeout=900)
    finally:
        server.close()
    return {"cwd": cwd, "served": served, "datasets": datasets, "result": result}


# ---- the slow streaming run of test_stream_resume, test_ray_engine and test_ray_cluster ----------------------

SLOW_BS = 2
SLOW_PHOTOS = 30
# Slow enough per batch (tens of ms on one thread) that a test can kill -9 the driver half way.
SLOW = dict(dim=512, depth=8, kernel_size=9, patch_size=7)


@pytest.fixture(scope="session")
def slow_run_inputs(tmp_path_factory):
    """30 photos with rule-based labels and a mid-size seeded ConvMixer exported to ONNX."""
    folder = tmp_path_factory.mktemp("slow_run")
    val = folder / "val"
    for i in range(SLOW_PHOTOS):
        write_photo(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG", size=(260 + 7 * i, 240), seed=i)
    labels = folder / "val_label.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {(i * 37) % 1000}\n" for i in range(SLOW_PHOTOS)))
    model = export_small_onnx(seeded_model(seed=3, **SLOW), folder / "slow.onnx")
    return model, val, labels


def slow_stream_args(model, images, labels, out, *extra):
    """convmixer_stream_eval.py's arguments at batch size SLOW_BS on one thread, for run_script."""
    return ["convmixer_stream_eval.py", "--model", model, "--image-path", images, "--annotation-file-path", labels,
            "--result-json-path", out, "--json-file-name", f"result_bs{SLOW_BS}.json", "--batch-size", SLOW_BS,
            "--threads", 1, *extra]


@pytest.fixture(scope="session")
def slow_local_run(tmp_path_factory, slow_run_inputs):
    """The local engine's whole run of slow_run_inputs, made once: the reference a killed and resumed run must
    give. Returns (its CompletedProcess, the path of its result JSON); nothing writes into its folder."""
    out = tmp_path_factory.mktemp("slow_local")
    return run_script(*slow_stream_args(*slow_run_inputs, out)), out / f"result_bs{SLOW_BS}.json"

"""The guide's own environment: Python 3.7 with the guide's pins (torch 1.5.0, torchvision 0.6.0, onnx 1.10.2,
Pillow 9.0.1, numpy 1.21), then ``pip3.7 install -r requirements.txt``, then the guide's commands verbatim from a
copy of the repository, with python, python3 and python3.7 all that interpreter. atc, msame and ais_bench are
stand-ins that check their arguments (msame and ais_bench run the .onnx on ONNX Runtime under this test's Python,
as the real tools are programs of their own, not Python 3.7 code). The files and figures are compared with
this Python's: the .bin files with the guide's torchvision transform in that environment and with this
Python's preprocessing, bit for bit; the exported ONNX with PyTorch on ONNX Runtime; the accuracy JSON with
this Python's scoring of the same outputs.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FAKE_AIS_BENCH, FAKE_MSAME, REPO, seeded_model, tracked_copy, write_photo
from old_pythons import guide_venv

from convmixer_suite.guide.transform import EvalTransform, load_rgb

FULL_SIZE = dict(dim=1536, depth=20, kernel_size=9, patch_size=7)
CHECKPOINT = "convmixer_1536_20_ks9_p7.pth.tar"
PHOTO_SIZES = [(500, 375), (375, 500), (224, 224), (640, 427)]
EXPECTED_TOP1 = "75.0%"  # the labels below: the reference prediction for all photos but the last

FAKE_ATC = """#!{python}
import os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
if not (args.get("framework") == "5" and args.get("input_format") == "NCHW" and os.path.getsize(args["model"])):
    sys.exit("ATC run failed: unexpected arguments %r" % sys.argv[1:])
with open(args["output"] + ".om", "w") as om:  # the msame stand-in runs the .onnx whose path the .om holds
    om.write(os.path.abspath(args["model"]))
print("ATC run success, welcome to the next use")
"""

# The guide's preprocessing, run in the guide's environment with its torchvision 0.6: one .bin per image, in the
# given order (the README's transform, written from torchvision's documented parameters).
TORCHVISION_PREPROCESS = """
import sys
import numpy as np
from PIL import Image
from torchvision import transforms
out = sys.argv[1]
transform = transforms.Compose([transforms.Resize(233, interpolation=Image.BICUBIC), transforms.CenterCrop(224),
                                transforms.ToTensor(),
                                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
for k, path in enumerate(sys.argv[2:]):
    image = Image.open(path).convert("RGB")
    transform(image).unsqueeze(0).numpy().astype(np.float32).tofile("%s/input_%05d.bin" % (out, k))
"""


def fake_tools(folder):
    folder.mkdir()
    for name, text in (("atc", FAKE_ATC.format(python=sys.executable)),
                       ("msame", FAKE_MSAME.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    # ais_bench is started as "python -m ais_bench" by the runner's own (3.7) interpreter: the stand-in module
    # hands over to this Python, which has ONNX Runtime.
    package = folder / "site" / "ais_bench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        f"import os, sys\nos.execv({sys.executable!r}, [{sys.executable!r}, '-c', {FAKE_AIS_BENCH!r}] + sys.argv[1:])\n")
    return folder


class GuideHost:
    """A copy of the repository on the guide's host: runs commands there with the guide's Python first on PATH."""

    def __init__(self, root, venv, tools):
        self.root, self.venv, self.tools = root, venv, tools
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = os.pathsep.join([str(venv / "bin"), str(tools), env["PATH"]])
        self.env = env

    def run(self, command, extra_env=None, timeout=900):
        result = subprocess.run(command, shell=True, cwd=self.root, env={**self.env, **(extra_env or {})},
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def run_here(self, *args):
        """The same step with this test's Python (3.10+) on the same files, for comparison."""
        return subprocess.run([sys.executable, *map(str, args)], cwd=self.root, capture_output=True, text=True,
                              check=True, timeout=900)


@pytest.fixture(scope="module")
def guide_host(tmp_path_factory):
    venv = guide_venv()
    base = tmp_path_factory.mktemp("guide37")
    host = GuideHost(tracked_copy(base / "repo"), venv, fake_tools(base / "bin"))
    host.install = host.run("pip3.7 install -r requirements.txt")
    host.model = seeded_model(**FULL_SIZE)
    torch.save(host.model.state_dict(), host.root / CHECKPOINT, _use_new_zipfile_serialization=False)
    host.dataset = dataset(base / "imageNet", host.model)
    return host


def dataset(folder, model):
    """Photos in val/ and val_label.txt: each labelled as the model predicts it, except the last."""
    val = folder / "val"
    photos = [write_photo(val / f"ILSVRC2012_val_{k + 1:08d}.JPEG", size=size, seed=30 + k)
              for k, size in enumerate(PHOTO_SIZES)]
    transform = EvalTransform()
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.stack([transform(load_rgb(p)) for p in photos]))).argmax(1).tolist()
    predicted[-1] = (predicted[-1] + 1) % 1000
    (folder / "val_label.txt").write_text("".join(f"{p.name} {c}\n" for p, c in zip(photos, predicted)))
    return folder


@pytest.fixture(scope="module")
def exported(guide_host):
    """test/pth2om.sh as the guide runs it: the export on torch 1.5, then atc (the stand-in)."""
    result = guide_host.run("bash test/pth2om.sh --batch_size=1 --not_skip_onnx=true")
    return guide_host, result


@pytest.fixture(scope="module")
def evaluated(exported):
    """test/eval_acc_perf.sh, then the guide's steps one by one on the same folders (msame writes a new
    timestamp folder; the scorer reads the newest)."""
    host, _ = exported
    data = host.dataset
    host.wrapper = host.run(f"bash test/eval_acc_perf.sh --batch_size=1 --datasets_path={data}")
    steps = [f"python3.7 convmixer_preprocess.py --image-path {data}/val --prep-image ./prep_image_bs1 --batch-size 1",
             "msame --model ./convmixer_1536_20_bs1.om --input ./prep_image_bs1 --output ./result/outputs_bs1_om "
             "--outfmt TXT > ./msame_bs1.txt",
             f"python3.7 convmixer_eval_acc.py --folder-davinci-target ./result/outputs_bs1_om/ --annotation-file-path "
             f"{data}/val_label.txt --result-json-path ./result --json-file-name result_bs1.json --batch-size 1",
             "python3.7 test/parse.py --result-file ./msame_bs1.txt --batch-size 1",
             "python3.7 test/parse.py --result-file ./result/result_bs1.json"]
    host.steps = [host.run(step) for step in steps]
    return host


def test_requirements_install_on_the_guide_python(guide_host):
    versions = guide_host.run("python3 -c 'import sys, torch, onnx, numpy, PIL, tqdm; print(sys.version_info[:2], "
                              "torch.__version__, onnx.__version__, numpy.__version__, PIL.__version__)'").stdout
    assert versions.split() == ["(3,", "7)", "1.5.0", "1.10.2", "1.21.6", "9.0.1"]


def test_pth2om_exports_the_contract_on_torch_1_5(exported):
    host, result = exported
    assert "onnxruntime vs pytorch: not checked (onnxruntime is not installed" in result.stdout
    assert (host.root / "convmixer_1536_20_bs1.om").read_text() == str(host.root / "convmixer_1536_20.onnx")
    model = onnx.load(str(host.root / "convmixer_1536_20.onnx"))
    (image,), (logits,) = model.graph.input, model.graph.output
    assert image.name == "image" and logits.name == "class"
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 224, 224]
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 11
    # The comparison the guide's environment could not make: ONNX Runtime against PyTorch, as the export's own
    # verification does (max |diff| / max |logit| within 1e-4, two batch sizes).
    session = ort.InferenceSession(str(host.root / "convmixer_1536_20.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = host.model(x).numpy()
        got = session.run(["class"], {"image": x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_preprocessing_equals_torchvision_and_this_python_bit_for_bit(evaluated, tmp_path):
    host = evaluated
    photos = sorted((host.dataset / "val").iterdir())
    torchvision_out = tmp_path / "torchvision"
    torchvision_out.mkdir()
    subprocess.run([str(host.venv / "bin" / "python3.7"), "-c", TORCHVISION_PREPROCESS, str(torchvision_out),
                    *map(str, photos)], check=True, timeout=600)
    here = tmp_path / "prep_here"
    host.run_here(host.root / "convmixer_preprocess.py", "--image-path", host.dataset / "val", "--prep-image", here,
                  "--batch-size", "1")
    for k in range(len(photos)):
        ours = (host.root / "prep_image_bs1" / f"input_{k:05d}.bin").read_bytes()
        assert ours == (torchvision_out / f"input_{k:05d}.bin").read_bytes(), k
        assert ours == (here / f"input_{k:05d}.bin").read_bytes(), k


def test_wrapper_and_steps_give_the_same_figures_as_this_python(evaluated):
    host = evaluated
    assert "====accuracy data====\ntop1:" + EXPECTED_TOP1 in host.wrapper.stdout
    fps_line, top_lines = host.steps[3].stdout.strip(), host.steps[4].stdout.split()
    assert fps_line.startswith("bs1 fps:") and float(fps_line.split(":")[1]) > 0
    assert top_lines[0] == "top1:" + EXPECTED_TOP1
    ours = json.loads((host.root / "result" / "result_bs1.json").read_text())
    host.run_here(host.root / "convmixer_eval_acc.py", "--folder-davinci-target", "./result/outputs_bs1_om/",
                  "--annotation-file-path", host.dataset / "val_label.txt", "--result-json-path", "./result_here",
                  "--json-file-name", "result_bs1.json", "--batch-size", "1")
    assert ours == json.loads((host.root / "result_here" / "result_bs1.json").read_text())


def test_infer_runs_msame_and_ais_bench_on_the_guide_python(evaluated):
    host = evaluated
    # eval_acc_perf.sh's inference step: convmixer_infer.py, backend auto, picks msame for the .om
    assert "[INFO] backend msame external tool" in host.wrapper.stdout
    result = host.run("python3.7 convmixer_infer.py --backend ais_bench --model ./convmixer_1536_20_bs1.om "
                      "--input ./prep_image_bs1 --output ./result/outputs_ais_bench --outfmt TXT",
                      extra_env={"PYTHONPATH": str(host.tools / "site")})
    assert "Inference average time" in result.stdout
    (run,) = (host.root / "result" / "outputs_ais_bench").iterdir()
    assert sorted(p.name for p in run.iterdir()) == [f"input_{k:05d}_output_0.txt" for k in range(len(PHOTO_SIZES))]


def test_demo_runs_on_the_guide_python(evaluated):
    """test/demo.sh with this copy's checkpoint and photos; --install=false with the copy on PYTHONPATH stands
    for an installed project (its own pip install -e would change the cached environment)."""
    host = evaluated
    result = host.run(f"bash test/demo.sh --install=false --datasets_path={host.dataset}",
                      extra_env={"PYTHONPATH": str(host.root)})
    assert f"REAL weights: {host.root / CHECKPOINT}" in result.stdout
    assert "accuracy (from ./result/result_bs1.json):\ntop1:" + EXPECTED_TOP1 in result.stdout


def test_modern_stack_scripts_say_they_need_a_newer_python(guide_host):
    for command, prog in (("convmixer_stream_eval.py", "convmixer_stream_eval.py"),
                          ("-m convmixer_suite.commands.benchmark", "benchmark.py")):
        result = subprocess.run(f"python3 {command} --help", shell=True, cwd=guide_host.root, env=guide_host.env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert re.fullmatch(rf"{prog}: error: needs Python 3\.10 or later \(this is Python "
                            rf"3\.7\.\d+\); the guide's scripts run on older Pythons\n", result.stderr), result.stderr


def test_a_malicious_checkpoint_is_refused_on_torch_1_5(guide_host):
    """torch 1.5 has no weights_only: the restricted unpickler refuses the global in one line and runs nothing."""
    evil = """
import torch, convmixer_net
class Evil:
    def __reduce__(self):
        return (open, ("pwned", "w"))
torch.save({"state_dict": convmixer_net.ConvMixer(32, 2, 5, 14).state_dict(), "x": Evil()}, "evil.pth")
"""
    guide_host.run(f"python3.7 -c '{evil}'")
    refused = subprocess.run("python3.7 convmixer_pth2onnx.py --source evil.pth --target evil.onnx", shell=True,
                             cwd=guide_host.root, env=guide_host.env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        "convmixer_pth2onnx.py: error: evil.pth: the checkpoint's pickle calls io.open, which the safe loader refuses "
        "(it admits tensors and plain containers only); if you trust the file, rerun with --allow-pickle (this "
        "executes code from the file)")
    assert not (guide_host.root / "pwned").exists() and not (guide_host.root / "evil.onnx").exists()
    guide_host.run("python3.7 convmixer_pth2onnx.py --source evil.pth --target evil.onnx --allow-pickle")
    assert (guide_host.root / "pwned").exists() and (guide_host.root / "evil.onnx").is_file()

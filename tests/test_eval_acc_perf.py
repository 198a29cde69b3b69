"""test/eval_acc_perf.sh end to end on a small ConvMixer and generated photos, scored against labels
derived here from PyTorch's own predictions (so top-1 must be exactly what the labels make it)."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, fake_om, offline_env, run_script, seeded_model, write_photo
from convmixer_suite.guide.transform import EvalTransform, list_images, load_rgb

NUM_PHOTOS = 7  # with batch size 2: three full batches and one padded


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """ImageNet-layout photos, a small model whose top-1 differs from photo to photo, its checkpoint and
    its ONNX export by convmixer_pth2onnx.py, and the class PyTorch predicts for each photo."""
    datasets = tmp_path_factory.mktemp("imagenet")
    sizes = [(500, 375), (375, 500), (224, 224), (640, 427), (233, 300), (1024, 683), (250, 250)]
    for i, size in enumerate(sizes[:NUM_PHOTOS]):
        write_photo(datasets / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", size=size, seed=i)
    images, _ = list_images(datasets / "val")
    transform = EvalTransform()
    batch = torch.from_numpy(np.stack([transform(load_rgb(p)) for p in images]))
    model = seeded_model()
    with torch.no_grad():
        # a random small ConvMixer gives every photo the same class; centring the head on these
        # photos' mean feature makes the prediction depend on each photo
        features = model[:-1](batch)
        model[-1].bias.copy_(-model[-1].weight @ features.mean(dim=0))
        predicted = model(batch).argmax(dim=1).tolist()
    assert len(set(predicted)) >= 5

    folder = tmp_path_factory.mktemp("model")
    checkpoint = folder / "small.pth.tar"
    torch.save(model.state_dict(), checkpoint)
    onnx = folder / "convmixer_1536_20.onnx"
    result = run_script("convmixer_pth2onnx.py", "--source", checkpoint, "--target", onnx)
    assert result.returncode == 0, result.stderr
    return datasets, {p.name: c for p, c in zip(images, predicted)}, checkpoint, onnx


def write_labels(datasets, predictions, wrong=()):
    """val_label.txt with PyTorch's predictions as labels, except the images listed in ``wrong``."""
    lines = [f"{name} {(label + 1) % 1000 if name in wrong else label}" for name, label in predictions.items()]
    (datasets / "val_label.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def work(tmp_path, flow):
    """The directory the guide runs the script from, holding the ONNX model under its guide name."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(flow[3], folder / "convmixer_1536_20.onnx")
    return folder


def eval_acc_perf(work, *args, env=None):
    return run_script("test/eval_acc_perf.sh", "--batch_size=2", *args, cwd=work, env=env)


def accuracy_json(work):
    table = json.loads((work / "result" / "result_bs2.json").read_text())
    return {entry["key"]: entry["value"] for entry in table["value"]}


def assert_reports(result, top1):
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert [int(n) for n in re.findall(r"^==> (\d)\.", out, re.MULTILINE)] == [1, 2, 3, 4]
    for stage in ("preprocessing", "inference", "scoring"):
        assert re.search(rf"^    {stage}: {NUM_PHOTOS} images in [\d.]+ s, [\d.]+ images/s", out, re.MULTILINE)
    perf = out.split("====performance data====\n")[1].split("\n")[0]
    log_ms = re.search(r"Inference average time without first time: ([\d.]+) ms", out).group(1)
    assert perf == f"bs2 fps:{2 * 1000 / float(log_ms):.3f}"
    assert out.split("====accuracy data====\n")[1].split("\n")[0] == f"top1:{top1}"
    assert_html_report(result)


def assert_html_report(result):
    """The run's HTML report is written last, its path printed as the last line."""
    last = result.stdout.split("====report====\n")[1].strip()
    assert re.fullmatch(r"wrote (/.+/result/report_bs2\.html)", last), last
    assert Path(last[len("wrote "):]).read_text().startswith("<!DOCTYPE html>")


def test_onnxruntime_flow_reports_pytorch_top1(work, flow):
    """A fresh run with PyTorch's predictions as labels, then a rerun (it resumes: nothing left to run) that
    scores labels with two of them wrong: the scoring step runs either way, so one flow checks both top-1s."""
    datasets, predictions = flow[:2]
    write_labels(datasets, predictions)
    result = eval_acc_perf(work, f"--datasets_path={datasets}")
    assert_reports(result, "100.0%")
    assert accuracy_json(work)["Top1 accuracy"] == "100.0%"
    assert accuracy_json(work)["Number of images"] == str(NUM_PHOTOS)
    log = (work / "msame_bs2.txt").read_text()
    assert "[INFO] backend onnxruntime" in log and len(re.findall(r"^Inference time: ", log, re.MULTILINE)) == 4
    assert (work / "prep_image_bs2" / ".manifest.json").is_file()

    write_labels(datasets, predictions, ("ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000007.JPEG"))
    rerun = eval_acc_perf(work, f"--datasets_path={datasets}")
    assert "4 of 4 file(s) already done" in rerun.stdout
    top1 = f"{round(5 / 7 * 100, 2)}%"
    assert_reports(rerun, top1)
    assert accuracy_json(work)["Top1 accuracy"] == top1
    assert accuracy_json(work)["Number of images"] == str(NUM_PHOTOS)


def test_torch_backend_flow(work, flow):
    datasets, predictions = flow[:2]
    write_labels(datasets, predictions)
    result = eval_acc_perf(work, f"--datasets_path={datasets}", "--backend=torch", f"--model={flow[2]}")
    assert_reports(result, "100.0%")
    assert "[INFO] backend torch" in (work / "msame_bs2.txt").read_text()


def test_msame_flow_through_the_real_tool_interface(work, flow, fake_msame):
    env, args_log = fake_msame
    datasets, predictions = flow[:2]
    write_labels(datasets, predictions)
    fake_om(work / "convmixer_1536_20_bs2.om", work / "convmixer_1536_20.onnx")
    result = eval_acc_perf(work, f"--datasets_path={datasets}", "--backend=msame", env=env)
    assert_reports(result, "100.0%")
    argv = json.loads(args_log.read_text())
    assert argv[0::2] == ["--model", "--input", "--output", "--outfmt"]
    assert argv[1] == "convmixer_1536_20_bs2.om" and argv[7] == "TXT"
    # msame takes every file of a folder except dot-files: the manifest beside the .bin files is one,
    # so the guide's own folder goes to msame as it is
    assert ".manifest.json" in {p.name for p in (work / "prep_image_bs2").iterdir()}
    assert (work / argv[3]).resolve() == (work / "prep_image_bs2").resolve()
    assert "[INFO] acl init success" in (work / "msame_bs2.txt").read_text()   # msame's own log is kept


def test_a_failed_step_stops_the_script_naming_it(work, tmp_path):
    datasets = tmp_path / "empty_imagenet"
    (datasets / "val").mkdir(parents=True)
    (datasets / "val" / "notes.txt").write_text("no images here")
    (datasets / "val_label.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\n")
    result = eval_acc_perf(work, f"--datasets_path={datasets}")
    assert result.returncode != 0
    assert "eval_acc_perf.sh: error: step '1. preprocessing' failed" in result.stderr
    assert "==> 2." not in result.stdout


def test_missing_inputs_are_named(work, flow, tmp_path):
    datasets = flow[0]
    missing_model = eval_acc_perf(work, f"--datasets_path={datasets}", "--model=./nope.onnx")
    assert missing_model.returncode != 0 and "./nope.onnx: model not found" in missing_model.stderr
    no_data = eval_acc_perf(work, f"--datasets_path={tmp_path / 'nothing'}")
    assert no_data.returncode != 0 and "nothing/val: no such folder" in no_data.stderr
    bad_flag = eval_acc_perf(work, "--batchsize=2")
    assert bad_flag.returncode != 0 and "unknown argument '--batchsize=2'" in bad_flag.stderr
    bad_count = eval_acc_perf(work, "--num_calib=0")
    assert bad_count.returncode != 0 and "--num_calib=0: must be a positive integer" in bad_count.stderr


def test_stream_mode_runs_the_streaming_evaluation(work, flow):
    datasets, predictions = flow[:2]
    write_labels(datasets, predictions, wrong=("ILSVRC2012_val_00000003.JPEG",))
    result = eval_acc_perf(work, f"--datasets_path={datasets}", "--stream=true")
    if not (REPO / "convmixer_stream_eval.py").is_file():
        assert result.returncode != 0 and "needs" in result.stderr and "convmixer_stream_eval.py" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert [int(n) for n in re.findall(r"^==> (\d)\.", result.stdout, re.MULTILINE)] == [1, 2]
    assert not (work / "prep_image_bs2").exists()
    log_ms = re.search(r"Inference average time without first time: ([\d.]+) ms",
                       (work / "msame_bs2.txt").read_text()).group(1)
    assert result.stdout.split("====performance data====\n")[1].split("\n")[0] == \
        f"bs2 fps:{2 * 1000 / float(log_ms):.3f}"
    assert result.stdout.split("====accuracy data====\n")[1].split("\n")[0] == f"top1:{round(6 / 7 * 100, 2)}%"
    assert_html_report(result)
    assert f"[INFO] report: {work}/result/report_bs2.html" in (work / "msame_bs2.txt").read_text()


# ---- the quick start: test/demo.sh and its stand-in data ------------------------------------------------

def test_samples_write_a_real_layout_checkpoint_and_a_labelled_sample(tmp_path):
    from convmixer_suite.model import checkpoint
    from convmixer_suite.guide import samples
    path = samples.write_random_checkpoint(tmp_path / "RANDOM_WEIGHTS_x.pth.tar", arch="convmixer_768_32")
    assert checkpoint.spec_from_state_dict(checkpoint.load_state_dict(path)).name == "convmixer_768_32"
    samples.write_sample_dataset(tmp_path / "imagenet", num_images=3)
    assert sorted(p.name for p in (tmp_path / "imagenet" / "val").iterdir()) == \
        [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    assert (tmp_path / "imagenet" / "val_label.txt").read_text().splitlines() == \
        ["ILSVRC2012_val_00000001.JPEG 997", "ILSVRC2012_val_00000002.JPEG 994", "ILSVRC2012_val_00000003.JPEG 991"]
    assert load_rgb(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000002.JPEG").size == (320, 256)


@pytest.mark.fullsize
def test_demo_runs_the_quick_start_on_random_weights_when_the_download_fails(tmp_path):
    """Offline (the release address on a closed port): the demo says that the download failed and why,
    and that it falls back to random weights."""
    env = offline_env()
    url = f"{env['CONVMIXER_RELEASE_URL']}/convmixer_1536_20_ks9_p7.pth.tar"
    result = run_script("test/demo.sh", "--install=false", "--num_images=2", cwd=tmp_path, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert [int(n) for n in re.findall(r"^==> (\d)\.", out, re.MULTILINE)] == [1, 2, 3, 4, 5, 6]
    work = tmp_path / "demo_work"
    assert (work / "RANDOM_WEIGHTS_convmixer_1536_20.pth.tar").is_file() and (work / "convmixer_1536_20.onnx").is_file()
    assert f"download.py: error: cannot download {url}: Connection refused. Fetch it by hand: wget -O " \
           f"{tmp_path}/convmixer_1536_20_ks9_p7.pth.tar {url}" in result.stderr
    assert "    the download failed (the error line above says why)\n" in out
    assert f"\nweights: RANDOM weights ({work}/RANDOM_WEIGHTS_convmixer_1536_20.pth.tar), because the download " \
           f"of convmixer_1536_20_ks9_p7.pth.tar failed: cannot download {url}: Connection refused. Fetch it by " \
           f"hand: wget -O" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_work"]   # no partial download left
    assert re.search(r"^performance .*\nbs1 fps:\d+\.\d{3}$", out, re.MULTILINE)
    assert re.search(r"^accuracy .*\ntop1:\d", out, re.MULTILINE)
    assert "NOTE: RANDOM weights: this accuracy means nothing" in out
    assert "Generated pictures with rule-based labels" in out
    report = work / "result" / "report_bs1.html"
    assert out.splitlines()[-1] == f"report: {report} (open it in a web browser; it needs no network)"
    assert "random weights: means nothing" in report.read_text()


@pytest.mark.fullsize
def test_demo_downloads_the_checkpoint_and_reports_pytorch_top1(full_size_demo):
    """A full-size checkpoint in the release's name and layout, served by a local release server: the demo
    downloads it, says it uses real weights, and with photos and labels from PyTorch scores top-1 as PyTorch
    (the demo run is conftest's full_size_demo, whose export test_pth2onnx.py checks too)."""
    result, served = full_size_demo["result"], full_size_demo["served"]
    checkpoint = full_size_demo["cwd"] / served.name
    assert result.returncode == 0, result.stderr
    assert checkpoint.read_bytes() == served.read_bytes() and checkpoint.with_name(f"{served.name}.sha256").is_file()
    assert f"using the real checkpoint {checkpoint}" in result.stdout and "NOTE:" not in result.stdout
    assert f"\nweights: REAL weights: {checkpoint} (downloaded just now;" in result.stdout
    assert result.stdout.split("accuracy (from ./result/result_bs1.json):\n")[1].split("\n")[0] == \
        f"top1:{round(2 / 3 * 100, 2)}%"
    # the export names the downloaded checkpoint, so the report sets the paper's figure beside the top-1
    report = (full_size_demo["cwd"] / "demo_work" / "result" / "report_bs1.html").read_text()
    assert f"reference 81.37% (paper, {served.name})" in report and "-14.70 points" in report


@pytest.mark.parametrize("args, message", [
    (["--bogus=1"], "unknown argument '--bogus=1'"),
    (["--install=false", "--datasets_path=/nonexistent_imagenet"], "--datasets_path=/nonexistent_imagenet: no such folder"),
    (["--download=maybe"], "--download=maybe: must be true or false"),
])
def test_demo_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    result = run_script("test/demo.sh", *args, cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "demo_work" / "convmixer_1536_20.onnx").exists()


def test_reduced_precision_flags_pass_through_and_the_gate_stops_the_wrapper(work, flow, tmp_path):
    """--precision, --calib, --num_calib, --max_logit_error, --device and --fresh reach the runner: the gate's
    figures are on 7 - 5 = 2 held-out images of --calib on cpu, its one line ends the run, and the stale folder
    is gone."""
    datasets, predictions = flow[:2]
    write_labels(datasets, predictions)
    calib = tmp_path / "calib"
    run_script("convmixer_preprocess.py", "--image-path", datasets / "val", "--prep-image", calib, "--batch-size", "2",
               check=True)
    stale = work / "result" / "outputs_bs2_om" / "20200101_000000"
    stale.mkdir(parents=True)
    (stale / "input_00000_output_0.txt").write_text("1 2 3 \n")
    flags = [f"--datasets_path={datasets}", "--backend=onnxruntime", "--precision=int8", f"--calib={calib}",
             "--num_calib=5", "--max_logit_error=1e-9"]
    result = eval_acc_perf(work, *flags, "--device=cpu", "--fresh=true")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 2 and errors[1] == "eval_acc_perf.sh: error: step '2. inference' failed (exit 2)"
    assert errors[0].startswith("convmixer_infer.py: error: int8 on onnxruntime (CPU class ")
    assert errors[0].endswith("from fp32 on 2 held-out images, above --max-logit-error 1e-09; nothing written. Try "
                              "the other int8 backend (--backend onnxruntime or openvino), bf16, or fp32, or a larger "
                              "--max-logit-error if that error is acceptable")
    gate_line = next(line for line in result.stdout.splitlines() if line.startswith("[INFO] fidelity:"))
    assert f"on 2 held-out images of {calib} (held out of calibration)" in gate_line and "(cpu, CPU class" in gate_line
    assert not (work / "result" / "outputs_bs2_om").exists()  # --fresh=true removed it; the gate wrote nothing
    on_cuda = eval_acc_perf(work, f"--datasets_path={datasets}", "--backend=onnxruntime", "--device=cuda:0")
    assert on_cuda.returncode == 2 and "cuda:0: this onnxruntime build has no CUDAExecutionProvider" in on_cuda.stderr


@pytest.mark.parametrize("flag", ["--engine=ray", "--replicas=2", "--ray_address=auto"])
def test_streaming_flags_without_stream_true_are_refused(work, flow, flag):
    result = eval_acc_perf(work, f"--datasets_path={flow[0]}", flag)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "eval_acc_perf.sh: error: --engine, --ray_address and --replicas apply to --stream=true\n"


def test_outputs_of_a_hand_run_msame_name_the_wrappers_fresh_flag(work, flow):
    """msame run by hand into the guide's output folder: the wrapper's own --resume latest cannot check it, and
    the line says how to start over with the wrapper's flag; with it the run goes through."""
    datasets, predictions = flow[:2]
    write_labels(datasets, predictions)
    by_hand = work / "result" / "outputs_bs2_om" / "20210723_145039"
    by_hand.mkdir(parents=True)
    (by_hand / "input_00000_output_0.txt").write_text("1 2 3 \n")
    refused = eval_acc_perf(work, f"--datasets_path={datasets}")
    assert refused.returncode == 2
    assert "test/eval_acc_perf.sh: --fresh=true" in refused.stderr and "run without --resume" not in refused.stderr
    assert_reports(eval_acc_perf(work, f"--datasets_path={datasets}", "--fresh=true"), "100.0%")

"""Our files read by the guide's own scripts (ModelZoo's convmixer_eval_acc.py, convmixer_preprocess.py and
test/parse.py), as docs/formats.md describes them: what those scripts do is re-enacted here, step by step, on
the real outputs of our scripts, in flat and class-folder layouts, under a work folder whose path contains
"ms" (where a greedy ``.*ms`` regex finds whatever follows the averages)."""
import os
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import export_small_onnx, run_script, seeded_model, write_photo
from convmixer_suite.guide.manifest import read_manifest
from convmixer_suite.guide.transform import EvalTransform, load_rgb

NUM_PHOTOS = 7
BS = 2


# ---- the guide's scripts, re-enacted ---------------------------------------------------------------------

def guide_eval_acc_top1_hits(folder_davinci_target, label_file, batch_size):
    """The ModelZoo scorer: ``os.listdir(folder)[0]`` is the results folder; every file name in it is
    ``<prefix>_<5 digits>…``; file k row i is ILSVRC2012_val_{k*bs+i+1}; rows read with split(" ").
    Returns (top-1 hits, images it counts), its count including the one padding row it miscounts."""
    results = os.path.join(folder_davinci_target, os.listdir(folder_davinci_target)[0])
    labels = {}
    for line in open(label_file):
        name, label = line.strip().split(" ")
        labels[name.split(".")[0]] = label
    hits = count = 0
    for file_name in os.listdir(results):
        stem = file_name.split(".")[0]
        k = int(stem[stem.find("_") + 1:][:5])
        rows = open(os.path.join(results, file_name)).read().splitlines()
        for i in range(batch_size):
            count += 1
            index = k * batch_size + i + 1
            if index > len(labels):
                break
            prediction = np.array(rows[i].strip().split(" "), dtype=np.float32)
            hits += int(np.argsort(-prediction)[0] == int(labels[f"ILSVRC2012_val_{index:08d}"]))
    return hits, count


def guide_preprocess_order(image_path):
    """The ModelZoo preprocessor's image order: flat, or class subfolders when the first entry is not a
    file; sorted by the number in the 8 characters before the 5-character extension."""
    entries = os.listdir(image_path)
    if os.path.isfile(os.path.join(image_path, entries[0])):
        files = [os.path.join(image_path, f) for f in entries]
    else:
        files = [os.path.join(image_path, d, f) for d in entries for f in os.listdir(os.path.join(image_path, d))]
    return sorted(files, key=lambda f: int(f[-13:-5]))


def guide_parse_fps(log_file, batch_size):
    """The ModelZoo parse.py on an msame log: the last greedy ``without first time:.*ms`` match of the
    log with newlines turned into commas, its second-to-last space-separated token as ms."""
    text = open(log_file).read().replace("\n", ",") + ","
    found = re.findall(r"Inference average time without first time:.*ms", text)[-1]
    return batch_size * 1000 / float(found.split(" ")[-2])


# ---- our flow on a dataset whose labels we know --------------------------------------------------------------

def class_folder_of(i):
    """Class folders whose path order is not the images' number order (as ImageNet's synset folders)."""
    return f"n{(NUM_PHOTOS - i) % 3:08d}"


@pytest.fixture(scope="module", params=["flat", "class_folders"])
def dataset(request, tmp_path_factory):
    """Photos named as ImageNet's val set, a small model whose top-1 differs between them, its ONNX export
    and labels that make exactly the photos in ``wrong`` misclassified; all under a path with "ms"."""
    root = tmp_path_factory.mktemp("work_ms")
    val = root / "imageNet" / "val"
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(NUM_PHOTOS)]
    paths = [val / (f"{class_folder_of(i)}/{name}" if request.param == "class_folders" else name)
             for i, name in enumerate(names)]
    for i, path in enumerate(paths):
        write_photo(path, size=(260 + 40 * i, 240 + 17 * i), seed=i)
    batch = torch.from_numpy(np.stack([EvalTransform()(load_rgb(p)) for p in paths]))
    model = seeded_model()
    with torch.no_grad():
        features = model[:-1](batch)
        model[-1].bias.copy_(-model[-1].weight @ features.mean(dim=0))  # predictions differ between photos
        predicted = model(batch).argmax(dim=1).tolist()
    assert len(set(predicted)) >= 4
    wrong = {names[1], names[4]}
    labels = [f"{name} {(label + 1) % 1000 if name in wrong else label}" for name, label in zip(names, predicted)]
    (root / "imageNet" / "val_label.txt").write_text("\n".join(labels) + "\n")
    export_small_onnx(model, root / "convmixer_1536_20.onnx")
    return root, NUM_PHOTOS - len(wrong)


@pytest.fixture(scope="module")
def file_flow(dataset):
    """Our preprocess + runner (a log ``msame_bs2.txt``), run as the guide runs them from its work folder."""
    root, _ = dataset
    work = root / "file_flow"
    work.mkdir()
    shutil.copy(root / "convmixer_1536_20.onnx", work)
    prep = run_script("convmixer_preprocess.py", "--image-path", root / "imageNet" / "val", "--prep-image",
                      "./prep_image_bs2", "--batch-size", str(BS), "--workers", "1", cwd=work)
    assert prep.returncode == 0, prep.stderr
    # an absolute --output, so that a path with "ms" would show in any line printed after the averages
    infer = run_script("convmixer_infer.py", "--model", "./convmixer_1536_20.onnx", "--input", "./prep_image_bs2",
                       "--output", work / "result" / "outputs_bs2_om", "--outfmt", "TXT", "--threads", "1", cwd=work)
    assert infer.returncode == 0, infer.stderr
    (work / "msame_bs2.txt").write_text(infer.stdout)
    return work


def test_our_images_come_in_the_guides_order(dataset, file_flow):
    root, _ = dataset
    val = root / "imageNet" / "val"
    manifest = read_manifest(file_flow / "prep_image_bs2")
    assert manifest.images == [os.path.relpath(p, val) for p in guide_preprocess_order(str(val))]


def test_the_guides_scorer_reads_our_runner_output(dataset, file_flow):
    root, correct = dataset
    out = file_flow / "result" / "outputs_bs2_om"
    assert len(os.listdir(out)) == 1                          # only msame's timestamp folder
    hits, counted = guide_eval_acc_top1_hits(str(out) + "/", root / "imageNet" / "val_label.txt", BS)
    assert hits == correct
    assert counted == NUM_PHOTOS + 1                           # its own padding miscount, not ours:

    ours = run_script("convmixer_eval_acc.py", "--folder-davinci-target", "./result/outputs_bs2_om/",
                      "--annotation-file-path", root / "imageNet" / "val_label.txt", "--result-json-path",
                      "./result", "--json-file-name", "result_bs2.json", "--batch-size", str(BS), cwd=file_flow)
    assert ours.returncode == 0, ours.stderr
    assert f"top1:{round(correct / NUM_PHOTOS * 100, 2)}%" in ours.stdout


def test_the_guides_parse_reads_our_runner_log(file_flow):
    log = file_flow / "msame_bs2.txt"
    assert "ms" in str(log)
    without_first = re.search(r"^Inference average time without first time: ([\d.]+) ms$", log.read_text(), re.M)
    assert guide_parse_fps(log, BS) == pytest.approx(BS * 1000 / float(without_first.group(1)))
    ours = run_script("test/parse.py", "--result-file", log, "--batch-size", str(BS))
    assert ours.stdout.strip() == f"bs{BS} fps:{guide_parse_fps(log, BS):.3f}"


def test_a_resumed_run_still_leaves_only_msame_folders(dataset, file_flow):
    out = file_flow / "result" / "outputs_bs2_om"
    again = run_script("convmixer_infer.py", "--model", "./convmixer_1536_20.onnx", "--input", "./prep_image_bs2",
                       "--output", "./result/outputs_bs2_om", "--threads", "1", "--resume", "latest", cwd=file_flow)
    assert again.returncode == 0, again.stderr
    assert "4 of 4 file(s) already done" in again.stdout
    (folder,) = os.listdir(out)
    assert sorted(os.listdir(out / folder)) == [f"input_{k:05d}_output_0.txt" for k in range(4)]


def test_the_guides_parse_reads_a_looped_single_file_log(file_flow, tmp_path):
    run = run_script("convmixer_infer.py", "--model", "./convmixer_1536_20.onnx", "--input",
                     "./prep_image_bs2/input_00000.bin", "--output", tmp_path / "single_ms", "--loop", "10",
                     cwd=file_flow)
    assert run.returncode == 0, run.stderr
    log = tmp_path / "msame_ms_single.txt"
    log.write_text(run.stdout)
    without_first = re.search(r"^Inference average time without first time: ([\d.]+) ms$", run.stdout, re.M)
    assert guide_parse_fps(log, BS) == pytest.approx(BS * 1000 / float(without_first.group(1)))


def test_a_one_file_folder_has_no_without_first_line_and_our_parse_falls_back(file_flow, tmp_path):
    one = tmp_path / "one_ms"
    one.mkdir()
    shutil.copy(file_flow / "prep_image_bs2" / "input_00000.bin", one)
    run = run_script("convmixer_infer.py", "--model", "./convmixer_1536_20.onnx", "--input", one,
                     "--output", tmp_path / "out", cwd=file_flow)
    assert run.returncode == 0, run.stderr
    assert "without first time" not in run.stdout
    average = re.search(r"Inference average time : ([\d.]+) ms\n\Z", run.stdout)
    log = tmp_path / "one.txt"
    log.write_text(run.stdout)
    ours = run_script("test/parse.py", "--result-file", log, "--batch-size", str(BS))
    assert ours.stdout.strip() == f"bs{BS} fps:{BS * 1000 / float(average.group(1)):.3f}"


def test_the_guides_parse_reads_the_streaming_log(dataset):
    root, correct = dataset
    work = root / "stream_ms"
    work.mkdir(exist_ok=True)
    run = run_script("convmixer_stream_eval.py", "--model", root / "convmixer_1536_20.onnx", "--image-path",
                     root / "imageNet" / "val", "--annotation-file-path", root / "imageNet" / "val_label.txt",
                     "--result-json-path", work / "result_ms", "--json-file-name", "result_bs2.json",
                     "--batch-size", str(BS), "--workers", "1", "--threads", "1", cwd=work)
    assert run.returncode == 0, run.stderr
    log = work / "msame_bs2.txt"
    log.write_text(run.stdout)
    assert re.search(r"Inference average time without first time: [\d.]+ ms\n\Z", run.stdout)
    without_first = re.search(r"^Inference average time without first time: ([\d.]+) ms$", run.stdout, re.M)
    assert guide_parse_fps(log, BS) == pytest.approx(BS * 1000 / float(without_first.group(1)))
    assert f"top1:{round(correct / NUM_PHOTOS * 100, 2)}%" in run.stdout

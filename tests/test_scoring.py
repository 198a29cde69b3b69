"""convmixer_eval_acc.py / convmixer_suite.guide.scoring: every msame and ais_bench output layout scores to exactly
the top-k that the logits and labels give; every bad input is one error line."""
import json
import os
import shutil

import numpy as np
import pytest

from convmixer_suite.commands import eval_acc as eval_acc_command
from conftest import run_script
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.manifest import Manifest, write_manifest
from convmixer_suite.guide.scoring import format_accuracy_line, write_accuracy_json
from convmixer_suite.guide.transform import EvalTransform

LAYOUTS = {  # name: (file name of batch k, format)
    "msame_txt": ("input_{k:05d}_output_0.txt", "txt"),
    "msame_bin": ("input_{k:05d}_output_0.bin", "bin"),
    "ais_txt": ("input_{k:05d}_0.txt", "txt"),
    "ais_bin": ("input_{k:05d}_0.bin", "bin"),
    "ais_npy": ("input_{k:05d}_0.npy", "npy"),
}
RESULT_FOLDERS = {  # how the tool nests its files under --output
    "msame_old": "20210723_145039",
    "msame_new": "2022516_3_8_36_123456",
    "ais_bench": "2023_01_03-10_11_12",
    "flat": "",
}


def make_logits(rng, labels, n_rows, n_classes=1000):
    """Logits on a 1/16 grid (exact in float32 and in 6-digit text; ties common), with each label placed
    at a random rank 0..7 so that top-1 … top-5 all differ."""
    logits = rng.integers(-1599, 1600, size=(n_rows, n_classes)) / 16
    for i, label in enumerate(labels):
        row = np.delete(logits[i], label)
        logits[i, label] = np.sort(row)[::-1][rng.integers(0, 8)]
    return logits


def expected_topk(logits, labels, k=5):
    """Independent reference: stable argsort of -logits (ties: lower class first), label in the first k."""
    order = np.argsort(-logits, axis=1, kind="stable")
    return [float(np.mean([label in order[i, :kk] for i, label in enumerate(labels)])) for kk in range(1, k + 1)]


def write_output_file(path, rows, fmt):
    if fmt == "txt":  # msame: one line per row, every value followed by a space
        path.write_text("".join("".join(f"{v:g} " for v in row) + "\n" for row in rows))
    elif fmt == "bin":
        rows.astype("<f4").tofile(path)
    else:
        np.save(path, rows.astype(np.float32))


def write_outputs(folder, logits, batch_size, layout):
    pattern, fmt = LAYOUTS[layout]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(len(logits) // batch_size):
        write_output_file(folder / pattern.format(k=k), logits[k * batch_size:(k + 1) * batch_size], fmt)
    return folder


def write_labels(path, names, labels):
    path.write_text("".join(f"{name}.JPEG {label}\n" for name, label in zip(names, labels)))
    return path


def val_names(n):
    return [f"ILSVRC2012_val_{i + 1:08d}" for i in range(n)]


def positional_run(tmp_path, n_images=11, batch_size=4, layout="msame_txt", sub="20210723_145039", seed=0,
                   n_classes=1000):
    """Outputs for n_images val images in padded batches, no manifest; returns (output folder, labels file,
    logits of the real images, their labels)."""
    rng = np.random.default_rng(seed)
    n_rows = -(-n_images // batch_size) * batch_size
    labels = rng.integers(0, 1000, n_rows)
    logits = make_logits(rng, labels + (n_classes == 1001), n_rows, n_classes)
    out = tmp_path / "outputs_om"
    write_outputs(out / sub, logits, batch_size, layout)
    labels_file = write_labels(tmp_path / "val_label.txt", val_names(n_images), labels[:n_images])
    return out, labels_file, logits[:n_images], labels[:n_images]


def evaluate(out, labels_file, tmp_path, *extra):
    """main() in process; returns (accuracy JSON, printed lines)."""
    json_dir = tmp_path / "result" / "nested"
    eval_acc_command.main([str(a) for a in ("--folder-davinci-target", out, "--annotation-file-path",
                                              labels_file, "--result-json-path", json_dir,
                                              "--json-file-name", "result_bs.json", *extra)])
    return json.loads((json_dir / "result_bs.json").read_text())


def json_values(table):
    return {entry["key"]: entry["value"] for entry in table["value"]}


def assert_scores(table, logits, labels, n_classes=1000, k=5):
    expected = expected_topk(logits, labels, k)
    assert table["title"] == "Overall statistical evaluation"
    values = json_values(table)
    assert values["Number of images"] == str(len(labels)) and values["Number of classes"] == str(n_classes)
    assert [values[f"Top{i} accuracy"] for i in range(1, k + 1)] == [f"{round(a * 100, 2)}%" for a in expected]
    assert len(set(expected)) > 1  # the figures are not all the same, so a mix-up would show


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("nesting", sorted(RESULT_FOLDERS))
def test_every_layout_scores_exactly(tmp_path, capsys, layout, nesting):
    out, labels_file, logits, labels = positional_run(tmp_path, layout=layout, sub=RESULT_FOLDERS[nesting])
    if nesting == "ais_bench":  # summaries beside and inside the result folder are not outputs
        (out / "2023_01_03-10_11_12_summary.json").write_text(json.dumps({"throughput": 12.5, "args": []}))
        (out / "2023_01_03-10_11_12" / "sumary.json").write_text("{}")
    table = evaluate(out, labels_file, tmp_path, "--batch-size", "4")
    assert_scores(table, logits, labels)
    topk = expected_topk(logits, labels)
    assert capsys.readouterr().out.strip().splitlines()[-1] == format_accuracy_line(topk)
    assert format_accuracy_line(topk) == f"top1:{round(topk[0] * 100, 2)}% top5:{round(topk[4] * 100, 2)}%"


def test_1001_classes_drop_background(tmp_path):
    out, labels_file, logits, labels = positional_run(tmp_path, n_images=9, batch_size=3, layout="ais_bin",
                                                      n_classes=1001)
    logits[:, 0] = 1000.0  # a background class that would win every image if it were kept
    write_outputs(out / "20210723_145039", logits, 3, "ais_bin")
    assert_scores(evaluate(out, labels_file, tmp_path, "--batch-size", "3"), logits[:, 1:], labels, n_classes=1001)


def test_topk_option(tmp_path):
    out, labels_file, logits, labels = positional_run(tmp_path, batch_size=1)
    assert_scores(evaluate(out, labels_file, tmp_path, "--topk", "3"), logits, labels, k=3)


def manifest_run(tmp_path, batch_size=3):
    """A run whose row order is not val order (class subfolders), with one skipped image and padding."""
    rng = np.random.default_rng(5)
    names = [f"n{i % 3:02d}/ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(10)]
    names.sort()
    skipped = names[4]
    n_rows = -(-len(names) // batch_size) * batch_size
    labels = rng.integers(0, 1000, n_rows)
    logits = make_logits(rng, labels, n_rows)
    out = write_outputs(tmp_path / "outputs_om" / "2022516_3_8_36_123456", logits, batch_size, "msame_bin").parent
    prep = tmp_path / "prep_image"
    prep.mkdir()
    manifest = Manifest(images=names, batch_size=batch_size, transform=EvalTransform().to_dict(),
                        skipped=[{"name": skipped, "error": "truncated"}], complete=True)
    write_manifest(prep, manifest)
    stems = [n.split("/")[1][:-5] for n in names]
    labels_file = write_labels(tmp_path / "val_label.txt", sorted(stems),
                               [labels[stems.index(s)] for s in sorted(stems)])
    real = [j for j, name in enumerate(names) if name != skipped]
    return out, prep, labels_file, logits[real], labels[real], logits[:len(names)], labels[:len(names)]


@pytest.mark.parametrize("how", ["flag", "in_output_folder", "ais_bench_summary_args", "summary_input",
                                 "runner_records"])
def test_manifest_mapping(tmp_path, how):
    out, prep, labels_file, logits, labels, _, _ = manifest_run(tmp_path)
    extra = []
    if how == "flag":
        extra = ["--manifest", prep]
    elif how == "in_output_folder":
        shutil.copy(prep / ".manifest.json", out / ".manifest.json")
    elif how == "ais_bench_summary_args":
        summary = {"args": ["ais_bench", "--model", "m.om", "--input", str(prep), "--output", str(out)]}
        (out / "2022516_3_8_36_123456_summary.json").write_text(json.dumps(summary))
    elif how == "summary_input":
        (out / "2022516_3_8_36_123456" / "summary.json").write_text(json.dumps({"input": str(prep)}))
    else:  # convmixer_infer.py's summary, in <output>.runs/ beside the output folder
        records = out.with_name(out.name + ".runs")
        records.mkdir()
        (records / "2022516_3_8_36_123456_summary.json").write_text(json.dumps({"input": str(prep)}))
    table = evaluate(out, labels_file, tmp_path, *extra)
    assert_scores(table, logits, labels)
    assert json_values(table)["Number of images"] == "9"


def test_positional_mapping_would_differ(tmp_path):
    """The manifest test above is meaningful: read by position, the same outputs score differently."""
    out, prep, labels_file, logits, labels, all_logits, all_labels = manifest_run(tmp_path)
    label_of = dict(line.split() for line in labels_file.read_text().splitlines())
    positional_labels = [int(label_of[f"{n}.JPEG"]) for n in val_names(10)]
    assert expected_topk(all_logits, positional_labels) != expected_topk(logits, labels)


def test_accuracy_json_format(tmp_path):
    path = write_accuracy_json(tmp_path / "a" / "r.json", 50000, 1000, [0.813512, 0.9, 0.95, 0.97, 0.9554])
    assert json.loads(path.read_text()) == {"title": "Overall statistical evaluation", "value": [
        {"key": "Number of images", "value": "50000"}, {"key": "Number of classes", "value": "1000"},
        {"key": "Top1 accuracy", "value": "81.35%"}, {"key": "Top2 accuracy", "value": "90.0%"},
        {"key": "Top3 accuracy", "value": "95.0%"}, {"key": "Top4 accuracy", "value": "97.0%"},
        {"key": "Top5 accuracy", "value": "95.54%"}]}
    assert format_accuracy_line([0.813512, 0.9, 0.95, 0.97, 0.9554]) == "top1:81.35% top5:95.54%"


# ---- bad input: one line, exit 2, no traceback, no JSON ---------------------------------------------

def run_eval(out, labels_file, tmp_path, *extra):
    return run_script("convmixer_eval_acc.py", "--folder-davinci-target", out, "--annotation-file-path",
                      labels_file, "--result-json-path", tmp_path / "res", "--json-file-name", "r.json", *extra)


def assert_refused(result, tmp_path, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convmixer_eval_acc.py: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (tmp_path / "res" / "r.json").exists()


def break_positional(tmp_path, what):
    out, labels_file, _, _ = positional_run(tmp_path, layout="msame_txt" if what == "bad_token" else "msame_bin")
    results = out / "20210723_145039"
    if what == "missing_batch":
        (results / "input_00001_output_0.bin").unlink()
        return out, labels_file, ["missing for 4 images", "first: ILSVRC2012_val_00000005"]
    if what == "bad_token":
        path = results / "input_00002_output_0.txt"
        path.write_text("abc " + path.read_text().split(" ", 1)[1])  # a non-number in place of a value
        return out, labels_file, [path.name, "malformed"]
    if what in ("short_bin", "odd_bin"):
        path = results / "input_00001_output_0.bin"
        path.write_bytes(path.read_bytes()[:-16 if what == "short_bin" else -4])
        return out, labels_file, [path.name]
    if what == "no_label":
        lines = labels_file.read_text().splitlines()
        labels_file.write_text("\n".join(lines[:4] + lines[5:]) + "\n")
        return out, labels_file, ["no label for image ILSVRC2012_val_00000005"]
    if what == "bad_label_line":
        lines = labels_file.read_text().splitlines()
        labels_file.write_text("\n".join(lines[:2] + ["ILSVRC2012_val_00000003.JPEG"] + lines[3:]) + "\n")
        return out, labels_file, ["val_label.txt: line 3"]
    if what == "empty_folder":
        shutil.rmtree(results)
        results.mkdir()
        return out, labels_file, ["no output files"]
    if what == "extra_batch":
        shutil.copy(results / "input_00000_output_0.bin", results / "input_00003_output_0.bin")
        return out, labels_file, ["input_00003_output_0.bin", "past the 3 batches"]
    if what == "nan":
        path = results / "input_00002_output_0.bin"
        data = np.fromfile(path, dtype="<f4")
        data[7] = np.nan
        data.tofile(path)
        return out, labels_file, [path.name, "NaN"]
    if what == "two_files_one_batch":  # an ais_bench output beside msame's for batch 1
        shutil.copy(results / "input_00001_output_0.bin", results / "input_00001_0.bin")
        return out, labels_file, ["two output files for batch 1", "input_00001_0.bin", "input_00001_output_0.bin"]
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing_batch", "bad_token", "short_bin", "odd_bin", "no_label",
                                  "bad_label_line", "empty_folder", "extra_batch", "nan", "two_files_one_batch"])
def test_bad_positional_input_is_refused(tmp_path, what):
    out, labels_file, fragments = break_positional(tmp_path, what)
    assert_refused(run_eval(out, labels_file, tmp_path, "--batch-size", "4"), tmp_path, *fragments)


def test_topk_above_the_class_count_is_refused(tmp_path):
    out, labels_file, _, _ = positional_run(tmp_path, n_images=8, batch_size=4, n_classes=1000)
    assert_refused(run_eval(out, labels_file, tmp_path, "--batch-size", "4", "--topk", "1001"), tmp_path,
                   "1000-class outputs cannot score top-1001")


def test_bad_manifest_input_is_refused(tmp_path):
    out, prep, labels_file, _, _, _, _ = manifest_run(tmp_path)
    assert_refused(run_eval(out, labels_file, tmp_path, "--manifest", prep, "--batch-size", "2"), tmp_path,
                   "--batch-size 2", "batch size 3")
    (out / "2022516_3_8_36_123456" / "input_00003_output_0.bin").unlink()
    assert_refused(run_eval(out, labels_file, tmp_path, "--manifest", prep), tmp_path,
                   "missing for 1 images", "n02/ILSVRC2012_val_00000009.JPEG")

    manifest = json.loads((prep / ".manifest.json").read_text())
    (prep / ".manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert_refused(run_eval(out, labels_file, tmp_path, "--manifest", prep), tmp_path, "did not finish")
    every = [{"name": n, "error": "x"} for n in manifest["images"]]
    (prep / ".manifest.json").write_text(json.dumps({**manifest, "skipped": every}))
    assert_refused(run_eval(out, labels_file, tmp_path, "--manifest", prep), tmp_path, "nothing to score")


def test_unknown_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="no such output folder"):
        evaluate(tmp_path / "nowhere", tmp_path / "val_label.txt", tmp_path)


def test_newest_of_several_result_folders(tmp_path, capsys):
    """A second msame run adds a second timestamp folder; the newest is scored, and the note says so."""
    out, labels_file, logits, labels = positional_run(tmp_path, sub="20210723_145039")
    old = write_outputs(out / "20210722_101010", np.zeros((12, 1000)), 4, "msame_txt")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    assert_scores(evaluate(out, labels_file, tmp_path, "--batch-size", "4"), logits, labels)
    assert "using the newest, 20210723_145039" in capsys.readouterr().err

"""Streaming evaluation against the file-based flow (preprocess -> infer -> eval_acc) on the same photos."""
import re

import numpy as np
import pytest

from conftest import run_script, write_dark_photo, write_photo
from convmixer_suite.runtimes.registry import create_backend
from convmixer_suite.run.records import read_records, records_folder
from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch

BS = 3  # seven photos: the last batch has two padding rows


@pytest.fixture
def labelled(tmp_path, photo_folder, small_onnx):
    """val_label.txt where four photos carry the label PyTorch-equivalent fp32 predicts and three another
    one, so top-1 is 4/7 and a misplaced row would change it."""
    paths, _ = list_images(photo_folder)
    logits = create_backend("onnxruntime", small_onnx).predict(load_batch(paths, EvalTransform())[0])
    labels = [int(row.argmax()) if i < 4 else int(np.argsort(row)[-3]) for i, row in enumerate(logits)]
    label_file = tmp_path / "val_label.txt"
    label_file.write_text("".join(f"{p.name} {label}\n" for p, label in zip(paths, labels)))
    return label_file


def stream_eval(small_onnx, images, labels, out, *extra):
    return run_script("convmixer_stream_eval.py", "--model", small_onnx, "--image-path", images,
                      "--annotation-file-path", labels, "--result-json-path", out, "--json-file-name",
                      f"result_bs{BS}.json", "--batch-size", BS, "--workers", 2, *extra)


def file_flow(small_onnx, images, labels, work, *extra):
    prep, outputs = work / "prep", work / "outputs"
    run_script("convmixer_preprocess.py", "--image-path", images, "--prep-image", prep, "--batch-size", BS,
               *extra, check=True)
    run_script("convmixer_infer.py", "--model", small_onnx, "--input", prep, "--output", outputs, check=True)
    run_script("convmixer_eval_acc.py", "--folder-davinci-target", outputs, "--annotation-file-path", labels,
               "--result-json-path", work, "--json-file-name", f"result_bs{BS}.json", "--batch-size", BS,
               check=True)
    return (work / f"result_bs{BS}.json").read_text()


def test_stream_gives_the_file_flows_json_and_writes_no_data_files(tmp_path, small_onnx, photo_folder, labelled):
    expected = file_flow(small_onnx, photo_folder, labelled, tmp_path / "files")
    assert '"Top1 accuracy", "value": "57.14%"' in expected
    out = tmp_path / "stream"
    result = stream_eval(small_onnx, photo_folder, labelled, out)
    assert result.returncode == 0, result.stderr
    assert (out / f"result_bs{BS}.json").read_text() == expected
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "files")]
    assert not [p for p in written if p.suffix in (".bin", ".txt") and p != labelled]
    assert result.stdout.count("Inference time:") == 3  # one per batch, as msame logs per file
    assert "top1:57.14%" in result.stdout
    assert "pipeline" in result.stdout and "images/s" in result.stdout
    log = tmp_path / "stream.log"
    log.write_text(result.stdout)
    parsed = run_script("test/parse.py", "--result-file", log, "--batch-size", BS)
    assert parsed.returncode == 0 and parsed.stdout.startswith(f"bs{BS} fps:")
    summary = (out / f"result_bs{BS}_stream_summary.json").read_text()
    assert '"end_to_end_images_per_s"' in summary and '"pipeline_overhead_ratio"' in summary


def test_bad_image_stops_the_stream_or_is_skipped_like_the_file_flow(tmp_path, small_onnx, photo_folder, labelled):
    bad = photo_folder / "ILSVRC2012_val_00000004.JPEG"
    bad.write_bytes(b"not a jpeg")
    stopped = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "s1")
    assert stopped.returncode == 2 and "ILSVRC2012_val_00000004.JPEG" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not (tmp_path / "s1" / f"result_bs{BS}.json").exists()
    expected = file_flow(small_onnx, photo_folder, labelled, tmp_path / "files", "--skip-bad")
    skipped = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "s2", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert (tmp_path / "s2" / f"result_bs{BS}.json").read_text() == expected
    assert '"Number of images", "value": "6"' in expected


def test_an_unlabelled_image_is_refused_by_name(tmp_path, small_onnx, photo_folder, labelled):
    write_photo(photo_folder / "extra_photo.JPEG", seed=9)
    result = stream_eval(small_onnx, photo_folder, labelled, tmp_path / "out")
    assert result.returncode == 2 and "extra_photo.JPEG" in result.stderr and "no label" in result.stderr


@pytest.mark.parametrize("broken, message", [
    ("model", r"missing\.onnx"),
    ("images", r"no_such_val: not a folder of images"),
    ("labels", r"no_such_labels\.txt: cannot read label file"),
])
def test_missing_inputs_get_one_line_naming_them(tmp_path, small_onnx, photo_folder, labelled, broken, message):
    model = tmp_path / "missing.onnx" if broken == "model" else small_onnx
    images = tmp_path / "no_such_val" if broken == "images" else photo_folder
    labels = tmp_path / "no_such_labels.txt" if broken == "labels" else labelled
    result = stream_eval(model, images, labels, tmp_path / "result")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(message, result.stderr)
    assert not (tmp_path / "result" / f"result_bs{BS}.json").exists()


def stops_at_the_dark_photo(result, out, records):
    """What a stream run of nan_onnx must do with a black 5th photo (batch 1 at batch size 3): one line naming the
    photo and the count, no JSON, batch 0 recorded and batch 1 not."""
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "convmixer_stream_eval.py: error: ILSVRC2012_val_00000005.JPEG (batch 1): 1000 of 3000 output values are not "
        "finite (NaN or infinite), in 1 image(s); nothing recorded for this batch and no JSON written; the batches "
        "before it stay recorded for a rerun of the same run (another model starts over with --fresh)")
    assert not list(out.glob("*.json"))
    recorded = sorted(r["image"] for r in records())
    assert recorded == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]


def test_logits_that_are_not_finite_stop_the_local_stream_naming_the_image(tmp_path, nan_onnx, photo_folder,
                                                                           labelled):
    write_dark_photo(photo_folder / "ILSVRC2012_val_00000005.JPEG")
    out = tmp_path / "out"
    result = stream_eval(nan_onnx, photo_folder, labelled, out, "--record-every", "0")
    stops_at_the_dark_photo(result, out, lambda: recorded_images(out))
    rerun = stream_eval(nan_onnx, photo_folder, labelled, out, "--record-every", "0")  # resumes at batch 1
    assert "resuming: 1 batches already recorded" in rerun.stderr and rerun.stdout.count("Inference time:") == 0
    stops_at_the_dark_photo(rerun, out, lambda: recorded_images(out))


def recorded_images(out) -> list:
    """The per-image records a stream run left in out/result_bs3_records/."""
    return read_records(records_folder(out / f"result_bs{BS}.json"))


@pytest.mark.parametrize("extra, message", [
    (["--engine", "ray", "--workers", "2"], "--workers sets the local engine's decode processes; with --engine ray, "
                                             "Ray runs decode tasks on the CPUs it has"),
    (["--max-logit-error", "-1"], "argument --max-logit-error: must be a number of at least 0, got -1"),
])
def test_conflicting_or_bad_flags_are_one_line(tmp_path, small_onnx, photo_folder, labelled, extra, message):
    result = run_script("convmixer_stream_eval.py", "--model", small_onnx, "--image-path", photo_folder,
                        "--annotation-file-path", labelled, "--result-json-path", tmp_path / "out",
                        "--json-file-name", "r.json", *extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"convmixer_stream_eval.py: error: {message}"
    assert not (tmp_path / "out").exists()


def test_a_reduced_precision_loads_its_model_once_and_never_forks_after(tmp_path, small_onnx, photo_folder, labelled,
                                                                         calib_dir, monkeypatch):
    """The fidelity gate loads the int8 model: the local engine runs that one (not a second load) and spawns its
    decode workers, as a process that runs a runtime must; fp32 forks them before its model loads."""
    from convmixer_suite.commands import stream_eval as stream_eval_command
    from convmixer_suite.run import stream
    from convmixer_suite.run.config import RunConfig
    events = []
    create, context = RunConfig.create_backend, stream.get_context
    monkeypatch.setattr(RunConfig, "create_backend", lambda self, **kw: events.append(f"load {self.precision}")
                        or create(self, **kw))
    monkeypatch.setattr(stream, "get_context", lambda method: events.append(f"pool {method}") or context(method))
    args = ["--model", str(small_onnx), "--image-path", str(photo_folder), "--annotation-file-path", str(labelled),
            "--json-file-name", "r.json", "--backend", "onnxruntime", "--batch-size", "3", "--workers", "1"]
    assert stream_eval_command.main(args + ["--result-json-path", str(tmp_path / "int8"), "--precision", "int8",
                                              "--calib", str(calib_dir)]) == 0
    assert events == ["load int8", "pool spawn"]
    events.clear()
    assert stream_eval_command.main(args + ["--result-json-path", str(tmp_path / "fp32")]) == 0
    assert events == ["pool fork", "load fp32"]

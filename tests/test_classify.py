"""convmixer_classify.py and its library: ImageNet's class names, and top-k probabilities for photos that
match PyTorch's softmax through the eval transform, on ONNX Runtime and on PyTorch, with dynamic and fixed
batches, and one line per unreadable photo."""
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import export_small_onnx, offline_env, run_script, seeded_model, write_photo

from convmixer_suite.commands import classify as classify_command
from convmixer_suite.run import classify
from convmixer_suite.guide import imagenet_classes
from convmixer_suite.runtimes.registry import create_backend
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import run_main
from convmixer_suite.guide.transform import EvalTransform, load_rgb

GUESS = re.compile(r"^  (\d\.\d{4})  (.+) \((\d+)\)$")


# ---- the class names ---------------------------------------------------------------------------------

def test_the_class_list_is_imagenets_in_index_order():
    classes = imagenet_classes.imagenet_classes()
    assert len(classes) == 1000 and [c.index for c in classes] == list(range(1000))
    known = {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby", 409: "analog clock",
             948: "Granny Smith", 999: "toilet tissue"}
    assert {i: classes[i].name for i in known} == known
    assert (classes[0].wnid, classes[999].wnid) == ("n01440764", "n15075141")
    assert classes[999].lemmas == "toilet tissue, toilet paper, bathroom tissue"


def rows_of(path):
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[:-1], "holds 999 classes, not ImageNet's 1000"),
    (lambda rows: rows[:1] + rows[:-1], "some WordNet ids appear twice"),
    (lambda rows: [rows[1], rows[0]] + rows[2:], "not in class-index order (sorted WordNet ids): n01440764 on row 1"),
    (lambda rows: rows[:5] + ["n0144 tench"] + rows[6:], "line 6 is not 'WordNet id<TAB>names'"),
])
def test_a_damaged_class_list_is_refused_in_one_line(tmp_path, edit, message):
    path = tmp_path / "classes.tsv"
    path.write_text("\n".join(edit(rows_of(imagenet_classes.CLASSES_FILE))) + "\n")
    with pytest.raises(UserError) as info:
        imagenet_classes.imagenet_classes(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


# ---- predictions ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peaked_model():
    """A small seeded ConvMixer with a sharpened head, so that its top classes are clearly apart."""
    model = seeded_model(seed=4)
    with torch.no_grad():
        model[-1].weight.mul_(40)
    return model


@pytest.fixture
def photos(tmp_path):
    return [write_photo(tmp_path / "photos" / f"p{i}.jpg", size=(260 + 50 * i, 240 + 30 * i), seed=10 + i)
            for i in range(5)]


def pytorch_probabilities(model, photos):
    transform = EvalTransform()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack([transform(load_rgb(p)) for p in photos])))
    return torch.softmax(logits.double(), dim=1).numpy()


@pytest.mark.parametrize("batch_size", [None, 2])
def test_probabilities_match_pytorch_on_onnxruntime(tmp_path, peaked_model, photos, batch_size):
    """Dynamic batch (all five in one run) and fixed batch 2 (three runs, the last padded)."""
    onnx = export_small_onnx(peaked_model, tmp_path / "m.onnx", batch_size=batch_size)
    backend = classify.run_config(onnx).create_backend()
    assert backend.name == "onnxruntime" and backend.batch_size == batch_size
    good, bad = classify.load_photos(photos, EvalTransform())
    assert bad == [] and [p for p, _ in good] == photos
    got = classify.predict_probabilities(backend, np.stack([image for _, image in good]))
    expected = pytorch_probabilities(peaked_model, photos)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    top = classify.top_k(got[0], 3)
    assert [g.index for g in top] == list(np.argsort(-expected[0])[:3])
    assert top[0].name == imagenet_classes.imagenet_classes()[top[0].index].name


def printed(stdout):
    """{photo path: [(probability, name, index), …]} from the script's output."""
    result, current = {}, None
    for line in stdout.splitlines()[1:]:
        match = GUESS.match(line)
        if match:
            result[current].append((float(match.group(1)), match.group(2), int(match.group(3))))
        else:
            current = line
            result[current] = []
    return result


def test_script_prints_pytorchs_top_k_and_names_bad_photos(tmp_path, peaked_model, photos):
    """A checkpoint runs on PyTorch; an unreadable photo and a missing one get a line each, the others are
    classified, and the exit status says something was wrong."""
    checkpoint = tmp_path / "m.pth.tar"
    torch.save(peaked_model.state_dict(), checkpoint)
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("shopping list")
    args = [photos[0], not_a_photo, photos[1], tmp_path / "gone.jpg", "--model", checkpoint, "--topk", 3]
    result = run_script("convmixer_classify.py", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"convmixer_classify.py: error: {not_a_photo}: cannot decode image (cannot identify image file "
        f"'{not_a_photo}')",
        f"convmixer_classify.py: error: {tmp_path / 'gone.jpg'}: no such file"]
    assert result.stdout.startswith(f"{checkpoint} on torch ")
    shown = printed(result.stdout)
    assert list(shown) == [str(photos[0]), str(photos[1])]
    expected = pytorch_probabilities(peaked_model, photos[:2])
    names = imagenet_classes.imagenet_classes()
    for guesses, row in zip(shown.values(), expected):
        indices = list(np.argsort(-row)[:3])
        assert [g[2] for g in guesses] == indices
        assert [g[1] for g in guesses] == [names[i].name for i in indices]
        np.testing.assert_allclose([g[0] for g in guesses], row[indices], atol=5e-5)


def test_default_model_is_the_exported_onnx_else_the_checkpoint(tmp_path, small_model, small_onnx,
                                                                small_checkpoint, photos):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_checkpoint, work / classify.DEFAULT_CHECKPOINT)
    assert classify.default_model(work) == work / classify.DEFAULT_CHECKPOINT
    result = run_script("convmixer_classify.py", photos[0], "--topk", 1, cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{classify.DEFAULT_CHECKPOINT} on torch ")
    shutil.copy(small_onnx, work / classify.DEFAULT_ONNX)
    assert classify.default_model(work) == work / classify.DEFAULT_ONNX
    onnx_result = run_script("convmixer_classify.py", photos[0], "--topk", 1, cwd=work)
    assert onnx_result.returncode == 0, onnx_result.stderr
    assert onnx_result.stdout.startswith(f"{classify.DEFAULT_ONNX} on onnxruntime ")
    assert printed(onnx_result.stdout)[str(photos[0])][0][2] == printed(result.stdout)[str(photos[0])][0][2]


def run_cli(*argv):
    with pytest.raises(SystemExit) as exit_info:
        run_main(classify_command.main, [str(a) for a in argv])
    return exit_info.value.code


def test_missing_default_checkpoint_is_downloaded_or_says_why_not(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key, value in offline_env().items():
        monkeypatch.setenv(key, value)
    assert run_cli(photos[0]) == 2
    assert "error: cannot download http://127.0.0.1:" in capsys.readouterr().err.splitlines()[-1]
    assert run_cli(photos[0], "--no-download") == 2
    assert "checkpoint not found (--no-download)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_no_readable_photo_and_bad_flags(tmp_path, small_onnx, capsys):
    assert run_cli(tmp_path / "a.jpg", tmp_path, "--model", small_onnx) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(f"{tmp_path / 'a.jpg'}: no such file")
    assert err[1].endswith(f"{tmp_path}: is a folder, not a photo")
    assert err[2].endswith("error: none of the 2 photo(s) could be read")
    with pytest.raises(SystemExit):
        classify_command.parse_args(["x.jpg", "--topk", "1001"])
    assert "--topk 1001: the model knows 1000 classes" in capsys.readouterr().err


def test_a_model_without_1000_classes_is_refused(tmp_path, photos):
    onnx = export_small_onnx(seeded_model(n_classes=10), tmp_path / "ten.onnx")
    backend = create_backend("onnxruntime", onnx)
    with pytest.raises(UserError, match="gives 10 scores per image, not one for each of the 1000"):
        classify.predict_probabilities(backend, np.zeros((1, 3, 224, 224), np.float32))

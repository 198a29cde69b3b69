"""EvalTransform against a reference written from torchvision's rules (torchvision itself is not installed).

The reference follows torchvision's code paths for a PIL image: ``pil_loader`` (open, convert("RGB")),
``F.resize`` with an int size (shorter side to 233, longer ``int(233 * long / short)``, returned unchanged
when already that size, else ``img.resize((w, h), BICUBIC)``), ``F.center_crop`` (offsets
``int(round((size - 224) / 2.0))``), ``to_tensor`` (uint8 -> float32 / 255) and ``normalize``
(``sub_(mean).div_(std)`` in float32), the tensor steps done with torch as torchvision does them.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_photo
from convmixer_net import DATA_CONFIG, DataConfig
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.transform import EvalTransform, list_images, load_batch, load_rgb


def torchvision_reference(path) -> np.ndarray:
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    size, crop = DATA_CONFIG.resize_size, DATA_CONFIG.crop_size
    w, h = img.size
    if w <= h:
        ow, oh = size, int(size * h / w)
    else:
        oh, ow = size, int(size * w / h)
    if (ow, oh) != (w, h):
        img = img.resize((ow, oh), Image.BICUBIC)
    top = int(round((oh - crop) / 2.0))
    left = int(round((ow - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    tensor = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(crop, crop, 3).permute(2, 0, 1)
    tensor = tensor.contiguous().to(dtype=torch.float32).div(255)
    mean = torch.as_tensor(DATA_CONFIG.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(DATA_CONFIG.std, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std).numpy()


def assert_matches_reference(path):
    ours = EvalTransform()(load_rgb(path))
    assert ours.dtype == np.float32 and ours.shape == (3, DATA_CONFIG.crop_size, DATA_CONFIG.crop_size)
    assert np.abs(ours - torchvision_reference(path)).max() <= 1e-5


# Odd sizes, portrait and landscape; (300, 225) is where truncating the long side (310) differs from
# rounding it (311); (311, 233) is where the crop offset 43.5 rounds to 44, not floor's 43.
PHOTO_SIZES = [(500, 375), (375, 500), (333, 501), (517, 299), (300, 225), (311, 233), (233, 311),
               (224, 224), (1, 1), (2, 300), (300, 2), (3, 500), (2000, 1500)]


@pytest.mark.parametrize("size", PHOTO_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_photo_sizes_match_torchvision(tmp_path, size):
    path = write_photo(tmp_path / "photo.JPEG", size=size, seed=sum(size))
    assert_matches_reference(path)


def make_mode_image(folder, mode):
    """An image file whose decoded mode is ``mode`` (checked), built from a smooth random photo."""
    rgb = Image.open(write_photo(folder / "src.png", size=(257, 190), seed=3))
    rng = np.random.default_rng(7)
    if mode == "I;16":
        img, name = Image.fromarray(rng.integers(0, 65535, (190, 257)).astype(np.uint16)), "i16.png"
    elif mode == "I":
        img, name = Image.fromarray(rng.integers(-50, 700, (190, 257)).astype(np.int32)), "i32.tif"
    elif mode == "P+transparency":
        img, name = rgb.convert("P"), "ptrns.png"
    elif mode == "CMYK":
        img, name = rgb.convert("CMYK"), "cmyk.jpg"
    elif mode == "P":
        img, name = rgb.convert("P"), "pal.gif"
    else:
        img, name = rgb.convert(mode), f"{mode.lower()}.png"
    path = folder / name
    img.save(path, **({"transparency": 5} if mode == "P+transparency" else {}))
    with Image.open(path) as check:
        assert check.mode == mode.split("+")[0]
        assert ("transparency" in check.info) == mode.endswith("transparency")
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P+transparency", "CMYK", "I;16", "I", "1"])
def test_modes_convert_as_pillow_does(tmp_path, mode):
    path = make_mode_image(tmp_path, mode)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(path)), expected)
    assert_matches_reference(path)


def test_png_behind_jpeg_name(tmp_path):
    path = write_photo(tmp_path / "ILSVRC2012_val_00000009.JPEG", size=(401, 289), mode="RGBA", fmt="PNG")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert_matches_reference(path)


def test_rounding_rules_by_hand():
    assert (DATA_CONFIG.resize_size, DATA_CONFIG.crop_size) == (233, 224)  # the numbers below assume these
    t = EvalTransform()
    assert t.resized_size(300, 225) == (310, 233)  # int(310.67), not 311
    assert t.resized_size(225, 300) == (233, 310)
    assert t.resized_size(3, 500) == (233, 38833)  # int(233 * 500 / 3)
    assert t.crop_box(311, 233) == (44, 4, 268, 228)  # round(43.5) = 44, round(4.5) = 4 (half to even)
    assert t.crop_box(313, 233)[0] == 44  # round(44.5) = 44


def test_config_comes_from_convmixer_net():
    other = DataConfig(input_size=(3, 160, 160), crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    t = EvalTransform(other)
    assert t.output_shape == (3, 160, 160) and t.resized_size(400, 300) == (242, 182)
    assert t(Image.new("RGB", (400, 300), (255, 0, 128))).shape == (3, 160, 160)
    restored = EvalTransform.from_dict(EvalTransform().to_dict())
    assert restored.config == DATA_CONFIG and restored.to_dict()["resize_size"] == DATA_CONFIG.resize_size


def test_undecodable_files_name_themselves(tmp_path):
    good = write_photo(tmp_path / "good.JPEG", size=(400, 300))
    truncated = tmp_path / "ILSVRC2012_val_00000002.JPEG"
    truncated.write_bytes(good.read_bytes()[:2000])
    text = tmp_path / "notes.JPEG"
    text.write_text("not an image\n")
    for path in (truncated, text):
        with pytest.raises(UserError, match=path.name):
            load_rgb(path)


def test_list_images_flat_and_class_folders(tmp_path):
    flat = tmp_path / "flat"
    for name in ["b.JPEG", "a.jpeg", "c.png"]:
        write_photo(flat / name, size=(20, 20))
    (flat / "val_label.txt").write_text("x")
    (flat / "LOC_synset_mapping.csv").write_text("x")
    paths, skipped = list_images(flat)
    assert [p.name for p in paths] == ["a.jpeg", "b.JPEG", "c.png"] and skipped == 2

    # the guide's order: by ImageNet image number across class folders, other names after by path
    nested = tmp_path / "nested"
    for rel in ["n02/ILSVRC2012_val_00000001.JPEG", "n01/ILSVRC2012_val_00000010.JPEG",
                "n01/ILSVRC2012_val_00000002.JPEG", "n01/extra.jpg", "a_photo.png"]:
        write_photo(nested / rel, size=(20, 20))
    paths, skipped = list_images(nested)
    assert [p.relative_to(nested).as_posix() for p in paths] == [
        "n02/ILSVRC2012_val_00000001.JPEG", "n01/ILSVRC2012_val_00000002.JPEG", "n01/ILSVRC2012_val_00000010.JPEG",
        "a_photo.png", "n01/extra.jpg"]
    assert skipped == 0


def test_list_images_refuses_empty_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no image files"):
        list_images(tmp_path / "empty")
    with pytest.raises(UserError, match="not a folder"):
        list_images(tmp_path / "missing")


def test_load_batch_pads_and_skips(tmp_path):
    good = [write_photo(tmp_path / f"{i}.JPEG", size=(260 + i, 240), seed=i) for i in range(2)]
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    batch, skipped = load_batch([good[0], bad, good[1]], EvalTransform(), rows=4, skip_bad=True)
    assert batch.shape == (4, 3, 224, 224) and batch.dtype == np.float32
    assert np.array_equal(batch[0], EvalTransform()(load_rgb(good[0])))
    assert np.array_equal(batch[2], EvalTransform()(load_rgb(good[1])))
    assert not batch[1].any() and not batch[3].any()
    assert [(row, path) for row, path, _ in skipped] == [(1, bad)]
    with pytest.raises(UserError, match="bad.JPEG"):
        load_batch([good[0], bad], EvalTransform())

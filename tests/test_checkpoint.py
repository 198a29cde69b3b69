"""convmixer_suite.model.checkpoint: every published layout loads to the same model; bad files get one clear error."""
import argparse
import fractions
import functools

import pytest
import torch
from conftest import SMALL, seeded_model, timm_state_dict, write_photo
from safetensors.torch import save_file

import convmixer_net
from convmixer_suite.model import checkpoint
from convmixer_suite.util.errors import UserError

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))


def training_checkpoint(state_dict, key="state_dict"):
    """What timm's CheckpointSaver writes: weights under a wrapper key plus epoch, optimizer state and an
    argparse.Namespace of the training arguments."""
    return {"epoch": 299, "arch": "convmixer_1536_20", key: state_dict, "version": 2, "metric": 81.37,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.01}]},
            "args": argparse.Namespace(model="convmixer_1536_20", lr=0.01, epochs=300, sched="onecycle",
                                       mean=None, crop_pct=0.96, input_size=[3, 224, 224])}


def module_prefixed(state_dict):
    return {f"module.{k}": v for k, v in state_dict.items()}


LAYOUTS = {
    "raw": lambda sd: sd,
    "state_dict": lambda sd: training_checkpoint(sd),
    "model": lambda sd: {"model": sd, "epoch": 3},
    "state_dict_ema": lambda sd: {"state_dict_ema": sd, "epoch": 3},
    "module_prefix": lambda sd: module_prefixed(sd),
    "wrapped_module_prefix": lambda sd: training_checkpoint(module_prefixed(sd)),
    "timm": lambda sd: timm_state_dict(sd, SMALL["depth"]),
    "timm_wrapped_module_prefix": lambda sd: training_checkpoint(module_prefixed(
        timm_state_dict(sd, SMALL["depth"]))),
}


@pytest.mark.parametrize("suffix", [".pth", ".pth.tar"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_loads_the_same_model(tmp_path, small_model, layout, suffix):
    path = tmp_path / f"ckpt{suffix}"
    torch.save(LAYOUTS[layout](small_model.state_dict()), path)
    model, spec = checkpoint.load_model(path)
    assert spec.name == "convmixer_32_2_ks5_p14"
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(X), small_model(X))


@pytest.mark.parametrize("keys", ["locuslab", "timm"])
def test_safetensors_loads_the_same_model(tmp_path, small_model, keys):
    sd = small_model.state_dict()
    if keys == "timm":
        sd = timm_state_dict(sd, SMALL["depth"])
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model, _ = checkpoint.load_model(path)
    with torch.no_grad():
        assert torch.equal(model(X), small_model(X))


def test_legacy_torch_save_format_loads(tmp_path, small_model):
    path = tmp_path / "old.pth"
    torch.save(small_model.state_dict(), path, _use_new_zipfile_serialization=False)
    assert checkpoint.load_state_dict(path).keys() == small_model.state_dict().keys()


def test_plain_weights_are_preferred_over_their_ema_copy(tmp_path, small_model):
    ema = seeded_model(seed=9)
    path = tmp_path / "both.pth.tar"
    torch.save({**training_checkpoint(small_model.state_dict()), "state_dict_ema": ema.state_dict()}, path)
    loaded = checkpoint.load_state_dict(path)
    assert torch.equal(loaded["0.weight"], small_model.state_dict()["0.weight"])


def test_timm_head_index_follows_depth():
    sd = timm_state_dict(seeded_model(depth=3).state_dict(), 3)
    renamed = checkpoint.to_locuslab_keys(sd)
    assert "8.weight" in renamed and renamed["8.weight"].shape == (1000, SMALL["dim"])
    assert renamed.keys() == seeded_model(depth=3).state_dict().keys()


def test_namespace_checkpoint_loads_with_weights_only(tmp_path, small_model, monkeypatch):
    """The Namespace is allowlisted; the loader still runs with weights_only=True."""
    path = tmp_path / "train.pth.tar"
    torch.save(training_checkpoint(small_model.state_dict()), path)
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("weights_only")) or real_load(*a, **kw))
    assert checkpoint.load_state_dict(path).keys() == small_model.state_dict().keys()
    assert seen == [True]


class WritesAFileWhenUnpickled:
    """A stand-in for a malicious pickle: unpickling it opens (creates) a file of the attacker's choice."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def test_arbitrary_object_is_refused_without_allow_pickle_and_runs_nothing(tmp_path, small_model):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_model.state_dict(), "x": WritesAFileWhenUnpickled(marker)}, path)
    with pytest.raises(UserError, match=r"pickle calls io\.open, .*--allow-pickle"):
        checkpoint.load_state_dict(path)
    assert not marker.exists()
    # The explicit opt-in really unpickles (and so runs the file's code), then finds the weights.
    assert checkpoint.load_state_dict(path, allow_pickle=True).keys() == small_model.state_dict().keys()
    assert marker.exists()


def test_other_global_is_named_in_the_refusal(tmp_path, small_model):
    path = tmp_path / "frac.pth.tar"
    torch.save({"state_dict": small_model.state_dict(), "ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UserError, match=r"fractions\.Fraction.*safe loader refuses.*--allow-pickle"):
        checkpoint.load_state_dict(path)


def test_whole_pickled_module_loads_only_with_allow_pickle(tmp_path, small_model):
    path = tmp_path / "whole.pth"
    torch.save(small_model, path)
    with pytest.raises(UserError, match="--allow-pickle"):
        checkpoint.load_state_dict(path)
    assert checkpoint.load_state_dict(path, allow_pickle=True).keys() == small_model.state_dict().keys()


def meta_state_dict(spec, n_classes=1000):
    """Shapes only: no memory is allocated for the full-size weights."""
    with torch.device("meta"):
        return spec.build(n_classes).state_dict()


@pytest.mark.parametrize("name", list(convmixer_net.ARCHS))
@pytest.mark.parametrize("keys", ["locuslab", "timm"])
def test_released_specs_are_recognised_by_shape(name, keys):
    spec = convmixer_net.ARCHS[name]
    sd = meta_state_dict(spec)
    if keys == "timm":
        sd = checkpoint.to_locuslab_keys(timm_state_dict(sd, spec.depth))
    assert checkpoint.spec_from_state_dict(sd) is spec


def test_768_32_is_released_with_relu():
    assert checkpoint.spec_from_state_dict(meta_state_dict(convmixer_net.ARCHS["convmixer_768_32"])).activation \
        == "relu"


def test_custom_shape_gets_a_descriptive_gelu_spec():
    spec = checkpoint.spec_from_state_dict(seeded_model(dim=48, depth=3, kernel_size=7, patch_size=16).state_dict())
    assert (spec.name, spec.dim, spec.depth, spec.kernel_size, spec.patch_size, spec.activation) == \
        ("convmixer_48_3_ks7_p16", 48, 3, 7, 16, "gelu")


def test_non_convmixer_tensors_have_no_spec():
    with pytest.raises(UserError, match="not a ConvMixer's.*conv1.weight"):
        checkpoint.spec_from_state_dict({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)})


def test_number_of_classes_comes_from_the_head(tmp_path):
    small = seeded_model(n_classes=10)
    path = tmp_path / "ten.pth"
    torch.save(small.state_dict(), path)
    model, _ = checkpoint.load_model(path)
    assert model(X).shape == (2, 10)


def test_half_precision_checkpoint_gives_a_float32_model(tmp_path, small_model):
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in small_model.state_dict().items()}, path)
    model, _ = checkpoint.load_model(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(model(X), small_model(X), rtol=0.05, atol=0.05)


def test_missing_batchnorm_counters_are_tolerated(tmp_path, small_model):
    path = tmp_path / "nocount.pth"
    torch.save({k: v for k, v in small_model.state_dict().items() if "num_batches_tracked" not in k}, path)
    model, _ = checkpoint.load_model(path)
    assert not any(t.is_meta for t in model.state_dict().values())
    with torch.no_grad():
        assert torch.equal(model(X), small_model(X))


def test_forced_arch_that_does_not_fit_lists_keys_and_shapes(small_checkpoint):
    with pytest.raises(UserError) as err:
        checkpoint.load_model(small_checkpoint, arch="convmixer_1536_20")
    msg = str(err.value)
    assert "\n" not in msg
    assert "does not fit convmixer_1536_20" in msg
    assert "missing 5.0.fn.0.weight" in msg and "unexpected 7.weight, 7.bias" in msg
    assert "shape 0.weight: checkpoint [32, 3, 14, 14] vs model [1536, 3, 7, 7]" in msg


def test_other_architecture_falls_back_to_the_default_and_lists_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(UserError, match=r"does not fit convmixer_1536_20: missing 0\.weight, 0\.bias, 2\.weight, "
                                        r"2\.bias … \(\d+ in all\); unexpected conv1\.weight, bn1\.weight"):
        checkpoint.load_model(path)


def test_unknown_arch_name_is_a_user_error(small_checkpoint):
    with pytest.raises(UserError, match="unknown --arch 'convmixer_9'"):
        checkpoint.load_model(small_checkpoint, arch="convmixer_9")


def truncated(tmp_path, small_model, zip_format):
    full = tmp_path / "full.pth"
    torch.save(small_model.state_dict(), full, _use_new_zipfile_serialization=zip_format)
    data = full.read_bytes()
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(data[: len(data) // 2])
    return path


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def saved(path, obj):
    torch.save(obj, path)
    return path


BAD_FILES = {
    "missing": (lambda tmp, m: tmp / "nope.pth.tar", "checkpoint not found"),
    "directory": (lambda tmp, m: tmp, "is not a file"),
    "empty": (lambda tmp, m: written(tmp / "e.pth", b""), "empty, not a checkpoint"),
    "truncated_zip": (lambda tmp, m: truncated(tmp, m, True), "truncated or corrupt"),
    "truncated_legacy": (lambda tmp, m: truncated(tmp, m, False), "truncated or corrupt"),
    "jpeg": (lambda tmp, m: write_photo(tmp / "photo.pth.tar", fmt="JPEG"), "looks like a JPEG image"),
    "text": (lambda tmp, m: written(tmp / "t.pth", b"weights: 1 2 3\n"),
             "looks like a text file"),
    "no_tensors": (lambda tmp, m: saved(tmp / "n.pth", {"epoch": 3, "arch": "x"}),
                   "holds no tensors (its keys: epoch, arch)"),
    "a_list": (lambda tmp, m: saved(tmp / "l.pth", [1, 2]), "holds a list"),
    "bad_safetensors": (lambda tmp, m: written(tmp / "b.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{x"),
                        "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_get_one_line_naming_the_file(tmp_path, small_model, case):
    make, expected = BAD_FILES[case]
    path = make(tmp_path, small_model)
    with pytest.raises(UserError) as err:
        checkpoint.load_state_dict(path)
    msg = str(err.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


# ---- torch without weights_only (the guide's 1.5): the restricted unpickler ---------------------------------

@pytest.fixture
def torch_without_safe_globals(monkeypatch):
    """The loader as on a torch that has no ``safe_globals`` (before 2.5): it takes safe_pickle's branch. Every
    torch.load call's keyword arguments are recorded."""
    monkeypatch.delattr(torch.serialization, "safe_globals")
    calls, real_load = [], torch.load
    recording = functools.wraps(real_load)(lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    monkeypatch.setattr(torch, "load", recording)  # wraps: the same signature, which the loader reads
    return calls


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy-format", "zip-format"])
@pytest.mark.parametrize("layout", ["raw", "state_dict", "timm_wrapped_module_prefix"])
def test_restricted_unpickler_loads_every_layout(tmp_path, small_model, torch_without_safe_globals, layout,
                                                 zip_format):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(LAYOUTS[layout](small_model.state_dict()), path, _use_new_zipfile_serialization=zip_format)
    loaded = checkpoint.load_state_dict(path)
    assert loaded.keys() == small_model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in small_model.state_dict().items())
    assert [kw.get("pickle_module") for kw in torch_without_safe_globals] == [checkpoint.safe_pickle]


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy-format", "zip-format"])
def test_restricted_unpickler_refuses_a_malicious_global_and_runs_nothing(tmp_path, small_model,
                                                                         torch_without_safe_globals, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_model.state_dict(), "x": WritesAFileWhenUnpickled(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UserError, match=r"evil\.pth: the checkpoint's pickle calls io\.open, .*--allow-pickle"):
        checkpoint.load_state_dict(path)
    assert not marker.exists()
    assert checkpoint.load_state_dict(path, allow_pickle=True).keys() == small_model.state_dict().keys()
    assert marker.exists()


def test_restricted_unpickler_names_any_other_global(tmp_path, small_model, torch_without_safe_globals):
    path = tmp_path / "frac.pth.tar"
    torch.save({"state_dict": small_model.state_dict(), "ratio": fractions.Fraction(1, 3)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match=r"pickle calls fractions\.Fraction, which the safe loader refuses"):
        checkpoint.load_state_dict(path)


def test_full_unpickling_asks_for_it_only_where_torch_has_the_argument(monkeypatch):
    assert checkpoint._full_unpickling() == {"weights_only": False}
    monkeypatch.setattr(torch, "load", lambda f, map_location=None, pickle_module=None, **pickle_load_args: None)
    assert checkpoint._full_unpickling() == {}

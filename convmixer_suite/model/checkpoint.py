"""Loading ConvMixer checkpoints of every layout they are published in, safely.

Layouts handled: a raw state dict, or one wrapped in ``state_dict`` / ``model`` / ``state_dict_ema`` (timm's
training checkpoints, which also carry an ``argparse.Namespace`` under ``args``); ``module.`` (DataParallel)
and ``_orig_mod.`` (torch.compile) prefixes; locuslab's ``nn.Sequential`` keys or timm's ``stem.`` /
``blocks.N.`` / ``head.`` keys; ``.pth`` / ``.pth.tar`` (torch.save) and ``.safetensors`` files.

Pickled checkpoints are read with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers (plus ``argparse.Namespace``, allowed explicitly); a torch without it (before 2.5 here, the guide's
1.5 among them) reads them through ``safe_pickle``'s restricted unpickler, which admits the same. Unpickling arbitrary objects runs code from the
file, so it happens only when the caller passes ``allow_pickle=True`` (the scripts' ``--allow-pickle``).
"""
import argparse
import inspect
import re
from pathlib import Path

import torch

from convmixer_suite.model import safe_pickle
from convmixer_suite.model import net as convmixer_net
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.libraries import import_library

# Wrapper keys, in order of preference: the trained weights before their EMA copy (timm's validate.py
# evaluates ``state_dict`` unless asked for the EMA).
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
SHOWN_KEYS = 4  # how many offending keys an error message lists


def load_state_dict(path, allow_pickle=False) -> dict:
    """Read a checkpoint file and return its weights as a state dict with locuslab's keys."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise UserError(f"{path}: is not a file")
    try:
        obj = _read_any(path, allow_pickle)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    state_dict = _tensors_of(_unwrap(obj, path), path)
    return to_locuslab_keys(_strip_prefixes(state_dict))


def spec_from_state_dict(state_dict) -> convmixer_net.ArchSpec:
    """The architecture a locuslab-keyed state dict was trained with, read from its tensor shapes.

    A released variant when dim, depth, kernel and patch all match one (which also gives the activation,
    which weights cannot reveal: 768/32 was released with ReLU); otherwise a custom GELU spec named like
    ``convmixer_32_2_ks5_p14``.
    """
    spec = _infer_spec(state_dict)
    if spec is None:
        keys = ", ".join(list(state_dict)[:SHOWN_KEYS])
        raise UserError(f"the checkpoint's tensors are not a ConvMixer's (no '0.weight' stem conv and "
                        f"'N.0.fn.0.weight' blocks; its first keys: {keys})")
    return spec


def load_model(path, arch=None, allow_pickle=False):
    """Build the model a checkpoint holds and load its weights strictly: ``(model in eval mode, ArchSpec)``.

    ``arch`` (a name in ``convmixer_net.ARCHS``) forces the architecture; by default it is inferred from
    the tensor shapes, falling back to ``DEFAULT_ARCH`` when the tensors are not a ConvMixer's (the error
    then lists the keys that do not fit).
    """
    state_dict = load_state_dict(path, allow_pickle)
    spec = _chosen_spec(state_dict, arch)
    model = _build_for_loading(spec, _n_classes(state_dict, spec))
    _check_fits(model, state_dict, spec, path)
    assign = {"assign": True} if _LOADS_BY_ASSIGNMENT else {}
    model.load_state_dict(_as_model_dtypes(model, state_dict), strict=True, **assign)
    return model.eval(), spec


# ---- reading files ----------------------------------------------------------------------------------

ZIP_MAGIC = b"PK\x03\x04"   # torch.save's default (zip) format
PICKLE_PROTO = b"\x80"        # torch.save's legacy format starts with a pickle protocol opcode
KNOWN_NON_CHECKPOINTS = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
                         b"\x08": "an ONNX model or other protobuf", b"%PDF": "a PDF document"}


def _read_any(path: Path, allow_pickle: bool):
    """Dispatch on the file's first bytes, so a file that is no checkpoint gets a plain explanation
    rather than an unpickler's opcode error."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise UserError(f"{path}: the file is empty, not a checkpoint")
    if path.suffix == ".safetensors" or _is_safetensors_header(head, path):
        return _read_safetensors(path)
    if head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        return _read_pickled(path, allow_pickle)
    raise UserError(f"{path}: not a checkpoint (it looks like {_looks_like(head)}; expected a torch.save "
                    f".pth/.pth.tar or a .safetensors file)")


def _is_safetensors_header(head: bytes, path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length and then a JSON header."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _looks_like(head: bytes) -> str:
    for magic, kind in KNOWN_NON_CHECKPOINTS.items():
        if head.startswith(magic):
            return kind
    text = head.decode("utf-8", errors="replace")
    return "a text file" if all(c.isprintable() or c.isspace() for c in text) else "some other binary file"


def _read_safetensors(path: Path) -> dict:
    import_library("safetensors", f"{path}: reading a .safetensors checkpoint", "pip install safetensors")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({_first_sentence(exc)})") from exc


def _read_pickled(path: Path, allow_pickle: bool):
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", **_full_unpickling())
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        # torch before 2.5 (the guide's 1.5 has no weights_only at all): our own restricted unpickler
        return torch.load(path, map_location="cpu", pickle_module=safe_pickle)
    except Exception as exc:  # torch.load raises many types (OSError too) for damaged files; name the cause
        raise UserError(_pickle_error_message(path, exc)) from exc


def _full_unpickling() -> dict:
    """torch.load's arguments for unrestricted unpickling: ``weights_only=False`` where the argument exists
    (its default became True in torch 2.6), nothing on the releases that always unpickle fully."""
    return {"weights_only": False} if "weights_only" in inspect.signature(torch.load).parameters else {}


def _pickle_error_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (f"{path}: the checkpoint's pickle calls {unsafe.group(1)}, which the safe loader refuses "
                f"(it admits tensors and plain containers only); if you trust the file, rerun with "
                f"--allow-pickle (this executes code from the file)")
    return f"{path}: the checkpoint is truncated or corrupt ({_first_sentence(exc)})"


def _first_sentence(exc: Exception) -> str:
    """The gist of a library's error: its first sentence, without the advice that follows."""
    first = " ".join(str(exc).split()).split(". ")[0].rstrip(".")
    return first[:160] or type(exc).__name__


# ---- normalising the layout ------------------------------------------------------------------------

def _unwrap(obj, path: Path):
    if isinstance(obj, torch.nn.Module):  # a whole pickled model, only reachable with allow_pickle
        return obj.state_dict()
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a checkpoint (it holds a {type(obj).__name__}, not a dict of tensors)")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _tensors_of(obj: dict, path: Path) -> dict:
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:SHOWN_KEYS])) or "none"
        raise UserError(f"{path}: the checkpoint holds no tensors (its keys: {keys})")
    return tensors


def _strip_prefixes(state_dict: dict) -> dict:
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def to_locuslab_keys(state_dict: dict) -> dict:
    """Rename timm's keys (``stem.0.``, ``stem.2.``, ``blocks.i.``, ``head.``) to the nn.Sequential indices.

    The head's index is ``3 + depth + 2`` (after the blocks come the pooling and flatten layers), so the
    depth is counted from the blocks first. Locuslab-keyed dicts pass through unchanged.
    """
    if not any(k.startswith(("stem.", "blocks.", "head.")) for k in state_dict):
        return state_dict
    depth = len({m.group(1) for m in map(_TIMM_BLOCK.match, state_dict) if m})
    renamed = {}
    for key, value in state_dict.items():
        renamed[_locuslab_key(key, depth)] = value
    return renamed


def _locuslab_key(key: str, depth: int) -> str:
    m = _TIMM_BLOCK.match(key)
    if m:
        return f"{3 + int(m.group(1))}.{key[m.end():]}"
    for timm_prefix, index in (("stem.0.", 0), ("stem.2.", 2), ("head.", 3 + depth + 2)):
        if key.startswith(timm_prefix):
            return f"{index}.{key[len(timm_prefix):]}"
    return key


# ---- the architecture -------------------------------------------------------------------------------

_BLOCK_DW = re.compile(r"^(\d+)\.0\.fn\.0\.weight$")


def _infer_spec(state_dict):
    stem = state_dict.get("0.weight")
    blocks = sorted(int(m.group(1)) for m in map(_BLOCK_DW.match, state_dict) if m)
    if stem is None or stem.dim() != 4 or not blocks or blocks != list(range(3, 3 + len(blocks))):
        return None
    dim, depth, patch = stem.shape[0], len(blocks), stem.shape[-1]
    kernel = state_dict["3.0.fn.0.weight"].shape[-1]
    for spec in convmixer_net.ARCHS.values():
        if (spec.dim, spec.depth, spec.kernel_size, spec.patch_size) == (dim, depth, kernel, patch):
            return spec
    return convmixer_net.ArchSpec(f"convmixer_{dim}_{depth}_ks{kernel}_p{patch}", dim, depth, kernel, patch)


def _chosen_spec(state_dict, arch):
    if arch is None:
        return _infer_spec(state_dict) or convmixer_net.ARCHS[convmixer_net.DEFAULT_ARCH]
    if arch not in convmixer_net.ARCHS:
        raise UserError(f"unknown --arch {arch!r} (choose from {', '.join(convmixer_net.ARCHS)})")
    return convmixer_net.ARCHS[arch]


def head_key(spec) -> str:
    """The Linear head's weight key for a spec's depth (``25.weight`` for depth 20)."""
    return f"{3 + spec.depth + 2}.weight"


def _n_classes(state_dict, spec) -> int:
    head = state_dict.get(head_key(spec))
    return head.shape[0] if head is not None and head.dim() == 2 else 1000


def _build_for_loading(spec, n_classes):
    """Build the model its checkpoint will fill: on the meta device where torch has one as a context (2.0
    and later), so no weights are allocated or initialised only to be replaced."""
    if _LOADS_BY_ASSIGNMENT:
        with torch.device("meta"):
            return spec.build(n_classes)
    return spec.build(n_classes)


# load_state_dict(assign=True), torch 2.1 and later, puts the checkpoint's tensors in place of meta ones.
_LOADS_BY_ASSIGNMENT = "assign" in inspect.signature(torch.nn.Module.load_state_dict).parameters


def _check_fits(model, state_dict, spec, path):
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    clashes = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or clashes):
        return
    parts = []
    if missing:
        parts.append("missing " + _listed(missing))
    if unexpected:
        parts.append("unexpected " + _listed(unexpected))
    if clashes:
        parts.append("shape " + ", ".join(f"{k}: checkpoint {list(state_dict[k].shape)} vs model "
                                          f"{list(expected[k].shape)}" for k in clashes[:SHOWN_KEYS]))
    raise UserError(f"{path}: the checkpoint does not fit {spec.name}: {'; '.join(parts)}")


def _listed(keys) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else "")


def _as_model_dtypes(model, state_dict) -> dict:
    """The state dict in the model's dtypes (a half-precision checkpoint becomes float32), with the
    BatchNorm ``num_batches_tracked`` counters that some exports drop filled in (eval never reads them)."""
    out = {}
    for key, target in model.state_dict().items():
        value = state_dict.get(key)
        out[key] = torch.zeros((), dtype=target.dtype) if value is None else value.to(target.dtype)
    return out


def describe(spec) -> str:
    """One line naming an architecture, for the scripts' output."""
    return (f"{spec.name} (dim {spec.dim}, depth {spec.depth}, kernel {spec.kernel_size}, "
            f"patch {spec.patch_size}, {spec.activation})")

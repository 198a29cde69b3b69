"""A restricted unpickler for torch checkpoints, for the torch releases that have no ``weights_only`` loading.

``torch.load`` unpickles: a global named in the file is imported and called, so a crafted checkpoint runs code.
torch 1.13 and later refuse such globals themselves (``weights_only=True``); torch 1.5, the guide's release,
cannot. There ``torch.load(pickle_module=safe_pickle)`` rebuilds what the released checkpoints hold (tensors and
their storages, ordered dicts, plain containers, and timm's ``argparse.Namespace`` of training arguments, which
is data only) and refuses every other global with :class:`UnsafeGlobal`, naming it.
"""
import pickle

# Globals a state-dict checkpoint needs, by module. torch's storage classes (``torch.FloatStorage``, ...) are
# admitted by name pattern below, since which ones exist depends on the release.
ALLOWED_GLOBALS = {
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice", "complex"},
    "torch._utils": {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"},
    "argparse": {"Namespace"},
    "torch": {"Size", "device"},
}


class UnsafeGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ``ALLOWED_GLOBALS``; ``name`` is ``module.attribute``."""

    def __init__(self, name: str):
        super().__init__(f"Unsupported global: GLOBAL {name}")
        self.name = name


def _is_storage_class(module: str, name: str) -> bool:
    return module in ("torch", "torch.storage") and name.endswith("Storage")


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name in ALLOWED_GLOBALS.get(module, ()) or _is_storage_class(module, name):
            return super().find_class(module, name)
        raise UnsafeGlobal(f"{module}.{name}")


# This module is itself the ``pickle_module`` handed to ``torch.load``, which asks it for ``Unpickler`` and
# ``load`` (the legacy format reads its magic number and storage keys with ``load``, the objects with
# ``Unpickler``).
Unpickler = RestrictedUnpickler
UnpicklingError = pickle.UnpicklingError


def load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()

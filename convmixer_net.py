"""ConvMixer as an exportable PyTorch model, under the file name the ModelZoo guide gives it.

The definition, its released variants (``ARCHS``) and the eval data config live in
``convmixer_suite.model.net``; this module re-exports all of it, so ``import convmixer_net`` and
``from convmixer_net import ConvMixer`` work as the guide's scripts expect.
"""
from convmixer_suite.model.net import *  # noqa: F401,F403 (the guide's module name for the model)
from convmixer_suite.model.net import __all__  # noqa: F401

"""The command-line programs: one module per command, holding its argument parser, ``main(argv=None)`` and its
printing, and ``run()``, the entry point of the installed command (pyproject.toml's [project.scripts]). The
scripts at the top of the repository and test/parse.py, where the guide and the README put them, are thin entries
into these modules.

The top layer: a command may import any folder of the package; nothing imports a command. The modules the guide's
scripts reach (pth2onnx, preprocess, infer, eval_acc, parse, classify; stream_eval and benchmark as far as saying
they need a newer Python) keep to Python 3.7 syntax and import nothing beyond the standard library, numpy, Pillow,
tqdm, torch and onnx at module level.
"""

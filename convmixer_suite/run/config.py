"""One description of a run, built once from a command line and passed on: ``RunConfig``.

What decides a run's numbers is resolved here, once: the model file (absolute path, size and sha256), the
runtime (``auto`` resolved), the precision, the device, the threads, the int8 calibration (folder and image
count), the data config of the eval transform and the batch size. The runner (``inference``), the streaming
evaluation (``stream``, both engines), classify, the LoadGen harness and the benchmark all load their backend
from a RunConfig, and every resume record compares the same ``identity()``: a rerun with another model, runtime,
precision, device, thread count, calibration, transform or batch size is refused instead of being mixed in.

The config is frozen; what only the run itself can tell (the batch size of a runner's .bin files) is filled in
with ``with_batch_size``, which returns a new one. A Ray replica loads the same config with its own placement
(``create_backend(device=..., threads=...)``): placement, not identity.
"""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from convmixer_suite.precision.fidelity import DEFAULT_MAX_LOGIT_ERROR, logit_error_limit
from convmixer_suite.runtimes.base import COMPILE_MODES, PRECISIONS
from convmixer_suite.runtimes.registry import create_backend, resolve_backend
from convmixer_suite.util.errors import UserError
from convmixer_suite.util.cli import positive_int
from convmixer_suite.precision.int8 import DEFAULT_NUM_CALIB
from convmixer_suite.util.files import file_sha256
from convmixer_suite.guide.transform import DATA_CONFIG, DataConfig


@dataclass(frozen=True)
class RunConfig:
    model: str                          # the model file as given (.onnx, .om, checkpoint): msame gets it so
    model_sha256: str
    model_bytes: int
    backend: str                        # resolved: never "auto"
    precision: str = "fp32"
    device: "str | None" = None         # None: the CPU
    threads: "int | None" = None        # None: the runtime's default
    calib: "str | None" = None          # absolute folder of preprocessed calibration images (int8)
    num_calib: int = DEFAULT_NUM_CALIB  # int8 calibrates on the first num_calib images of calib, at most
    compile_mode: "str | None" = None   # torch.compile's mode (torch backend)
    batch_size: "int | None" = None     # None: not known yet (the runner's .bin files tell it)
    data_config: DataConfig = field(default=DATA_CONFIG)

    @classmethod
    def build(cls, model, *, backend="auto", precision="fp32", device=None, threads=None, calib=None,
              num_calib=DEFAULT_NUM_CALIB, compile_mode=None, batch_size=None,
              data_config: DataConfig = DATA_CONFIG) -> "RunConfig":
        """Resolve and check what a command line gave: the model must exist, ``auto`` becomes a runtime."""
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{model}: model file not found")
        if calib is not None and not Path(calib).is_dir():
            raise UserError(f"{calib}: calibration folder not found (--calib)")
        if num_calib < 1:
            raise UserError(f"--num-calib {num_calib}: must be at least 1")
        return cls(model=str(path), model_sha256=file_sha256(path), model_bytes=path.stat().st_size,
                   backend=resolve_backend(backend, path, precision), precision=precision, device=device,
                   threads=threads, calib=str(Path(calib).resolve()) if calib else None, num_calib=num_calib,
                   compile_mode=compile_mode, batch_size=batch_size, data_config=data_config)

    @classmethod
    def from_args(cls, args, batch_size=None) -> "RunConfig":
        """From the scripts' common options (--model, --backend, --precision, --device, --threads, --calib,
        --num-calib, --compile)."""
        return cls.build(args.model, backend=args.backend, precision=args.precision, device=args.device,
                         threads=args.threads, calib=args.calib, num_calib=args.num_calib,
                         compile_mode=args.compile_mode, batch_size=batch_size)

    def with_batch_size(self, batch_size: int) -> "RunConfig":
        return dataclasses.replace(self, batch_size=batch_size)

    def with_absolute_paths(self) -> "RunConfig":
        """For a process that runs in another folder (a Ray replica); the calibration folder is absolute already."""
        return dataclasses.replace(self, model=str(Path(self.model).resolve()))

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.data_config.input_size)

    def create_backend(self, **placement):
        """Load this run's backend; ``placement`` (``device``, ``threads``) is where a Ray replica runs it, and
        ``batch_sizes`` the sizes it will run where the config does not know its batch size yet."""
        runtime = {"device": self.device, "threads": self.threads,
                   "batch_sizes": (self.batch_size,) if self.batch_size else (), **placement}
        backend = create_backend(self.backend, self.model, precision=self.precision, calib_dir=self.calib,
                                 num_calib=self.num_calib, compile_mode=self.compile_mode,
                                 input_shape=self.sample_shape, **runtime)
        if self.batch_size is not None and backend.batch_size not in (None, self.batch_size):
            raise UserError(f"{self.model}: the model takes batches of {backend.batch_size}, "
                            f"not --batch-size {self.batch_size}")
        return backend

    def identity(self) -> dict:
        """What must match for a resumed run's results to belong to this run."""
        return {"model": {"name": Path(self.model).name, "size": self.model_bytes, "sha256": self.model_sha256},
                "backend": self.backend, "precision": self.precision, "device": self.device or "cpu",
                "threads": self.threads, **(self.int8_calibration() if self.precision == "int8" else {}),
                "compile_mode": self.compile_mode, "batch_size": self.batch_size,
                "data_config": self.data_config.to_dict()}

    def int8_calibration(self) -> dict:
        return {"calib": self.calib, "num_calib": self.num_calib}

    def stream_eval_args(self) -> list:
        """The options of convmixer_stream_eval.py that build this config again (what a run in a process of
        its own is given)."""
        optional = (("--device", self.device), ("--threads", self.threads), ("--calib", self.calib),
                    ("--compile", self.compile_mode))
        return ["--model", self.model, "--backend", self.backend, "--precision", self.precision,
                "--batch-size", str(self.batch_size),
                *(["--num-calib", str(self.num_calib)] if self.calib else []),
                *[str(part) for flag, value in optional if value is not None for part in (flag, value)]]

    def as_dict(self) -> dict:
        """Everything, for a summary."""
        return {**self.identity(), **self.int8_calibration(), "model_path": str(Path(self.model).resolve())}


def add_precision_options(parser, checked_on: str) -> None:
    """The commands' ``--precision``, ``--calib DIR``, ``--num-calib N`` and ``--max-logit-error`` (the fidelity
    gate, run on ``checked_on`` before anything else), which ``RunConfig.from_args`` reads."""
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--calib", default=None, help="folder of preprocessed calibration images for --precision int8")
    parser.add_argument("--num-calib", type=positive_int, default=DEFAULT_NUM_CALIB, metavar="N",
                        help="int8: calibrate on at most the first N images of --calib (default %(default)s); "
                             "its last images, up to 8, are always kept out for the fidelity check")
    parser.add_argument("--max-logit-error", type=logit_error_limit, default=DEFAULT_MAX_LOGIT_ERROR,
                        metavar="FRACTION",
                        help="fp16/bf16/int8: the most max |diff| / max |logit| against fp32 on held-out images (the "
                             f"last rows of --calib, else {checked_on}) (default %(default)s)")


def add_compile_option(parser) -> None:
    """The commands' ``--compile [MODE]`` (torch backend only), which ``RunConfig.from_args`` reads."""
    parser.add_argument("--compile", dest="compile_mode", nargs="?", const="reduce-overhead", default=None,
                        choices=COMPILE_MODES, metavar="MODE",
                        help="torch backend: run the model through torch.compile, MODE one of "
                             f"{', '.join(COMPILE_MODES)} (default when given: reduce-overhead, i.e. CUDA graphs "
                             "on a GPU); each new batch size compiles once")

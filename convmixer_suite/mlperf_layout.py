"""The files MLPerf Inference's own tools read, written the way they expect them.

- Folders (the submission checker's layout, ``tools/submission/``): LoadGen's logs of a performance run in
  ``results/<system>/<model>/<scenario>/performance/run_1/``, of an accuracy run in
  ``results/<system>/<model>/<scenario>/accuracy/``; the ``user.conf`` a run used in
  ``measurements/<system>/<model>/<scenario>/``.
- ``user.conf``: ``model.scenario.key = value`` lines, read by ``TestSettings.FromConfig`` over LoadGen's
  built-in ``mlperf.conf``.
- ``val_map.txt``: ``<image> <label>`` a line, line number = the QSL index, as ``tools/accuracy-imagenet.py``
  reads it (``--imagenet-val-file``).
- ``accuracy.txt``: that script's output line (``accuracy=76.456%, good=38228, total=50000``) and
  ``hash=<sha256 of mlperf_log_accuracy.json>``, as the checker wants it.
"""
import json
import re
from pathlib import Path

import numpy as np

from convmixer_suite.cli import UserError, write_text_atomic
from convmixer_suite.records import file_sha256

ACCURACY_LOG = "mlperf_log_accuracy.json"
VAL_MAP = "val_map.txt"
ACCURACY_TXT = "accuracy.txt"
USER_CONF = "user.conf"


def system_name(hardware: str, config: str) -> str:
    """A system folder name: the hardware's name and the configuration (runtime and precision), as MLPerf's
    system names carry both (``1xH100_TensorRT``); anything but letters, digits, ``.`` and ``-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{hardware}_{config}").strip("_")


def cpu_hardware_name(info: dict) -> str:
    """``AMD EPYC f26m2 2cpus``: the CPU's model name, family and model (convmixer_suite.cpu_info: a VM often
    hides the model number, and Zen 4 and Zen 5 differ by 2x) and its logical CPU count."""
    where = f" f{info['family']}m{info['model']}" if info.get("family") else ""
    return f"{info.get('model_name') or 'unknown CPU'}{where} {info.get('logical_cpus')}cpus"


def results_dir(out, system: str, model: str, scenario: str, accuracy: bool = False) -> Path:
    folder = Path(out) / "results" / system / model / scenario
    return folder / "accuracy" if accuracy else folder / "performance" / "run_1"


def measurements_dir(out, system: str, model: str, scenario: str) -> Path:
    return Path(out) / "measurements" / system / model / scenario


def user_conf_text(model: str, scenario: str, settings: dict) -> str:
    """``settings`` ({LoadGen key: value}, None values left out) as user.conf lines for ``model``."""
    lines = ["# written by test/benchmark.py; read over LoadGen's built-in mlperf.conf by TestSettings.FromConfig"]
    lines += [f"{model}.{scenario}.{key} = {value!r}" for key, value in settings.items() if value is not None]
    return "\n".join(lines) + "\n"


def write_val_map(folder, names, labels) -> Path:
    """val_map.txt: the QSL's images and labels in QSL order."""
    path = Path(folder) / VAL_MAP
    write_text_atomic(path, "".join(f"{name} {int(label)}\n" for name, label in zip(names, labels)))
    return path


def read_accuracy_log(folder) -> list:
    path = Path(folder) / ACCURACY_LOG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read LoadGen's accuracy log ({exc})") from None


def classes_by_sample(folder, num_samples: int) -> np.ndarray:
    """The class each sample was answered with (the float32 the SUT logged), by QSL index."""
    found = {}
    for entry in read_accuracy_log(folder):
        data = np.frombuffer(bytes.fromhex(entry["data"]), dtype=np.float32)
        found.setdefault(int(entry["qsl_idx"]), int(data[0]) if data.size else -1)
    missing = sorted(set(range(num_samples)) - set(found))
    if missing:
        raise UserError(f"{Path(folder) / ACCURACY_LOG}: no answer logged for samples {missing[:5]}")
    return np.array([found[i] for i in range(num_samples)])


def write_accuracy_txt(folder, labels) -> dict:
    """accuracy.txt of an accuracy run's folder, scored as accuracy-imagenet.py scores it: every sample once,
    a hit when the logged class equals its label. Returns good, total, the line and the log's sha256."""
    found = classes_by_sample(folder, len(labels))
    good, total = int((found == np.asarray(labels)).sum()), len(labels)
    line = f"accuracy={100.0 * good / total:.3f}%, good={good}, total={total}"
    digest = file_sha256(Path(folder) / ACCURACY_LOG)
    write_text_atomic(Path(folder) / ACCURACY_TXT, f"{line}\nhash={digest}\n")
    return {"good": good, "total": total, "accuracy_line": line, "accuracy_log_sha256": digest}

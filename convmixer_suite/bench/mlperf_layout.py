"""The files MLPerf Inference's own tools read, written the way they expect them.

- Folders (the layout of the submission checker's v6.1 rules, ``tools/submission/``, docs/formats.md): under a
  results root (``open/<submitter>/results``), LoadGen's logs of a performance run in
  ``<system>/<model>/<scenario>/performance/run_1/``, of an accuracy run in ``<system>/<model>/<scenario>/accuracy/``
  (those two logs, ``mlperf_log_accuracy.json`` and ``accuracy.txt``, nothing else); the ``user.conf`` the runs
  used beside them, in ``<system>/<model>/<scenario>/``.
- ``user.conf``: ``model.scenario.key = value`` lines, read by ``TestSettings.FromConfig`` over LoadGen's
  built-in ``mlperf.conf``.
- ``val_map.txt``: ``<image> <label>`` a line, line number = the QSL index, as ``tools/accuracy-imagenet.py``
  reads it (``--imagenet-val-file``); kept outside the submission with the full accuracy log (the checker's
  accuracy folder holds nothing else).
- ``accuracy.txt``: that script's output line (``accuracy=76.456%, good=38228, total=50000``) and
  ``hash=<sha256 of mlperf_log_accuracy.json>``, as the checker wants it.
- An accuracy log over the checker's size limit is cut as ``tools/submission/truncate_accuracy_log.py`` cuts it:
  its first and last 4096 bytes around a ``...`` line; the hash in accuracy.txt stays the full log's.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np

from convmixer_suite.util.errors import UserError
from convmixer_suite.util.files import atomic_path, write_bytes_atomic, write_text_atomic
from convmixer_suite.util.files import file_sha256

ACCURACY_LOG = "mlperf_log_accuracy.json"
VAL_MAP = "val_map.txt"
ACCURACY_TXT = "accuracy.txt"
USER_CONF = "user.conf"
MAX_ACCURACY_LOG_BYTES = 10 * 1024  # the checker's limit: a larger accuracy log is "not truncated"
TRUNCATED_KEPT_BYTES = 4096  # truncate_accuracy_log.py keeps this much from the start and from the end
TRUNCATION_MARK = b"\n\n...\n\n"


def system_name(hardware: str, config: str) -> str:
    """A system folder name: the hardware's name and the configuration (runtime and precision), as MLPerf's
    system names carry both (``1xH100_TensorRT``); anything but letters, digits, ``.`` and ``-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{hardware}_{config}").strip("_")


def cpu_hardware_name(info: dict) -> str:
    """``AMD EPYC f26m2 2cpus``: the CPU's model name, family and model (convmixer_suite.precision.cpu_info: a VM often
    hides the model number, and generations under one name differ in speed) and its logical CPU count."""
    where = f" f{info['family']}m{info['model']}" if info.get("family") else ""
    return f"{info.get('model_name') or 'unknown CPU'}{where} {info.get('logical_cpus')}cpus"


def scenario_dir(root, system: str, model: str, scenario: str) -> Path:
    """``<root>/<system>/<model>/<scenario>``: a scenario's logs, user.conf, measurements.json and README.md."""
    return Path(root) / system / model / scenario


def results_dir(root, system: str, model: str, scenario: str, accuracy: bool = False) -> Path:
    folder = scenario_dir(root, system, model, scenario)
    return folder / "accuracy" if accuracy else folder / "performance" / "run_1"


def user_conf_text(model: str, scenario: str, settings: dict) -> str:
    """``settings`` ({LoadGen key: value}, None values left out) as user.conf lines for ``model``."""
    lines = ["# written by convmixer-benchmark; read over LoadGen's built-in mlperf.conf by TestSettings.FromConfig"]
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
        raise UserError(f"{path}: cannot read LoadGen's accuracy log ({exc})") from exc


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


def truncate_accuracy_log(folder) -> bool:
    """Cut ``folder``'s accuracy log to its first and last 4096 bytes when it is over the checker's limit (call
    it after accuracy.txt holds the full log's hash). Returns whether it was cut."""
    path = Path(folder) / ACCURACY_LOG
    data = path.read_bytes()
    if len(data) <= MAX_ACCURACY_LOG_BYTES:
        return False
    write_bytes_atomic(path, data[:TRUNCATED_KEPT_BYTES] + TRUNCATION_MARK + data[-TRUNCATED_KEPT_BYTES:])
    return True


def keep_full_accuracy_log(folder, keep_dir) -> Path:
    """A copy of ``folder``'s accuracy log in ``keep_dir`` (outside the submission), before it is cut."""
    keep_dir = Path(keep_dir)
    keep_dir.mkdir(parents=True, exist_ok=True)
    target = keep_dir / ACCURACY_LOG
    with atomic_path(target) as tmp:
        shutil.copyfile(Path(folder) / ACCURACY_LOG, tmp)
    return target

"""What a finished evaluation left behind, gathered from its accuracy JSON (``result/result_bs1.json``).

A streaming run (convmixer_stream_eval.py) leaves ``<stem>_stream_summary.json`` and the per-image records
``<stem>_records/`` beside the JSON. A file-based run (test/eval_acc_perf.sh's steps) leaves the runner's outputs
in ``outputs_bs<N>_om/`` beside the JSON, our summary and latency record in ``outputs_bs<N>_om.runs/``, the inputs'
manifest (which names the image folder, whose parent holds ``val_label.txt``) and msame's log
``msame_bs<N>.txt`` in the folder above. What is missing is said in ``Run.notes``, never guessed.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from convmixer_suite.model import net as convmixer_net
from convmixer_suite.guide import msame_log
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.samples import RANDOM_WEIGHTS_PREFIX
from convmixer_suite.guide.manifest import batch_span
from convmixer_suite.run.records import read_parts, records_folder
from convmixer_suite.guide.run_folder import summary_path_of

STREAM_SUMMARY_SUFFIX = "_stream_summary.json"
BATCH_SIZE_IN_NAME = re.compile(r"_bs(\d+)$")
TOPK = 5
# The published top-1 of each released checkpoint, in percent ("Patches Are All You Need?", locuslab's README).
PAPER_TOP1_PERCENT = {spec.checkpoint: spec.paper_top1_percent for spec in convmixer_net.ARCHS.values()
                      if spec.paper_top1_percent is not None}


@dataclass
class ImageResult:
    name: str  # relative to the image folder
    label: int
    classes: list  # top-k, best first
    logits: list  # of those classes
    probabilities: "list | None" = None  # softmax of those classes; None where only the top-k logits were kept


@dataclass
class Run:
    result_json: Path
    kind: str  # "stream" or "files"
    accuracy: dict  # read_accuracy_json's
    summary: dict = field(default_factory=dict)
    images: list = field(default_factory=list)  # ImageResult, in run order
    skipped: list = field(default_factory=list)  # [(image, error)]
    latencies_ms: list = field(default_factory=list)  # per batch, in run order
    images_per_batch: list = field(default_factory=list)
    log_path: "Path | None" = None
    log_averages_ms: dict = field(default_factory=dict)
    image_root: "Path | None" = None
    weights: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def batch_size(self):
        return self.summary.get("batch_size")

    def image_names(self) -> set:
        return {r.name for r in self.images} | {name for name, _ in self.skipped}


def batch_size_of(result_json: Path):
    """N of the guide's ``result_bs<N>.json``, or None."""
    match = BATCH_SIZE_IN_NAME.search(result_json.stem)
    return int(match.group(1)) if match else None


def load_run(result_json, labels=None, outputs=None, log=None) -> Run:
    """Everything the report shows of the run that wrote ``result_json``; ``labels`` (val_label.txt),
    ``outputs`` (the runner's --output folder) and ``log`` (msame's log) override where they are looked for."""
    from convmixer_suite.guide.scoring import read_accuracy_json
    result_json = Path(result_json).resolve()
    run = Run(result_json, "files", read_accuracy_json(result_json))
    stream_summary = result_json.with_name(result_json.stem + STREAM_SUMMARY_SUFFIX)
    if stream_summary.is_file():
        run.kind = "stream"
        run.summary = read_json(stream_summary)
        load_stream_records(run)
    else:
        load_file_outputs(run, labels, outputs)
    load_log(run, log)
    run.weights = weights_origin(run.summary.get("model"))
    check_top1(run)
    return run


def check_top1(run: Run) -> None:
    """A note when the per-image results found do not give the JSON's top-1 (other labels or outputs than the
    run's): the detail then describes something else than the verdict."""
    if run.images:
        top1 = sum(r.classes[0] == r.label for r in run.images) / len(run.images)
        if round(top1 * 100, 2) != round(run.accuracy["topk"][0] * 100, 2):
            run.notes.append(f"the per-image results found give top-1 {top1 * 100:.2f}%, not the JSON's "
                             f"{run.accuracy['topk'][0] * 100:.2f}%: they are not this run's (other labels or "
                             f"outputs?)")


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object")
    return value


def load_stream_records(run: Run) -> None:
    folder = records_folder(run.result_json)
    run.image_root = Path(run.summary["input"]) if run.summary.get("input") else None
    if not folder.is_dir():
        run.notes.append(f"no per-image records ({folder} is missing): no accuracy detail")
        return
    records = read_parts(folder)
    run.skipped = [(r["image"], r["error"]) for r in records if "error" in r]
    run.images = [ImageResult(r["image"], r["label"], r["classes"], r["scores"], r.get("probabilities"))
                  for r in records if "error" not in r]
    by_batch = {}
    for r in records:
        by_batch.setdefault(r["batch"], [r["latency_ms"], 0])[1] += 1
    run.latencies_ms = [by_batch[k][0] for k in sorted(by_batch)]
    run.images_per_batch = [by_batch[k][1] for k in sorted(by_batch)]
    if any(r.probabilities is None for r in run.images):
        run.notes.append("these streaming records (of an older run) keep each image's top-5 logits only: no "
                         "probabilities")


def load_file_outputs(run: Run, labels, outputs) -> None:
    """The runner's logits, mapped to images by the manifest and scored against val_label.txt."""
    from convmixer_suite.guide import scoring
    from convmixer_suite.guide.manifest import read_manifest
    bs = batch_size_of(run.result_json)
    outputs = Path(outputs) if outputs else (run.result_json.with_name(f"outputs_bs{bs}_om") if bs else None)
    if outputs is None or not outputs.is_dir():
        run.notes.append(f"the runner's outputs were not found ({outputs or 'no outputs_bs<N>_om name'}; "
                         f"--outputs DIR): no accuracy detail or run settings")
        return
    results = scoring.find_results_folder(outputs)
    summary_path = summary_path_of(results)
    run.summary = read_json(summary_path) if summary_path.is_file() else {}
    if not run.summary:
        run.notes.append(f"no run summary ({summary_path}): run settings not recorded (the real msame keeps none)")
    manifest_path = scoring.find_manifest(outputs, results)
    manifest = read_manifest(manifest_path) if manifest_path else None
    batch_size = manifest.batch_size if manifest else (run.summary.get("batch_size") or bs or 1)
    run.summary.setdefault("batch_size", batch_size)
    if manifest is not None:
        run.image_root = Path(manifest.image_path) if manifest.image_path else None
        run.skipped = [(e["name"], e["error"]) for e in manifest.skipped]
    labels = Path(labels) if labels else (run.image_root.parent / "val_label.txt" if run.image_root else None)
    if labels is None or not labels.is_file():
        run.notes.append(f"no val_label.txt ({labels or 'no image folder recorded'}; --labels FILE): "
                         f"no accuracy detail")
        return
    by_batch = scoring.scored_rows(manifest, batch_size, scoring.read_labels(labels), labels)
    files = scoring.output_files(results)
    scoring.check_batches_present(files, by_batch, results, manifest.num_batches if manifest else max(by_batch) + 1)
    for k in sorted(by_batch):
        rows, batch_labels, names = by_batch[k]
        logits = scoring.read_output_file(files[k], batch_size)[rows]
        classes, top_logits = scoring.top_k(logits, TOPK, source=files[k])
        probabilities = scoring.top_k_probabilities(logits, classes)
        run.images += [ImageResult(n, int(l), c.tolist(), s.tolist(), p.tolist())
                       for n, l, c, s, p in zip(names, batch_labels, classes, top_logits, probabilities)]
    num_images = len(manifest.images) if manifest else len(run.images)
    run.images_per_batch = [len(range(num_images)[batch_span(k, batch_size)])
                            for k in range(-(-num_images // batch_size))]
    tsv = summary_path.with_name(summary_path.name.replace("_summary.json", "_latency_ms.tsv"))
    if tsv.is_file():
        times = dict(line.split("\t") for line in tsv.read_text().splitlines()[1:] if "\t" in line)
        run.latencies_ms = [float(times[name]) for name in sorted(times)]


def load_log(run: Run, log) -> None:
    """msame's log: its closing averages, and its per-batch times where no record of ours had them."""
    bs = batch_size_of(run.result_json)
    path = Path(log) if log else (run.result_json.parent.parent / f"msame_bs{bs}.txt" if bs else None)
    if path is None or not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    run.log_path = path
    for key, pattern in (("mean", msame_log.AVERAGE_RE), ("without_first", msame_log.WITHOUT_FIRST_RE)):
        values = pattern.findall(text)
        if values:
            run.log_averages_ms[key] = float(values[-1])
    if not run.latencies_ms:
        run.latencies_ms = msame_log.parse_latencies_ms(text)
        if len(run.images_per_batch) != len(run.latencies_ms):
            run.images_per_batch = [run.batch_size or 1] * len(run.latencies_ms)


def weights_origin(model) -> dict:
    """Where the model's weights come from, as far as its files tell: the checkpoint itself, or the one an
    ONNX export names in its metadata (convmixer_pth2onnx.py writes it). ``kind`` is "random" (a checkpoint
    named RANDOM_WEIGHTS_…, as test/demo.sh writes when the real one is missing), "released" (a released
    checkpoint's name: ``paper_top1_percent`` is its published figure) or "unknown"."""
    from convmixer_suite.model import export
    if not model:
        return {"kind": "unknown", "source": None}
    path = Path(model)
    source, sha256 = path.name, None
    if path.suffix == ".onnx" and path.is_file():
        metadata = export.read_metadata(path)
        source, sha256 = metadata.get(export.SOURCE_NAME_KEY), metadata.get(export.SOURCE_SHA256_KEY)
    elif path.suffix == ".om":
        source = None
    if source and source.startswith(RANDOM_WEIGHTS_PREFIX):
        return {"kind": "random", "source": source, "sha256": sha256}
    if source in PAPER_TOP1_PERCENT:
        return {"kind": "released", "source": source, "sha256": sha256, "paper_top1_percent": PAPER_TOP1_PERCENT[source]}
    return {"kind": "unknown", "source": source, "sha256": sha256}


def check_same_images(a: Run, b: Run) -> None:
    """Two runs can be compared only on the same image set: a UserError in one line otherwise."""
    names_a, names_b = a.image_names(), b.image_names()
    if not names_a or not names_b:
        missing = a if not names_a else b
        raise UserError(f"{missing.result_json}: no per-image results found, nothing to compare "
                        f"({'; '.join(missing.notes) or 'no images'})")
    if names_a != names_b:
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        example = f"{only_a[0]} only in the first" if only_a else f"{only_b[0]} only in the second"
        raise UserError(f"{a.result_json} and {b.result_json} are runs of different image sets "
                        f"({len(names_a)} and {len(names_b)} images; {example})")
    labels_b = {r.name: r.label for r in b.images}
    differing = [r.name for r in a.images if labels_b.get(r.name, r.label) != r.label]
    if differing:
        raise UserError(f"{a.result_json} and {b.result_json} label the same images differently "
                        f"(first: {differing[0]})")


def top1_logit_differences(a: Run, b: Run) -> list:
    """For every image both runs scored: run B's highest logit minus run A's."""
    b_by_name = {r.name: r for r in b.images}
    return [b_by_name[r.name].logits[0] - r.logits[0] for r in a.images if r.name in b_by_name]

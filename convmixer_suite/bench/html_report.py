"""One self-contained HTML file per evaluation, per comparison of two evaluations, and per benchmark.

Jinja2 renders the templates in ``templates/`` with autoescape on, so every file name and label is escaped;
pictures are embedded (plots as base64 PNG from matplotlib, thumbnails as base64 JPEG), styles are inline and
there is no script: the file opens offline, from a mail or a CI artifact, without asking any host for anything.
"""
import base64
import datetime
import io
from pathlib import Path

from convmixer_suite.bench import figures, plots
from convmixer_suite.bench.run_data import check_same_images, load_run, top1_logit_differences
from convmixer_suite.util.libraries import import_library
from convmixer_suite.util.files import write_text_atomic

WORST_CLASSES = 20
CONFUSIONS = 20
CHANGED_IMAGES_SHOWN = 300
THUMBNAIL_PX = 96
THUMBNAIL_QUALITY = 70


def environment():
    jinja2 = import_library("jinja2", "the HTML report", 'pip install "Jinja2==3.1.6"')
    env = jinja2.Environment(loader=jinja2.PackageLoader("convmixer_suite.bench", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["pct"] = lambda fraction, digits=2: "n/a" if fraction is None else f"{fraction * 100:.{digits}f}%"
    env.filters["num"] = lambda value, fmt=".2f": "n/a" if value is None else format(value, fmt)
    env.globals["class_name"] = class_name
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(
        made=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), plots_hint=plots.INSTALL_HINT,
        plots_available=plots.available(), **context)


def class_name(index) -> str:
    """``golden retriever (207)``; the bare index for a class beyond ImageNet's 1000."""
    from convmixer_suite.guide.imagenet_classes import imagenet_classes
    classes = imagenet_classes()
    return f"{classes[index].name} ({index})" if 0 <= index < len(classes) else str(index)


# ---- one run -------------------------------------------------------------------------------------------------

def verdict(run) -> dict:
    """Top-1/top-5 in percent, and the reference figure with the difference in points where it applies."""
    topk = run.accuracy["topk"]
    top1 = topk[0] * 100
    out = {"top1": top1, "top5": topk[4] * 100 if len(topk) >= 5 else None, "images": run.accuracy["num_images"],
           "weights": run.weights["kind"], "source": run.weights.get("source")}
    if run.weights["kind"] == "released":
        out["reference"] = run.weights["paper_top1_percent"]
        out["difference_points"] = top1 - out["reference"]
    return out


def run_context(run) -> dict:
    """What the evaluation template shows of one run."""
    labels = [r.label for r in run.images]
    predictions = [r.classes[0] for r in run.images]
    percentiles = figures.latency_percentiles_ms(run.latencies_ms)
    points = figures.throughput_over_time(run.latencies_ms, run.images_per_batch)
    return {
        "run": run, "verdict": verdict(run), "title": f"{run.summary.get('precision') or 'precision not recorded'} "
                                                       f"on {(run.summary.get('backend') or {}).get('name') or '?'}", "settings": settings(run), "fidelity": run.summary.get("fidelity"),
        "speed": speed(run, percentiles),
        "latency_plot": plots.latency_histogram(run.latencies_ms, percentiles),
        "throughput_plot": plots.throughput_over_time(points),
        "worst_classes": figures.per_class_accuracy(labels, predictions)[:WORST_CLASSES],
        "classes_seen": len(set(labels)),
        "confusions": figures.confusions(labels, predictions, CONFUSIONS),
    }


def settings(run) -> list:
    """(what, value) rows of the run's settings, "not recorded" where the run kept nothing."""
    s, config = run.summary, run.summary.get("run_config") or {}
    backend = s.get("backend") or {}
    host = s.get("host") or {}
    model = config.get("model") or {}
    rows = [("kind", "streaming evaluation" if run.kind == "stream" else "files (preprocess, runner, scorer)"),
            ("model", s.get("model")), ("model sha256", model.get("sha256")),
            ("weights", weights_line(run.weights)),
            ("backend", f"{backend.get('name')} {backend.get('version') or ''}".strip() if backend else None),
            ("precision", s.get("precision")), ("device", s.get("device") or ("cpu" if s else None)),
            ("CPU", host.get("cpu")), *([("GPU", host["gpu"])] if host.get("gpu") else []), ("threads", s.get("threads") if s.get("threads") else
                                        ("the runtime's default" if s else None)),
            ("batch size", s.get("batch_size")), ("images", run.accuracy["num_images"]),
            ("image folder", str(run.image_root) if run.image_root else None),
            ("libraries", ", ".join(f"{k} {v}" for k, v in sorted((host.get("libraries") or {}).items())) or None),
            ("Python, OS", ", ".join(filter(None, (host.get("python"), host.get("os")))) or None),
            ("finished", host.get("finished")), ("accuracy JSON", str(run.result_json)),
            ("msame log", str(run.log_path) if run.log_path else None)]
    return [(what, "not recorded" if value in (None, "") else value) for what, value in rows]


def speed(run, percentiles: dict) -> list:
    """(what, value) rows: msame's averages, throughput, latency percentiles, a streaming run's stages."""
    averages, stages = run.log_averages_ms, run.summary.get("stages") if run.kind == "stream" else None
    throughput = run.summary.get("throughput_images_per_s")
    rows = [("msame's log: average time", ms(averages.get("mean"))),
            ("msame's log: average without the first", ms(averages.get("without_first"))),
            ("throughput (model execution)", f"{throughput:.2f} images/s" if throughput else None),
            *((f"latency {name}", f"{ms(value)} per batch") for name, value in percentiles.items()),
            ("batches timed", len(run.latencies_ms))]
    if stages:
        rows += [("bound by (streaming)", f"{stages.get('bound_stage') or 'nothing timed'} (the stage with the "
                                          f"fewest images/s)"),
                 ("stages, images/s", f"decode+transform {stages['decode_transform_images_per_s']:.1f}, inference "
                                      f"{stages['inference_images_per_s']:.2f}, scoring "
                                      f"{stages['scoring_images_per_s']:.0f}, end to end "
                                      f"{stages['end_to_end_images_per_s']:.2f}")]
    return [(what, "not recorded" if value is None else value) for what, value in rows]


def ms(value):
    return None if value is None else f"{value:.2f} ms"


def side_by_side(*tables) -> list:
    """(what, [value of each table]) for tables of (what, value) rows, in the order the rows first appear."""
    found = {}
    for i, table in enumerate(tables):
        for what, value in table:
            found.setdefault(what, ["—"] * len(tables))[i] = value
    return list(found.items())


def weights_line(weights: dict) -> str:
    kind, source = weights["kind"], weights.get("source")
    if kind == "random":
        return f"RANDOM weights ({source}): accuracy means nothing"
    if kind == "released":
        return f"released checkpoint {source}" + (f", sha256 {weights['sha256']}" if weights.get("sha256") else "")
    return f"from {source}, not a released checkpoint's name" if source else "origin not recorded in the model file"


def evaluation_html(result_json, **where) -> str:
    return render("evaluation.html.j2", **run_context(load_run(result_json, **where)))


# ---- two runs ------------------------------------------------------------------------------------------------

def thumbnail(path: Path):
    """A small JPEG of the picture as a data: address, or None when it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def changed_images(a, b) -> list:
    """The images whose top-1 differs, in run A's order: image, label, both top-1 with logit and probability."""
    b_by_name = {r.name: r for r in b.images}
    changed = []
    for ra in a.images:
        rb = b_by_name.get(ra.name)
        if rb is not None and ra.classes[0] != rb.classes[0]:
            changed.append({"name": ra.name, "label": ra.label, "a": top1_of(ra), "b": top1_of(rb)})
    return changed


def top1_of(result) -> dict:
    return {"class": result.classes[0], "logit": result.logits[0],
            "probability": result.probabilities[0] if result.probabilities else None}


def picture_path(name, *runs):
    for run in runs:
        if run.image_root is not None and (run.image_root / name).is_file():
            return run.image_root / name
    return None


def comparison_html(result_a, result_b, labels=None, **where_a) -> str:
    """Both runs in columns; refuses (UserError) runs of different image sets. ``where_a`` (outputs, log) is
    the first run's; the labels are both's."""
    a, b = load_run(result_a, labels=labels, **where_a), load_run(result_b, labels=labels)
    check_same_images(a, b)
    common, same = figures.top1_agreement({r.name: r.classes[0] for r in a.images},
                                           {r.name: r.classes[0] for r in b.images})
    changed = changed_images(a, b)
    shown = changed[:CHANGED_IMAGES_SHOWN]
    for item in shown:
        path = picture_path(item["name"], a, b)
        item["thumbnail"] = thumbnail(path) if path else None
    runs = [run_context(a), run_context(b)]
    return render("compare.html.j2", runs=runs, common=common, same=same,
                  settings=side_by_side(*(c["settings"] for c in runs)),
                  speed=side_by_side(*(c["speed"] for c in runs)),
                  changed=shown, changed_total=len(changed),
                  logit_plot=plots.logit_difference_histogram(top1_logit_differences(a, b)))


# ---- the benchmark -------------------------------------------------------------------------------------------

def benchmark_html(report: dict) -> str:
    """The benchmark's report (benchmark.json's content) as HTML."""
    from convmixer_suite.bench.markdown_report import display_name
    names = {r["config"]: display_name(r["config"], report) for r in report["results"]}
    profile = report.get("profile") or {}
    nodes = profile.get("nodes") or []
    return render("benchmark.html.j2", report=report, names=names, profile=profile, nodes=nodes[:15],
                  profile_total_ms=sum(n["ms"] for n in nodes),
                  throughput_plot=plots.benchmark_throughput(report), latency_plot=plots.benchmark_latency(report))


def write_html(path, html: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, html)
    return path


def write_evaluation_report(result_json, out=None, compare=None, **where) -> Path:
    """``report_bs<N>.html`` beside the accuracy JSON (or ``out``): one run, or with ``compare`` (another run's
    accuracy JSON) both side by side. ``where``: labels, outputs, log (run_data.load_run)."""
    result_json = Path(result_json)
    if out is None:
        stem = result_json.stem.replace("result", "report", 1) if result_json.stem.startswith("result") \
            else f"{result_json.stem}_report"
        out = result_json.with_name(f"{stem}{'_compare' if compare else ''}.html")
    html = comparison_html(result_json, compare, **where) if compare else evaluation_html(result_json, **where)
    return write_html(out, html)


def write_benchmark_report(report: dict, out_folder) -> Path:
    """``report.html`` in the benchmark's output folder."""
    return write_html(Path(out_folder) / "report.html", benchmark_html(report))

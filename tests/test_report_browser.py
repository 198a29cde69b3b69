"""The HTML reports of real runs, opened in a real browser (Debian's chromium driven by Playwright) with the
network off: what a person sees is the run's figures, the changed images with their pictures, and nothing
reaches for another host.

Two runs of the same twelve photos: the first with test/eval_acc_perf.sh (files, batch 2) on a seeded small
ConvMixer exported from a RANDOM_WEIGHTS_ checkpoint, the second streaming (convmixer_stream_eval.py) on the same
model with one classifier bias lowered, so that some top-1s change. Screenshots go to $REPORT_SCREENSHOTS_DIR when
set, else to pytest's tmp path."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_script, seeded_model, write_photo
from convmixer_suite.model import export
from convmixer_suite.run.records import read_records
from convmixer_suite.guide.transform import EvalTransform, load_rgb

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
NUM_PHOTOS = 12
BS = 2


def browser_or_skip():
    """Playwright's sync API and Debian's chromium; a skip outside CI, a failure in CI (.ci/run installs both)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package (pip install -r requirements-test.txt)"
    else:
        if Path(CHROMIUM).is_file():
            return sync_playwright
        missing = f"{CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser test needs {missing}")
    pytest.skip(f"needs {missing}")


def export_named(model, folder: Path, checkpoint_name: str) -> Path:
    """The model saved as ``checkpoint_name`` and exported as convmixer_pth2onnx.py exports it (the ONNX metadata
    names the checkpoint)."""
    checkpoint = folder / checkpoint_name
    torch.save(model.state_dict(), checkpoint)
    target = folder / f"{checkpoint_name.split('.')[0]}.onnx"
    export.export_verified(model, target, metadata=export.source_metadata(checkpoint))
    return target


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    photos = [write_photo(root / "imagenet" / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", size=(260 + 9 * i, 220), seed=i)
              for i in range(1, NUM_PHOTOS + 1)]
    first = seeded_model(seed=4)
    second = seeded_model(seed=4)
    with torch.no_grad():
        logits = first(torch.from_numpy(np.stack([EvalTransform()(load_rgb(p)) for p in photos])))
        predicted = logits.argmax(1).tolist()
        # the second model's bias of each image's top class lowered by the median top-1 margin: the images of
        # smaller margins change their top-1, the others keep it
        top2 = logits.topk(2, dim=1).values
        for c in set(predicted):
            second[-1].bias[c] -= float((top2[:, 0] - top2[:, 1]).median())
    # half the labels are the first model's predictions, so top-1 is neither 0 nor 100 %
    labels = [c if i % 2 else (c + 1) % 1000 for i, c in enumerate(predicted)]
    (root / "imagenet" / "val_label.txt").write_text("".join(f"{p.name} {c}\n" for p, c in zip(photos, labels)))
    models = root / "models"
    models.mkdir()
    first_onnx = export_named(first, models, "RANDOM_WEIGHTS_small.pth.tar")
    second_onnx = export_named(second, models, "RANDOM_WEIGHTS_small_nudged.pth.tar")

    files_run = root / "files_run"
    files_run.mkdir()
    files = run_script("test/eval_acc_perf.sh", f"--batch_size={BS}", f"--datasets_path={root / 'imagenet'}",
                       f"--model={first_onnx}", "--backend=onnxruntime", cwd=files_run)
    assert files.returncode == 0, files.stderr
    stream_run = root / "stream_run"
    stream = run_script("convmixer_stream_eval.py", "--model", second_onnx, "--image-path", root / "imagenet" / "val",
                        "--annotation-file-path", root / "imagenet" / "val_label.txt", "--result-json-path",
                        stream_run / "result", "--json-file-name", f"result_bs{BS}.json", "--batch-size", BS,
                        "--workers", 1)
    assert stream.returncode == 0, stream.stderr
    return {"root": root, "files": files, "files_run": files_run, "stream": stream, "stream_run": stream_run}


def first_run_top1(files_run: Path) -> dict:
    """The file-based run's top-1 of each image, read from its output files and manifest (not the report's
    code): image j of the run is row j % bs of output file j // bs."""
    manifest = json.loads((files_run / f"prep_image_bs{BS}" / ".manifest.json").read_text())
    (folder,) = (files_run / "result" / f"outputs_bs{BS}_om").iterdir()
    rows = np.concatenate([np.loadtxt(f, ndmin=2) for f in sorted(folder.iterdir())])
    return {name: int(rows[j].argmax()) for j, name in enumerate(manifest["images"])}


def accuracy_percent(result_json: Path) -> str:
    entries = {e["key"]: e["value"] for e in json.loads(result_json.read_text())["value"]}
    return entries["Top1 accuracy"]


def screenshot_folder(tmp_path) -> Path:
    folder = Path(os.environ.get("REPORT_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class OfflinePage:
    """A page of headless chromium where every request but file: ones is aborted and recorded, with the console's
    errors and the page's exceptions recorded."""

    def __init__(self, playwright):
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        self.context = self.browser.new_context(offline=True, viewport={"width": 1200, "height": 1000})
        self.requests, self.errors = [], []
        self.context.route("**/*", self.route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def route(self, route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def open(self, path: Path):
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")
        return self.page

    def close(self):
        self.browser.close()


@pytest.fixture
def offline_page():
    sync_playwright = browser_or_skip()
    with sync_playwright() as playwright:
        page = OfflinePage(playwright)
        yield page
        page.close()
    assert page.requests == [], "the report asked another host"
    assert page.errors == [], "the browser's console has errors"


def test_eval_acc_perf_and_the_streaming_run_print_their_reports(two_runs):
    files_report = two_runs["files_run"] / "result" / f"report_bs{BS}.html"
    assert two_runs["files"].stdout.rstrip().endswith(f"wrote {files_report}")
    stream_report = two_runs["stream_run"] / "result" / f"report_bs{BS}.html"
    assert f"[INFO] report: {stream_report}\n" in two_runs["stream"].stdout
    for report in (files_report, stream_report):
        html = report.read_text()
        assert "<script" not in html and not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_the_evaluation_report_shows_the_runs_top1(two_runs, offline_page, tmp_path):
    files_run = two_runs["files_run"]
    page = offline_page.open(files_run / "result" / f"report_bs{BS}.html")
    shown = page.get_attribute("[data-top1]", "data-top1")
    assert float(shown) == pytest.approx(float(accuracy_percent(files_run / "result" / f"result_bs{BS}.json")
                                               .rstrip("%")), abs=0.005)
    assert "random weights: means nothing" in page.inner_text(".verdict")
    assert page.locator("#worst-classes tr").count() > 1 and page.locator("#confusions tr").count() > 1
    plots = page.locator("img.plot")
    assert plots.count() == 2 and all(w > 0 for w in plots.evaluate_all("imgs => imgs.map(i => i.naturalWidth)"))
    page.screenshot(path=str(screenshot_folder(tmp_path) / "report-evaluation.png"), full_page=True)


def test_the_comparison_lists_the_changed_images_with_their_pictures(two_runs, offline_page, tmp_path):
    first_json = two_runs["files_run"] / "result" / f"result_bs{BS}.json"
    second_json = two_runs["stream_run"] / "result" / f"result_bs{BS}.json"
    out = tmp_path / "compare.html"
    result = subprocess.run([sys.executable, "-m", "convmixer_suite.commands.report", str(first_json),
                             "--compare", str(second_json), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first = first_run_top1(two_runs["files_run"])
    second = {r["image"]: r["classes"][0] for r in read_records(second_json)}
    changed = sorted(name for name in first if first[name] != second[name])
    assert 0 < len(changed) < NUM_PHOTOS

    page = offline_page.open(out)
    assert page.inner_text("#changed-count") == str(len(changed))
    same = NUM_PHOTOS - len(changed)
    assert page.inner_text("#agreement") == f"{same / NUM_PHOTOS * 100:.2f}%"
    rows = page.locator("#changed tr:has(td)")
    assert sorted(rows.locator("td.path").all_inner_texts()) == changed
    widths = page.locator("#changed img.thumb").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(widths) == len(changed) and all(w > 0 for w in widths)
    assert "p 0." in rows.first.inner_text()  # both runs keep probabilities
    page.screenshot(path=str(screenshot_folder(tmp_path) / "report-compare.png"), full_page=True)


def test_runs_of_different_image_sets_are_refused_in_one_line(two_runs, tmp_path):
    """A copy of the streaming run with one image's record taken out is a run of another image set."""
    copy = tmp_path / "result"
    shutil.copytree(two_runs["stream_run"] / "result", copy)
    part = next((copy / f"result_bs{BS}_records").glob("part-*.jsonl"))
    part.write_text("".join(part.read_text().splitlines(keepends=True)[1:]))
    result = subprocess.run([sys.executable, "-m", "convmixer_suite.commands.report",
                             str(two_runs["files_run"] / "result" / f"result_bs{BS}.json"),
                             "--compare", str(copy / f"result_bs{BS}.json")], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "are runs of different image sets (12 and 11 images; ILSVRC2012_val_00000001.JPEG only in the first)" \
        in result.stderr


def test_the_benchmark_report_opens_offline(offline_page, tmp_path):
    source = next(REPO.glob("docs/results/*/benchmark.json"))
    out = tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "convmixer_suite.commands.report", str(source), "--out", str(out)],
                   check=True, capture_output=True)
    page = offline_page.open(out)
    report = json.loads(source.read_text())
    assert page.locator("#results tr:has(td)").count() == len(report["results"])
    page.screenshot(path=str(screenshot_folder(tmp_path) / "report-benchmark.png"))


def test_the_changed_images_are_capped_and_their_thumbnails_small(two_runs, monkeypatch):
    """Past the cap, the first N changed images with the count; each thumbnail a JPEG of at most 96 pixels."""
    import base64
    import io

    from PIL import Image

    from convmixer_suite.bench import html_report
    monkeypatch.setattr(html_report, "CHANGED_IMAGES_SHOWN", 2)
    html = html_report.comparison_html(two_runs["files_run"] / "result" / f"result_bs{BS}.json",
                                       two_runs["stream_run"] / "result" / f"result_bs{BS}.json")
    total = int(re.search(r'<strong id="changed-count">(\d+)</strong>', html).group(1))
    assert total > 2 and f"The first 2 of {total}." in html
    thumbnails = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([^"]+)"', html)
    assert len(thumbnails) == 2
    for encoded in thumbnails:
        data = base64.b64decode(encoded)
        assert len(data) < 8000 and max(Image.open(io.BytesIO(data)).size) == html_report.THUMBNAIL_PX

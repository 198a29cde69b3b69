"""The HTML reports' figures against values worked out by hand, the verdict's reference figure, escaping, the
refusal of runs of different image sets, and the benchmark's report. (tests/test_report_browser.py opens the
reports of real runs in Chromium.)"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, seeded_model
from convmixer_suite.model import export
from convmixer_suite.bench import figures, html_report, plots
from convmixer_suite.bench.run_data import ImageResult, Run, check_same_images, weights_origin
from convmixer_suite.util.errors import UserError
from convmixer_suite.guide.scoring import top_k, top_k_probabilities


def test_latency_percentiles_interpolate_linearly():
    # sorted 10..50: p50 is the middle one; p90 sits at index 3.6 (40 + 0.6 * 10), p99 at 3.96 (40 + 0.96 * 10)
    assert figures.latency_percentiles_ms([50, 10, 40, 20, 30]) == pytest.approx({"p50": 30, "p90": 46, "p99": 49.6})
    assert figures.latency_percentiles_ms([]) == {}


def test_per_class_accuracy_worst_first():
    labels = [1, 1, 1, 2, 2, 3, 4, 4]
    predicted = [1, 0, 1, 2, 2, 5, 0, 4]
    # class 3: 0 of 1; class 4: 1 of 2 (0.5); class 1: 2 of 3; class 2: 2 of 2
    assert figures.per_class_accuracy(labels, predicted) == [
        (3, 1, 0, 0.0), (4, 2, 1, 0.5), (1, 3, 2, pytest.approx(2 / 3)), (2, 2, 2, 1.0)]


def test_per_class_accuracy_ties_put_more_images_then_the_lower_class_first():
    assert [row[0] for row in figures.per_class_accuracy([7, 5, 9, 9], [0, 0, 0, 0])] == [9, 5, 7]


def test_confusions_count_true_to_predicted_pairs():
    labels = [1, 1, 1, 2, 2, 3, 3, 4]
    predicted = [0, 0, 4, 2, 0, 0, 0, 4]
    assert figures.confusions(labels, predicted) == [(1, 0, 2), (3, 0, 2), (1, 4, 1), (2, 0, 1)]
    assert figures.confusions(labels, predicted, limit=2) == [(1, 0, 2), (3, 0, 2)]
    assert figures.confusions([1, 2], [1, 2]) == []


def test_throughput_over_time_windows_of_batches():
    # two windows: batches 100+100 ms with 8 images (40/s, ending at 0.2 s), 200+200 ms with 6 (15/s, at 0.6 s)
    points = figures.throughput_over_time([100, 100, 200, 200], [4, 4, 4, 2], windows=2)
    assert points == [pytest.approx((0.2, 40.0)), pytest.approx((0.6, 15.0))]
    assert figures.throughput_over_time([], []) == []


def test_top1_agreement_over_the_images_both_runs_scored():
    assert figures.top1_agreement({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 3}) == (2, 1)


def test_top_k_probabilities_are_the_softmax_over_the_whole_row():
    logits = np.array([[0.0, math.log(2.0), 0.0]])  # exp: 1, 2, 1 -> 0.25, 0.5, 0.25
    classes, _ = top_k(logits, 2)
    assert classes.tolist() == [[1, 0]]
    assert top_k_probabilities(logits, classes) == pytest.approx(np.array([[0.5, 0.25]]))
    # 1001 classes: the background class (0) is dropped first; then class 1 (of 1000) holds 3 / (999 + 3)
    with_background = np.zeros((1, 1001))
    with_background[0, 0], with_background[0, 2] = 9.0, math.log(3.0)
    classes, _ = top_k(with_background, 1)
    assert classes.tolist() == [[1]]
    assert top_k_probabilities(with_background, classes) == pytest.approx(np.array([[3 / 1002]]))


# ---- the verdict: which reference figure applies --------------------------------------------------------------

def exported(tmp_path, source_name):
    """The small model exported with the metadata naming its checkpoint, as convmixer_pth2onnx.py does."""
    model = seeded_model()
    source = tmp_path / source_name
    torch.save(model.state_dict(), source)
    target = tmp_path / f"{source_name}.onnx"
    export.export_verified(model, target, metadata=export.source_metadata(source))
    return target


def test_the_export_names_its_checkpoint_and_the_report_reads_it(tmp_path):
    random_onnx = exported(tmp_path, "RANDOM_WEIGHTS_small.pth.tar")
    origin = weights_origin(str(random_onnx))
    assert origin["kind"] == "random" and origin["source"] == "RANDOM_WEIGHTS_small.pth.tar"
    from convmixer_suite.util.files import file_sha256
    assert origin["sha256"] == file_sha256(tmp_path / "RANDOM_WEIGHTS_small.pth.tar")
    released = weights_origin(str(exported(tmp_path, "convmixer_1536_20_ks9_p7.pth.tar")))
    assert released["kind"] == "released" and released["paper_top1_percent"] == 81.37
    assert weights_origin(str(tmp_path / "RANDOM_WEIGHTS_x.pth.tar"))["kind"] == "random"  # a checkpoint itself
    assert weights_origin(str(tmp_path / "model.om"))["kind"] == "unknown"


def a_run(tmp_path, top1, weights, images=(), skipped=()):
    return Run(tmp_path / "result_bs1.json", "stream", {"num_images": 8, "num_classes": 1000,
                                                          "topk": [top1, 0.9, 0.9, 0.9, 0.95]},
               summary={"batch_size": 1}, images=list(images), skipped=list(skipped), weights=weights)


def test_the_verdict_gives_the_difference_in_points_only_for_released_weights(tmp_path):
    released = {"kind": "released", "source": "convmixer_1536_20_ks9_p7.pth.tar", "paper_top1_percent": 81.37}
    v = html_report.verdict(a_run(tmp_path, 0.8, released))
    assert v["top1"] == pytest.approx(80.0) and v["top5"] == pytest.approx(95.0)
    assert v["difference_points"] == pytest.approx(-1.37)
    html = html_report.render("evaluation.html.j2", **html_report.run_context(a_run(tmp_path, 0.8, released)))
    assert 'data-top1="80.00"' in html and "reference 81.37% (paper, convmixer_1536_20_ks9_p7.pth.tar)" in html
    assert "-1.37 points" in html
    random = html_report.render("evaluation.html.j2", **html_report.run_context(
        a_run(tmp_path, 0.8, {"kind": "random", "source": "RANDOM_WEIGHTS_convmixer_1536_20.pth.tar"})))
    assert "random weights: means nothing" in random and "points" not in random


def test_file_names_and_errors_are_escaped(tmp_path):
    evil = '<script>alert(1)</script>"&.JPEG'
    run = a_run(tmp_path, 0.5, {"kind": "unknown", "source": None},
                images=[ImageResult("ok.JPEG", 1, [2, 3, 4, 5, 6], [1.0] * 5)], skipped=[(evil, "<b>cut</b>")])
    html = html_report.render("evaluation.html.j2", **html_report.run_context(run))
    assert "<script" not in html and "<b>cut" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;.JPEG" in html and "&lt;b&gt;cut&lt;/b&gt;" in html


def test_without_matplotlib_the_report_says_how_to_get_the_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "pyplot", lambda: None)
    run = a_run(tmp_path, 0.5, {"kind": "unknown", "source": None})
    run.latencies_ms, run.images_per_batch = [5.0, 6.0], [1, 1]
    html = html_report.render("evaluation.html.j2", **html_report.run_context(run))
    assert "The plots need matplotlib: <code>pip install &#34;.[bench]&#34;</code>" in html
    assert "data:image/png" not in html


def test_runs_of_different_image_sets_are_refused(tmp_path):
    unknown = {"kind": "unknown", "source": None}
    a = a_run(tmp_path, 0.5, unknown, images=[ImageResult(n, 1, [1] * 5, [1.0] * 5) for n in ("x.JPEG", "y.JPEG")])
    b = a_run(tmp_path / "b", 0.5, unknown, images=[ImageResult("x.JPEG", 1, [1] * 5, [1.0] * 5)])
    with pytest.raises(UserError, match=r"are runs of different image sets \(2 and 1 images; y.JPEG only in the first\)"):
        check_same_images(a, b)
    b.images.append(ImageResult("y.JPEG", 7, [1] * 5, [1.0] * 5))
    with pytest.raises(UserError, match="label the same images differently"):
        check_same_images(a, b)
    b.images[-1].label = 1
    check_same_images(a, b)


# ---- the benchmark's report ----------------------------------------------------------------------------------

def test_the_benchmark_report_shows_every_configuration_and_the_machine(tmp_path):
    """From a benchmark.json the benchmark wrote (kept in docs/results)."""
    source = next(REPO.glob("docs/results/*/benchmark.json"))
    out = tmp_path / "report.html"
    result = subprocess.run([sys.executable, "-m", "convmixer_suite.commands.report", str(source),
                             "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out}\n"
    report, html = json.loads(source.read_text()), out.read_text()
    rows = html.split('<table id="results">')[1].split("</table>")[0]
    assert rows.count("<tr><td>") == len(report["results"])
    for r in report["results"]:
        assert f'<td class="n">{r["throughput_images_per_s"]:.2f}</td>' in rows
    assert report["machine"]["cpu"] in html and "<script" not in html
    assert ('<table id="loadgen">' in html) == bool(report["loadgen"])
    assert ('<table id="profile">' in html) == bool((report.get("profile") or {}).get("nodes"))


def test_a_missing_file_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "convmixer_suite.commands.report",
                             str(tmp_path / "nothing.json")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().endswith(f"error: {tmp_path / 'nothing.json'}: no such file")
    assert len(result.stderr.strip().splitlines()) == 1


def test_per_image_results_that_do_not_give_the_jsons_top1_are_noted(tmp_path):
    from convmixer_suite.bench.run_data import check_top1
    run = a_run(tmp_path, 0.5, {"kind": "unknown", "source": None},
                images=[ImageResult("a.JPEG", 1, [1] * 5, [1.0] * 5), ImageResult("b.JPEG", 2, [1] * 5, [1.0] * 5)])
    check_top1(run)
    assert run.notes == []
    run.accuracy["topk"][0] = 1.0
    check_top1(run)
    assert run.notes == ["the per-image results found give top-1 50.00%, not the JSON's 100.00%: they are not "
                         "this run's (other labels or outputs?)"]

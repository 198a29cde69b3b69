"""The figures a report shows, computed from a run's per-image predictions and per-batch latencies: pure
functions of their inputs, so each can be checked against values worked out by hand."""
from collections import Counter

import numpy as np

PERCENTILES = (50, 90, 99)


def latency_percentiles_ms(latencies_ms) -> dict:
    """{"p50", "p90", "p99"} of per-batch latencies (numpy's linear interpolation, as msame_log's summary);
    {} for no latencies."""
    t = np.asarray(list(latencies_ms), dtype=np.float64)
    if not t.size:
        return {}
    return {f"p{q}": float(np.percentile(t, q)) for q in PERCENTILES}


def per_class_accuracy(labels, predictions) -> list:
    """[(class, images, correct top-1, accuracy)] of every class that has images, worst first (ties: more
    images first, then the lower class)."""
    images, correct = Counter(), Counter()
    for label, predicted in zip(labels, predictions):
        images[label] += 1
        correct[label] += int(label == predicted)
    rows = [(c, images[c], correct[c], correct[c] / images[c]) for c in images]
    return sorted(rows, key=lambda r: (r[3], -r[1], r[0]))


def confusions(labels, predictions, limit: int = 20) -> list:
    """[(true class, predicted class, count)] of the wrong top-1 predictions, most frequent first (ties: the
    lower true class, then the lower predicted class), at most ``limit``."""
    counts = Counter((t, p) for t, p in zip(labels, predictions) if t != p)
    return sorted(((t, p, n) for (t, p), n in counts.items()), key=lambda r: (-r[2], r[0], r[1]))[:limit]


def throughput_over_time(latencies_ms, images_per_batch, windows: int = 40) -> list:
    """[(model time at the window's end in s, images/s over the window)]: the batches in run order, cut into at
    most ``windows`` runs of consecutive batches; time is model execution time, summed."""
    t = np.asarray(list(latencies_ms), dtype=np.float64)
    n = np.asarray(list(images_per_batch), dtype=np.float64)
    if not t.size or t.size != n.size:
        return []
    points, elapsed_s = [], 0.0
    for chunk in np.array_split(np.arange(t.size), min(windows, t.size)):
        window_s = t[chunk].sum() / 1000.0
        elapsed_s += window_s
        points.append((elapsed_s, float(n[chunk].sum() / window_s) if window_s > 0 else 0.0))
    return points


def top1_agreement(a_top1: dict, b_top1: dict) -> tuple:
    """(images both runs scored, of them the images whose top-1 is the same); the runs map image -> class."""
    common = [name for name in a_top1 if name in b_top1]
    return len(common), sum(1 for name in common if a_top1[name] == b_top1[name])

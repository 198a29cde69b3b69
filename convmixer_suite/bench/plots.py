"""The reports' plots, drawn by matplotlib (the bench extra, imported only here, when a report is made) and
embedded as base64 PNG ``data:`` addresses, so a report needs no other file and no request."""
import base64
import io

from convmixer_suite.plot import pyplot, throughput_figure

INSTALL_HINT = 'pip install ".[bench]"'


def available() -> bool:
    return pyplot() is not None


def data_url(fig) -> str:
    """The figure as a ``data:image/png;base64,…`` address; closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def new_axes(size=(7, 3)):
    plt = pyplot()
    if plt is None:
        return None, None
    fig, ax = plt.subplots(figsize=size)
    ax.grid(True, alpha=0.3)
    return fig, ax


def latency_histogram(latencies_ms, percentiles: dict):
    """Per-batch latencies as a histogram, with p50/p90/p99 marked; None without matplotlib or latencies."""
    fig, ax = new_axes()
    if fig is None or not len(latencies_ms):
        return None
    ax.hist(latencies_ms, bins=min(50, max(5, len(latencies_ms) // 4)), color="#4c72b0")
    for (name, value), style in zip(percentiles.items(), ("-", "--", ":")):
        ax.axvline(value, color="#c44e52", linestyle=style, label=f"{name} {value:.2f} ms")
    ax.set_xlabel("model execution time per batch (ms)")
    ax.set_ylabel("batches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return data_url(fig)


def throughput_over_time(points):
    """images/s per window of batches against the model time elapsed; None without matplotlib or points."""
    fig, ax = new_axes()
    if fig is None or not points:
        return None
    ax.plot([t for t, _ in points], [r for _, r in points], marker="o", markersize=3)
    ax.set_xlabel("model execution time elapsed (s)")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    return data_url(fig)


def logit_difference_histogram(differences):
    """Histogram of run B's top-1 logit minus run A's, per image; None without matplotlib or images."""
    fig, ax = new_axes()
    if fig is None or not len(differences):
        return None
    ax.hist(differences, bins=min(60, max(5, len(differences) // 4)), color="#55a868")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("top-1 logit, second run minus first run")
    ax.set_ylabel("images")
    fig.tight_layout()
    return data_url(fig)


def benchmark_throughput(report):
    fig = throughput_figure(report)
    return data_url(fig) if fig is not None else None


def benchmark_latency(report):
    """p50 latency against batch size, one line per configuration."""
    fig, ax = new_axes(size=(9, 4.5))
    if fig is None:
        return None
    for name in dict.fromkeys(r["config"] for r in report["results"]):
        own = [r for r in report["results"] if r["config"] == name]
        ax.plot([r["batch_size"] for r in own], [r["latency_ms"]["p50"] for r in own], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return data_url(fig)

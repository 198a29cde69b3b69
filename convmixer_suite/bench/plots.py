"""The reports' plots, drawn by matplotlib (the bench extra, imported only here, when a report is made) and
embedded as base64 PNG ``data:`` addresses, so a report needs no other file and no request."""
import base64
import io

from convmixer_suite.bench.throughput_plot import pyplot, throughput_figure

INSTALL_HINT = 'pip install ".[bench]"'


def available() -> bool:
    return pyplot() is not None


def data_url(fig) -> str:
    """The figure as a ``data:image/png;base64,…`` address; closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot(data, draw, xlabel: str, ylabel: str, size=(7, 3)):
    """``draw(ax, data)`` on new axes, labelled, as a data: address; None without matplotlib or without data."""
    plt = pyplot()
    if plt is None or not len(data):
        return None
    fig, ax = plt.subplots(figsize=size)
    ax.grid(True, alpha=0.3)
    draw(ax, data)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return data_url(fig)


def bins(values, most: int) -> int:
    return min(most, max(5, len(values) // 4))


def latency_histogram(latencies_ms, percentiles: dict):
    """Per-batch latencies as a histogram, with p50/p90/p99 marked."""
    def draw(ax, times):
        ax.hist(times, bins=bins(times, 50), color="#4c72b0")
        for (name, value), style in zip(percentiles.items(), ("-", "--", ":")):
            ax.axvline(value, color="#c44e52", linestyle=style, label=f"{name} {value:.2f} ms")
        ax.legend(fontsize=8)
    return plot(latencies_ms, draw, "model execution time per batch (ms)", "batches")


def throughput_over_time(points):
    """images/s per window of batches against the model time elapsed."""
    def draw(ax, xy):
        ax.plot([t for t, _ in xy], [r for _, r in xy], marker="o", markersize=3)
        ax.set_ylim(bottom=0)
    return plot(points, draw, "model execution time elapsed (s)", "images/s")


def logit_difference_histogram(differences):
    """Histogram of the second run's top-1 logit minus the first run's, per image."""
    def draw(ax, values):
        ax.hist(values, bins=bins(values, 60), color="#55a868")
        ax.axvline(0, color="black", linewidth=0.8)
    return plot(differences, draw, "top-1 logit, second run minus first run", "images")


def benchmark_throughput(report):
    fig = throughput_figure(report)
    return data_url(fig) if fig is not None else None


def benchmark_latency(report):
    """p50 latency against batch size, one line per configuration (both axes logarithmic)."""
    def draw(ax, results):
        for name in dict.fromkeys(r["config"] for r in results):
            own = [r for r in results if r["config"] == name]
            ax.plot([r["batch_size"] for r in own], [r["latency_ms"]["p50"] for r in own], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return plot(report["results"], draw, "batch size", "p50 latency per batch (ms)", size=(9, 4.5))

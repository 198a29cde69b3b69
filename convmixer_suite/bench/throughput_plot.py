"""The benchmark's plot: throughput against batch size, one line per configuration, its ceiling dashed
(matplotlib, optional: requirements-bench.txt)."""
from pathlib import Path

from convmixer_suite.util.files import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display), or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def throughput_figure(report):
    """Throughput against batch size, one line per configuration (a matplotlib figure); None without
    matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in dict.fromkeys(r["config"] for r in report["results"]):
        own = [r for r in report["results"] if r["config"] == name]
        line, = ax.plot([r["batch_size"] for r in own], [r["throughput_images_per_s"] for r in own], marker="o",
                        label=name)
        ceiling = [(r["batch_size"], r["batch_size"] * 1000.0 / r["ceiling_ms"]) for r in own if r["ceiling_ms"]]
        if ceiling:
            ax.plot(*zip(*ceiling), linestyle="--", marker="x", color=line.get_color(), alpha=0.7,
                    label=f"{name} ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title(f"{report['arch']} on {report['machine']['cpu']}".replace("; ", "\n", 1),
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside: covers no line
    fig.tight_layout()
    return fig


def write_plot(report, path: Path):
    """Throughput against batch size, one line per configuration, as a PNG; None without matplotlib."""
    fig = throughput_figure(report)
    if fig is None:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
    return path

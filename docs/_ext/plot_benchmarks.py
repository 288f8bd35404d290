"""Render the benchmark figures committed as JSON under ``docs/benchmarks/`` into PNG bar charts.

Each JSON file holds ``title``, ``command`` (what produced the figures), ``metric_names`` and
``results`` (method -> metric -> value; ``<metric>_sd`` adds an error bar; ``null`` = not
defined). The docs build calls :func:`render`; by hand::

    python docs/_ext/plot_benchmarks.py docs/benchmarks docs/_generated/benchmarks
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _plot(spec: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(spec["results"])
    metrics = spec["metric_names"]
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(3.2 * len(metrics) + 1.5, 0.45 * len(methods) + 1.4),
        squeeze=False,
        sharey=True,
    )
    y = np.arange(len(methods))
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = [spec["results"][m].get(metric) for m in methods]
        sds = [spec["results"][m].get(f"{metric}_sd") or 0.0 for m in methods]
        heights = [np.nan if v is None else v for v in vals]
        ax.barh(y, heights, xerr=sds if any(sds) else None, color="#4c72b0", alpha=0.85, capsize=3)
        for yi, v in zip(y, vals, strict=True):
            ax.text(
                0 if v is None else v,
                yi,
                " n/a" if v is None else f" {v:g}",
                va="center",
                fontsize=8,
            )
        ax.set_title(metric, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlim(0, max([h for h in heights if h == h] + [1e-9]) * 1.3)
    axes[0][0].set_yticks(y, methods, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(spec["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def render(src: str | Path, dst: str | Path) -> list[Path]:
    """One PNG per ``src/*.json`` in ``dst`` (re-rendered only when the JSON is newer)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(src.glob("*.json")):
        out = dst / f"{path.stem}.png"
        if not out.exists() or out.stat().st_mtime < path.stat().st_mtime:
            _plot(json.loads(path.read_text()), out)
        written.append(out)
    return written


if __name__ == "__main__":
    for p in render(*sys.argv[1:3]):
        print(p)

"""Pictures of a run and of a sweep, as PNG files (for W&B and for people without it).

Per run: key-neuron counts and R(A)/R(Lj) similarity over layers x modules. Per sweep: the
headline accuracy against a swept number (alpha, ratio) per language and method, with 95%
intervals, and a bar chart of methods per language. matplotlib with the Agg backend: no display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from maet.method.types import layer_module  # noqa: E402


def tensor_grid(values: dict[str, float]) -> tuple[list[int], list[str], list[list[float | None]]]:
    """(layers, modules, grid[layer][module]) of per-tensor values; None where a tensor has none."""
    cells = {lm: v for n, v in values.items() if (lm := layer_module(n)) is not None}
    layers = sorted({layer for layer, _ in cells})
    modules = list(dict.fromkeys(module for _, module in sorted(cells, key=lambda c: c[0])))
    return layers, modules, [[cells.get((layer, m)) for m in modules] for layer in layers]


def heatmap(values: dict[str, float], path: Path, title: str, cbar: str, marked: set[str] = frozenset(),
            diverging: bool = False, fmt: str = "{:.0f}") -> Path:
    """A layers x modules heatmap of per-tensor values, each cell annotated; `marked` tensors framed."""
    layers, modules, grid = tensor_grid(values)
    data = [[float("nan") if v is None else v for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(1.1 * len(modules) + 2.5, 0.35 * len(layers) + 1.8))
    if diverging:
        bound = max((abs(v) for row in grid for v in row if v is not None), default=1.0) or 1.0
        image = ax.imshow(data, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
    else:
        image = ax.imshow(data, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=cbar)
    ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title)
    marked_cells = {layer_module(n) for n in marked}
    for i, row in enumerate(grid if len(layers) * len(modules) <= 400 else []):  # numbers while readable
        for j, value in enumerate(row):
            if value is not None:
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7, color="black")
    for i, layer in enumerate(layers):
        for j, module in enumerate(modules):
            if (layer, module) in marked_cells:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
    return _save(fig, path)


def key_neuron_plot(rows_per_tensor: dict[str, int], path: Path) -> Path:
    """Key-neuron (selected row) counts per layer x module."""
    return heatmap({n: float(k) for n, k in rows_per_tensor.items()}, path,
                   "key neurons (selected rows) per layer x module", "rows")


def similarity_plot(similarity: dict[str, float], kept: list[str], path: Path) -> Path:
    """cos(R(A), R(Lj)) per layer x module; transferred tensors framed."""
    return heatmap(similarity, path, "similarity of R(A) and R(Lj) (framed: transferred)", "cosine",
                   marked=set(kept), diverging=True, fmt="{:.2f}")


def curve(rows: list[dict], x: str, path: Path, y: str = "accuracy") -> Path:
    """`y` (with its 95% interval `low`..`high`) against the number `x`, one line per (lang, method, setting)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for (lang, method, setting), points in _series(rows).items():
        points = sorted(points, key=lambda r: r[x])
        xs = [r[x] for r in points]
        ys = [100 * r[y] for r in points]
        err = [[100 * (r[y] - r["low"]) for r in points], [100 * (r["high"] - r[y]) for r in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=" ".join(filter(None, (lang, method, setting))))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)")
    ax.set_title(f"{y} vs {x} (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def method_bars(rows: list[dict], path: Path) -> Path:
    """Accuracy of each method per language (bars with 95% intervals)."""
    langs = sorted({r["lang"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / max(1, len(langs))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods) + 2), 4))
    for i, lang in enumerate(langs):
        cells = {r["method"]: r for r in rows if r["lang"] == lang}
        xs = [j + i * width for j, m in enumerate(methods) if m in cells]
        ys = [100 * cells[m]["accuracy"] for m in methods if m in cells]
        err = [[100 * (cells[m]["accuracy"] - cells[m]["low"]) for m in methods if m in cells],
               [100 * (cells[m]["high"] - cells[m]["accuracy"]) for m in methods if m in cells]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=lang)
    ax.set_xticks([j + width * (len(langs) - 1) / 2 for j in range(len(methods))], methods, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy per method and language (95% intervals)")
    ax.legend()
    return _save(fig, path)


def _series(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    series: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        series.setdefault((r["lang"], r["method"], r.get("setting", "")), []).append(r)
    return series


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The one plotting module: every benchmark's PNG is drawn here from its result JSON.

A result's `plot` field names how it is drawn:
  {"kind": "lines", "series": [{"label", "x", "y", "marker"?}], "xlabel", "ylabel", "title",
   "xscale"?, "yscale"?}                  lines; scales "linear" (default), "log", "log2"
  {"kind": "loglog", ...}                 lines with x in log2 and y in log (the default scales)
  {"kind": "timeseries", ...}             lines over time, linear axes
  {"kind": "bars", "groups": [...], "series": [{"label", "values", "lo"?, "hi"?, "color"?}],
   "ylabel", "title", "yscale"?}          grouped bars, one bar per series in each group
  {"kind": "panels", "panels": [spec, ...], "cols"?}   several of the above side by side
  {"kind": "<module>"}                    `benchmarks.<module>.draw(fig, result)` draws its
                                          own figure through the Figure/Axes methods (no
                                          matplotlib import of its own)
Every spec may add "size": [w, h] inches, "dpi", "suptitle".

    .venv/bin/python -m benchmarks.plot              # redraw every result that has a plot
    .venv/bin/python -m benchmarks.plot storage gil  # redraw these

Without matplotlib (the GPU machines have none) `draw` does nothing and returns False: the
JSON is the result, the plot a view of it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from benchmarks.paths import RESULTS, result_path

LINE_KINDS = {"lines": ("linear", "linear"), "loglog": ("log2", "log"), "timeseries": ("linear", "linear")}


def draw(result: dict, path: str | Path) -> bool:
    """Draw `result` (a result dict with a `plot` field) to `path`. False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    spec = result["plot"]
    fig = Figure(figsize=tuple(spec.get("size", (7, 4.5))), layout="constrained")
    kind = spec["kind"]
    if kind in LINE_KINDS or kind in ("bars", "panels"):
        panels = spec["panels"] if kind == "panels" else [spec]
        cols = spec.get("cols", len(panels))
        axes = fig.subplots(-(-len(panels) // cols), cols, squeeze=False).ravel()
        for ax, panel in zip(axes, panels):
            draw_panel(ax, panel)
    else:
        importlib.import_module(f"benchmarks.{kind}").draw(fig, result)
    if spec.get("suptitle"):
        fig.suptitle(spec["suptitle"], fontsize=10)
    fig.savefig(path, dpi=spec.get("dpi", 100))
    return True


def draw_panel(ax, spec: dict) -> None:
    if spec["kind"] == "bars":
        bars(ax, spec)
    else:
        lines(ax, spec)
    ax.set_xlabel(spec.get("xlabel", ""))
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.set_title(spec.get("title", ""), fontsize=10)


def lines(ax, spec: dict) -> None:
    xscale, yscale = LINE_KINDS[spec["kind"]]
    set_scale(ax.set_xscale, spec.get("xscale", xscale))
    set_scale(ax.set_yscale, spec.get("yscale", yscale))
    for s in spec["series"]:
        ax.plot(s["x"], s["y"], marker=s.get("marker", "o"), label=s.get("label"), color=s.get("color"))
    ax.grid(True, which="both", alpha=0.3)
    if any(s.get("label") for s in spec["series"]):
        ax.legend(fontsize=8)


def bars(ax, spec: dict) -> None:
    groups, series = spec["groups"], spec["series"]
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(groups))]
        err = [s["lo"], s["hi"]] if "lo" in s else None
        ax.bar(xs, s["values"], width, yerr=err, capsize=3, label=s.get("label"), color=s.get("color"))
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    set_scale(ax.set_yscale, spec.get("yscale", "linear"))
    ax.grid(True, axis="y", alpha=0.3)
    if len(series) > 1 or series and series[0].get("label"):
        ax.legend(fontsize=8)


def set_scale(setter, scale: str) -> None:
    if scale == "log2":
        setter("log", base=2)
    else:
        setter(scale)


def loglog(series: list[tuple], xlabel: str, ylabel: str, title: str, size=(7, 4.5), dpi: int = 120) -> dict:
    """A `loglog` spec from [(label, xs, ys, marker)], the shape the old scripts drew."""
    return {"kind": "loglog", "series": [{"label": lb, "x": list(xs), "y": list(ys), "marker": m}
                                         for lb, xs, ys, m in series],
            "xlabel": xlabel, "ylabel": ylabel, "title": title, "size": list(size), "dpi": dpi}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Redraw benchmarks/results/<name>.png from <name>.json.")
    p.add_argument("names", nargs="*", help="result names (default: every result whose JSON has a plot)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    paths = [result_path(n) for n in args.names] or sorted(RESULTS.glob("*.json"))
    missing = 0
    for path in paths:
        result = json.loads(path.read_text())
        if "plot" not in result:
            if args.names:
                print(f"{path.name}: no plot field, skipped", file=sys.stderr)
                missing += 1
            continue
        if not draw(result, path.with_suffix(".png")):
            raise SystemExit("matplotlib is not installed (pip install -e '.[dev]')")
        print(f"drew {path.with_suffix('.png')}")
    if missing:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Plotly figure builders: pure functions, data in, JSON-safe dict out (rendered by charts.js)."""

from __future__ import annotations

import datetime as dt
from typing import Any

LAYOUT = {
    "height": 260,
    "margin": {"l": 50, "r": 10, "t": 10, "b": 40},
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
    "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#1c2430"},
    "showlegend": False,
}


def bars(labels: list[str], values: list[float], unit: str, links: list[str] | None = None) -> dict[str, Any]:
    """`links`: one address per bar; charts.js opens it when the bar is clicked."""
    trace: dict[str, Any] = {
        "type": "bar",
        "x": labels,
        "y": values,
        "marker": {"color": "#1f5fbf"},
        "hovertemplate": f"%{{x}}: %{{y:,.0f}} {unit}<extra></extra>",
    }
    if links:
        trace["customdata"] = links
        trace["hovertemplate"] = f"%{{x}}: %{{y:,.0f}} {unit} · click for the list<extra></extra>"
    return {"data": [trace], "layout": {**LAYOUT, "yaxis": {"title": {"text": unit}, "rangemode": "tozero"}}}


def hbars(labels: list[str], values: list[float], unit: str) -> dict[str, Any]:
    """Horizontal bars, largest on top: for long category names (causes, customers)."""
    pairs = sorted(zip(labels, values, strict=True), key=lambda p: p[1])
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": [p[0] for p in pairs],
                "x": [p[1] for p in pairs],
                "marker": {"color": "#1f5fbf"},
                "hovertemplate": f"%{{y}}: %{{x:,.0f}} {unit}<extra></extra>",
            }
        ],
        "layout": {
            **LAYOUT,
            "margin": {**LAYOUT["margin"], "l": 190},
            "xaxis": {"title": {"text": unit}, "rangemode": "tozero"},
            "yaxis": {"automargin": True},
        },
    }


def weekly(weeks: list[dt.date], median: list[float | None], p90: list[float | None]) -> dict[str, Any]:
    x = [w.isoformat() for w in weeks]
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "median",
                "x": x,
                "y": median,
                "line": {"color": "#1f5fbf"},
            },
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "p90",
                "x": x,
                "y": p90,
                "line": {"color": "#a15c00", "dash": "dot"},
            },
        ],
        "layout": {
            **LAYOUT,
            "showlegend": True,
            "legend": {"orientation": "h", "y": 1.15},
            "yaxis": {"title": {"text": "hours"}, "rangemode": "tozero"},
        },
    }


def histogram(hist: dict[str, int], sla_hours: float | None) -> dict[str, Any]:
    keys = sorted((k for k in hist if k != "inf"), key=float) + (["inf"] if "inf" in hist else [])
    labels = [f"{k} h" if k != "inf" else "longer" for k in keys]
    colors = ["#b42318" if sla_hours is not None and k != "inf" and float(k) > sla_hours else "#1a7f4b" for k in keys]
    fig = bars(labels, [hist[k] for k in keys], "items")
    fig["data"][0]["marker"] = {"color": colors}
    fig["layout"]["xaxis"] = {"type": "category", "tickangle": -45, "title": {"text": "up to (hours)"}}
    fig["layout"]["margin"] = {**LAYOUT["margin"], "b": 70}
    return fig


def _multi_bar(x: list[str], series: dict[str, list[float]], unit: str, mode: str, colors: list[str]) -> dict:
    return {
        "data": [
            {
                "type": "bar",
                "name": name,
                "x": x,
                "y": values,
                "hovertemplate": f"{name}, %{{x}}: %{{y:,.0f}} {unit}<extra></extra>",
                **({"marker": {"color": colors[i % len(colors)]}} if colors else {}),
            }
            for i, (name, values) in enumerate(series.items())
        ],
        "layout": {
            **LAYOUT,
            "barmode": mode,
            "showlegend": True,
            # Above the plot, not over the bars: a tall stack would hide under an inside legend.
            "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "traceorder": "normal"},
            "margin": {**LAYOUT["margin"], "t": 60},
            "yaxis": {"title": {"text": unit}, "rangemode": "tozero"},
        },
    }


def stacked(x: list[str], series: dict[str, list[float]], unit: str = "hours") -> dict[str, Any]:
    return _multi_bar(x, series, unit, "stack", [])


def grouped(x: list[str], series: dict[str, list[float]], unit: str) -> dict[str, Any]:
    """Side by side, for comparing two measures (demand against supply)."""
    return _multi_bar(x, series, unit, "group", ["#1f5fbf", "#a15c00", "#1a7f4b", "#b42318"])

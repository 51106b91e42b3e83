#!/usr/bin/env python3
"""Draws the curves of scripts/bench-curves.sh: reads target/curves/*.csv and writes one small SVG
line chart per sweep into docs/curves/ (throughput, and sync p50/p99 where the sweep has them;
log axes where the sweep is geometric). Standard library only.

    scripts/plot-curves.py [--input target/curves] [--output docs/curves] [--markdown]

A sweep whose CSV is missing is skipped. `--markdown` also prints each CSV as a Markdown table
(the columns that vary or carry a figure), for docs/performance.md.
"""

import argparse
import csv
import math
import pathlib
from xml.sax.saxutils import escape

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLORS = ["#1f6fb4", "#d1492e", "#2a9d4b", "#8e5bb5", "#c98a0b", "#56707d"]
PANEL_W, PANEL_H = 430, 290
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 66, 18, 34, 46
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def read_rows(path):
    """The CSV's rows as dicts, or None when the file is missing."""
    if not path.exists():
        return None
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def num(value):
    """A float, or None for an empty field."""
    return float(value) if value not in ("", None) else None


def human(value, unit=""):
    """10, 1k, 64k, 1M; with unit "B": 10 B, 1 kB, 6 MiB (binary when exact)."""
    if unit == "B":
        for size, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= size and value % size == 0:
                return f"{value // size:g} {name}"
        for size, name in ((1e6, "MB"), (1e3, "kB")):
            if value >= size:
                return f"{value / size:g} {name}"
        return f"{value:g} B"
    for size, name in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{name}"
    if abs(value) < 1 and value != 0:
        return f"{value:.2g}"
    return f"{value:g}"


def nice_ticks(lo, hi, count=5):
    """Round linear ticks covering lo..hi."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def log_ticks(lo, hi):
    """Decades (and 2, 5 between them when the range is under three decades) covering lo..hi."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if b - a <= 3 else (1,)
    ticks = [m * 10 ** e for e in range(a, b + 1) for m in mults]
    inside = [t for t in ticks if lo <= t <= hi]
    below = [t for t in ticks if t < lo] if not inside or inside[0] > lo else []
    above = [t for t in ticks if t > hi] if not inside or inside[-1] < hi else []
    return below[-1:] + inside + above[:1]


class Axis:
    """A linear or log mapping from data to pixels, with its ticks."""

    def __init__(self, values, log, pixels, ticks=None, zero=True):
        values = [v for v in values if v is not None and (v > 0 or not log)]
        lo, hi = (min(values), max(values)) if values else (1, 10)
        self.log = log
        if ticks is not None:
            self.ticks = ticks
        elif log:
            self.ticks = log_ticks(lo, hi if hi > lo else lo * 10)
        else:
            self.ticks = nice_ticks(0 if zero else lo, hi * 1.3 if zero else hi)
        self.lo, self.hi = min(self.ticks + [lo]), max(self.ticks + [hi])
        self.pixels = pixels

    def __call__(self, v):
        f = (lambda x: math.log10(x)) if self.log else (lambda x: x)
        span = (f(self.hi) - f(self.lo)) or 1
        p0, p1 = self.pixels
        return p0 + (f(v) - f(self.lo)) / span * (p1 - p0)


def panel(spec, ox, oy):
    """The SVG of one panel at (ox, oy). spec: title, xlabel, ylabel, logx, logy, xunit,
    series [(name, [(x, y)], dashed)], refs [(name, y, color index)] (dotted horizontal lines), xticks."""
    x0, x1 = ox + MARGIN_L, ox + PANEL_W - MARGIN_R
    y0, y1 = oy + PANEL_H - MARGIN_B, oy + MARGIN_T
    xs = [x for _, pts, _ in spec["series"] for x, _ in pts]
    ys = [y for _, pts, _ in spec["series"] for _, y in pts] + [y for _, y, _ in spec.get("refs", [])]
    ax = Axis(xs, spec.get("logx"), (x0, x1), spec.get("xticks"), zero=False)
    ay = Axis(ys, spec.get("logy"), (y0, y1))
    out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#ffffff" '
           f'stroke="#c8ccd2"/>']
    for t in ax.ticks:
        px = ax(t)
        out.append(f'<line x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y0}" stroke="#eceef1"/>')
        out.append(f'<text x="{px:.1f}" y="{y0 + 15}" text-anchor="middle">'
                   f'{escape(human(t, spec.get("xunit", "")))}</text>')
    for t in ay.ticks:
        py = ay(t)
        out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#eceef1"/>')
        out.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">'
                   f'{escape(human(t))}</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 34}" text-anchor="middle" fill="#333">'
               f'{escape(spec["xlabel"])}</text>')
    out.append(f'<text transform="translate({ox + 16},{(y0 + y1) / 2}) rotate(-90)" '
               f'text-anchor="middle" fill="#333">{escape(spec["ylabel"])}</text>')
    out.append(f'<text x="{x0}" y="{oy + 20}" font-weight="bold" font-size="13">'
               f'{escape(spec["title"])}</text>')
    out += lines(spec, ax, ay)
    return "\n".join(out)


def lines(spec, ax, ay):
    """The series' polylines and points, the reference lines and the legend."""
    out, legend = [], []
    for i, (name, pts, dashed) in enumerate(spec["series"]):
        color = COLORS[spec.get("colors", {}).get(name, i) % len(COLORS)]
        pts = [(x, y) for x, y in pts if y is not None and (y > 0 or not ay.log)]
        path = " ".join(f"{ax(x):.1f},{ay(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        out += [f'<circle cx="{ax(x):.1f}" cy="{ay(y):.1f}" r="2.6" fill="{color}"/>'
                for x, y in pts]
        legend.append((name, color, dashed))
    for name, y, index in spec.get("refs", []):
        color = COLORS[index % len(COLORS)]
        out.append(f'<line x1="{ax.pixels[0]}" y1="{ay(y):.1f}" x2="{ax.pixels[1]}" '
                   f'y2="{ay(y):.1f}" stroke="{color}" stroke-dasharray="2,3" stroke-width="1.5"/>')
        legend.append((name, color, True))
    box_w, box_h = 7 * max(len(n) for n, _, _ in legend) + 34, 16 * len(legend) + 4
    drawn = [(ax(x), ay(y)) for _, pts, _ in spec["series"] for x, y in pts
             if y is not None and (y > 0 or not ay.log)]
    drawn += [(ax.pixels[0] + (ax.pixels[1] - ax.pixels[0]) * k / 10, ay(y))
              for _, y, _ in spec.get("refs", []) for k in range(11)]
    lx, ly = legend_corner(ax.pixels, ay.pixels, box_w, box_h, drawn)
    out.append(f'<rect x="{lx - 6}" y="{ly - 4}" width="{box_w}" '
               f'height="{box_h}" fill="#ffffff" fill-opacity="0.88" '
               f'stroke="#d9dce1"/>')
    for k, (name, color, dashed) in enumerate(legend):
        y = ly + 8 + 16 * k
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 20}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 26}" y="{y + 4}">{escape(name)}</text>')
    return out


def legend_corner(xpix, ypix, box_w, box_h, drawn):
    """The top-left of the legend: the inner corner whose box covers the fewest drawn points
    (and the segments between them, sampled)."""
    samples = list(drawn)
    for (ax0, ay0), (ax1, ay1) in zip(drawn, drawn[1:]):
        samples += [(ax0 + (ax1 - ax0) * k / 8, ay0 + (ay1 - ay0) * k / 8) for k in range(1, 8)]
    (x0, x1), (y0, y1) = xpix, ypix  # y0 is the bottom
    corners = [(x1 - box_w - 4, y1 + 8), (x0 + 10, y1 + 8), (x1 - box_w - 4, y0 - box_h - 4),
               (x0 + 10, y0 - box_h - 4)]

    def covered(corner):
        cx, cy = corner
        return sum(1 for px, py in samples
                   if cx - 10 <= px <= cx + box_w + 4 and cy - 8 <= py <= cy + box_h + 4)
    return min(corners, key=covered)


def write_svg(path, title, panels, note=""):
    """One SVG with the panels side by side under a title."""
    width, height = PANEL_W * len(panels), PANEL_H + 40
    body = [panel(spec, i * PANEL_W, 34) for i, spec in enumerate(panels)]
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} font-size="11" fill="#222">\n'
           f'<rect width="100%" height="100%" fill="#f7f8fa"/>\n'
           f'<text x="12" y="22" font-size="15" font-weight="bold">{escape(title)}</text>\n'
           f'<text x="{width - 12}" y="22" text-anchor="end" fill="#666">{escape(note)}</text>\n'
           + "\n".join(body) + "\n</svg>\n")
    path.write_text(svg)
    print(f"wrote {path}")


def series(rows, x, y, name, dashed=False):
    """(name, [(x, y)] sorted by x, dashed) from the rows' columns x and y."""
    pts = sorted((num(r[x]), num(r[y])) for r in rows if num(r[x]) is not None)
    return (name, pts, dashed)


def latency_series(rows, x, prefix=""):
    return [series(rows, x, "p50_ms", f"{prefix}p50"),
            series(rows, x, "p99_ms", f"{prefix}p99", True)]


def by_label(rows):
    groups = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    return groups


def plot_payload(rows, out):
    mb_s = [dict(r, mb_s=str(num(r["tasks_per_second"]) * num(r["payload_bytes"]) / 1e6))
            for r in rows]
    write_svg(out / "payload.svg", "Cost by payload size (warm python no-op)", [
        {"title": "Async throughput", "xlabel": "payload size", "ylabel": "tasks/s (MB/s dashed)",
         "logx": True, "logy": True, "xunit": "B", "xticks": [10, 1000, 65536, 1 << 20, 6 << 20],
         "series": [series(rows, "payload_bytes", "tasks_per_second", "tasks/s"),
                    series(mb_s, "payload_bytes", "mb_s", "MB/s of payload", True)]},
        {"title": "Sync latency", "xlabel": "payload size", "ylabel": "ms", "logx": True,
         "logy": True, "xunit": "B", "xticks": [10, 1000, 65536, 1 << 20, 6 << 20],
         "series": latency_series(rows, "payload_bytes")},
    ])


def plot_functions(rows, out):
    groups = by_label(rows)
    tput, lat, colors = [], [], {}
    for i, (label, group) in enumerate(sorted(groups.items())):
        tput.append(series(group, "functions", "tasks_per_second", label))
        for s in latency_series(group, "functions", f"{label} "):
            colors[s[0]] = i
            lat.append(s)
        colors[label] = i
    write_svg(out / "functions.svg", "Cost by registered functions (calls round robin)", [
        {"title": "Async throughput", "xlabel": "registered functions", "ylabel": "tasks/s",
         "logx": True, "logy": True, "series": tput, "colors": colors},
        {"title": "Sync latency", "xlabel": "registered functions", "ylabel": "ms",
         "logx": True, "logy": True, "series": lat, "colors": colors},
    ])


def plot_connections(rows, out):
    write_svg(out / "connections.svg", "Cost by concurrent connections (warm python no-op)", [
        {"title": "Async throughput", "xlabel": "concurrent connections", "ylabel": "tasks/s",
         "logx": True, "series": [series(rows, "connections", "tasks_per_second", "tasks/s")]},
        {"title": "Sync latency (as many concurrent callers)", "xlabel": "concurrent connections",
         "ylabel": "ms", "logx": True, "logy": True,
         "series": latency_series(rows, "sync_connections")},
    ])


def plot_backlog(rows, out):
    rows = [dict(r, rss_mb=str(num(r["rss_queued_kib"]) / 1024),
                 rss_restarted_mb=str(num(r["rss_restarted_kib"]) / 1024)) for r in rows]
    queued = [r for r in rows if num(r["tasks"]) > 0]
    write_svg(out / "backlog.svg", "Cost by queued backlog (warm python no-op, 2 slots)", [
        {"title": "Server memory", "xlabel": "queued tasks", "ylabel": "RSS, MB", "logx": True,
         "logy": True,
         "series": [series(queued, "tasks", "rss_mb", "RSS, all queued"),
                    series(queued, "tasks", "rss_restarted_mb", "RSS after restart", True)]},
        {"title": "Restart after kill -9", "xlabel": "queued tasks", "ylabel": "seconds to listen",
         "logx": True, "logy": True, "series": [series(queued, "tasks", "restart_s", "restart")]},
        {"title": "Draining it (2 local slots)", "xlabel": "queued tasks", "ylabel": "tasks/s",
         "logx": True,
         "series": [series(queued, "tasks", "drain_tasks_per_second", "drain rate")]},
    ], note="point 0: RSS %s MB, restart %s s" % (
        f'{num(rows[0]["rss_before_kib"]) / 1024:.0f}', rows[0]["restart_s"]) if rows else "")


def plot_remote(rows, out):
    remote = [r for r in rows if not r["label"].startswith("local")]
    local = [r for r in rows if r["label"].startswith("local")]
    kinds = sorted({r["label"].split()[-1] for r in remote})
    tput, lat, refs = [], [], []
    for index, kind in enumerate(kinds):
        group = [r for r in remote if r["label"].endswith(kind)]
        tput.append(series(group, "workers", "tasks_per_second", f"{kind}, remote"))
        refs += [(f"{kind}, local", num(r["tasks_per_second"]), index) for r in local
                 if r["label"].endswith(kind)]
    noop = [r for r in remote if r["label"].endswith("noop")]
    lat = latency_series(noop, "workers", "noop ")
    write_svg(out / "remote.svg", "Cost by remote workers (8 slots shared out, push; shell cat)", [
        {"title": "Async throughput", "xlabel": "remote workers", "ylabel": "tasks/s",
         "logx": True, "xticks": [1, 2, 4, 8], "series": tput, "refs": refs},
        {"title": "Sync latency, no-op", "xlabel": "remote workers", "ylabel": "ms",
         "logx": True, "xticks": [1, 2, 4, 8], "series": lat, "colors": {"noop p99": 0}},
    ])


TABLE_SKIP = {"unix_time", "runtime"}


def markdown(name, rows):
    """The rows as a Markdown table, without the columns that are empty or the same throughout
    (those go in a line above it)."""
    cols = [c for c in rows[0] if c not in TABLE_SKIP]
    varying = [c for c in cols if len({r[c] for r in rows}) > 1]
    fixed = [f"{c}={rows[0][c]}" for c in cols if c not in varying and rows[0][c] != ""]
    lines = [f"`{name}.csv`" + (f" (all rows: {', '.join(fixed)})" if fixed else "") + ":", "",
             "| " + " | ".join(varying) + " |", "|" + "---|" * len(varying)]
    lines += ["| " + " | ".join(r[c] for c in varying) + " |" for r in rows]
    print("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=str(ROOT / "target/curves"))
    parser.add_argument("--output", default=str(ROOT / "docs/curves"))
    parser.add_argument("--markdown", action="store_true", help="print the CSVs as tables")
    args = parser.parse_args()
    src, out = pathlib.Path(args.input), pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"payload": plot_payload, "functions": plot_functions,
             "connections": plot_connections, "backlog": plot_backlog, "remote": plot_remote}
    for name, plot in plots.items():
        rows = read_rows(src / f"{name}.csv")
        if rows:
            plot(rows, out)
            if args.markdown:
                markdown(name, rows)
        else:
            print(f"no {src / name}.csv: skipped")


if __name__ == "__main__":
    main()

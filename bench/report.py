"""Turning samples into the report: medians per server, the markdown tables, the targets.

A *sample* is one wrk run of one server (a dict, also what the JSON results file holds).  Per
workload and server the report shows the median throughput, median p99, median server CPU per
request and the ratio porch/peer of the medians, each peer against its matching porch variant.
The targets table says, for each target of ``workloads.TARGETS``, the measured value and whether
it is met.  ``chart`` draws the same medians as an SVG bar chart (req/s and CPU per request of
every server, per workload); ``python bench/report.py RESULTS.json`` draws it for a saved run.
"""

from __future__ import annotations

import html
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from servers import SPECS, Probe, compiled_twin
from workloads import IDLE_THREAD_ALLOWANCE, TARGETS, WORKLOADS, Target


@dataclass
class Row:
    """The medians of one server (and phase) on one workload."""

    server: str
    phase: str
    throughput: float
    p99_ms: float
    cpu_us: float
    switches: float  # context switches of the server's threads per request
    samples: int
    errors: dict[str, int]
    requests: int
    keep_alive: bool | None = None
    rss_mib: float | None = None
    threads: int | None = None
    idle_open: int | None = None
    spread: float = 0.0  # (max - min) / median of the throughputs
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    machine: str
    settings: str
    rows: dict[str, list[Row]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def command_output(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def machine_line(venv: Path, repo: Path) -> str:
    """CPU model, cores, kernel, Python and every server/tool version, and porch's commit."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"{cpu}, {os.cpu_count()} cores", f"Linux {platform.release()}", f"Python {platform.python_version()}"]
    wrk = re.search(r"wrk (\S+)", command_output(["wrk", "-v"]))
    versions.append(f"wrk {wrk.group(1) if wrk else '?'}")
    nginx = re.search(r"nginx/(\S+)", command_output(["nginx", "-v"]))
    if nginx:
        versions.append(f"nginx {nginx.group(1)}")
    lighttpd = re.search(r"lighttpd/(\S+)", command_output(["lighttpd", "-v"]))
    if lighttpd:
        versions.append(f"lighttpd {lighttpd.group(1)}")
    python = venv / "bin" / "python"
    if python.exists():
        for package in ("gunicorn", "waitress", "uWSGI"):
            found = command_output(
                [str(python), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"]
            )
            if found and "Error" not in found:
                versions.append(f"{package} {found}")
    commit = command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = command_output(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "server", "handlers"]
    )
    versions.append(f"porch {commit or '?'}{' + uncommitted changes' if dirty else ''}")
    return ", ".join(versions)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def notes_for(workload_name: str, probe: Probe | None) -> list[str]:
    """What a reader must know to compare this row: framing by close, a close request ignored."""
    notes: list[str] = []
    if probe is None:
        return notes
    if probe.framing == "close":
        notes.append(
            "responses end when the connection closes (wrk counts each as a read error, and the request as completed)"
        )
    if probe.keep_alive and WORKLOADS[workload_name].headers.get("Connection") == "close":
        notes.append("ignores `Connection: close` and keeps the connection: not comparable")
    return notes


def aggregate(samples: list[dict], probes: dict[tuple[str, str], Probe]) -> dict[str, list[Row]]:
    """Median rows per workload, in the order the servers were listed."""
    rows: dict[str, list[Row]] = {}
    for name, workload in WORKLOADS.items():
        mine = [s for s in samples if s["workload"] == name]
        keys: list[tuple[str, str]] = []
        for s in mine:
            if (s["server"], s["phase"]) not in keys:
                keys.append((s["server"], s["phase"]))
        for server, phase in keys:
            group = [s for s in mine if s["server"] == server and s["phase"] == phase]
            probe = probes.get((name, server))
            values = [s["mibps"] if workload.unit == "MiB/s" else s["rps"] for s in group]
            errors: dict[str, int] = {}
            for s in group:
                for key, count in s["errors"].items():
                    errors[key] = errors.get(key, 0) + count
            middle = median(values)
            row = Row(
                server,
                phase,
                middle,
                median([s["p99_ms"] for s in group]),
                median([s["cpu_us"] for s in group]),
                median([s.get("switches", 0.0) for s in group]),
                len(group),
                errors,
                sum(s["requests"] for s in group),
                probe.keep_alive if probe else None,
                spread=(max(values) - min(values)) / middle if middle else 0.0,
                notes=notes_for(name, probe),
            )
            if any("rss_mib" in s for s in group):
                row.rss_mib = median([s["rss_mib"] for s in group])
                row.threads = int(median([s["threads"] for s in group]))
            opened = [s["idle_open"] for s in group if s.get("idle_open") is not None]
            if opened:
                row.idle_open = min(opened)
            rows.setdefault(name, []).append(row)
    return rows


def find(rows: list[Row], server: str, phase: str = "") -> Row | None:
    return next((row for row in rows if row.server == server and row.phase == phase), None)


def ratio_of(rows: list[Row], peer: Row, compiled: bool = False) -> float | None:
    """porch (the variant this peer is compared with, or its compiled twin) / peer, on throughput."""
    porch_key = SPECS[peer.server].compare_to
    if porch_key and compiled:
        porch_key = compiled_twin(porch_key)
    porch = find(rows, porch_key) if porch_key else None
    if porch is None or not peer.throughput:
        return None
    return porch.throughput / peer.throughput


def error_text(row: Row) -> str:
    parts = [f"{key} {count:,}" for key, count in row.errors.items() if count]
    return ", ".join(parts)


def label(row: Row) -> str:
    text = SPECS[row.server].label
    if row.phase == "baseline":
        return f"{text}, no idle connections"
    if row.phase == "idle":
        return f"{text}, {WORKLOADS['idle-10k'].idle_connections:,} idle connections"
    return text


def workload_table(name: str, rows: list[Row]) -> list[str]:
    workload = WORKLOADS[name]
    lines = [f"### {name}", "", f"{workload.description}: `{workload.method} {workload.path}`.", ""]
    if workload.idle_connections:
        lines += [
            "| server | req/s | p99 ms | CPU µs/req | ctx sw/req | RSS MiB | threads | idle still open "
            "| with/without |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = find(rows, "porch-idle", "baseline")
        for row in rows:
            versus = (
                f"{row.throughput / base.throughput:.2f}×" if row.phase == "idle" and base and base.throughput else ""
            )
            lines.append(
                f"| {label(row)} | {row.throughput:,.0f} | {row.p99_ms:.2f} | {row.cpu_us:,.0f} | "
                f"{row.switches:.1f} | {row.rss_mib or 0:,.1f} | {row.threads or 0} | "
                f"{'' if row.idle_open is None else f'{row.idle_open:,}'} | {versus} |"
            )
    else:
        lines += [
            f"| server | {workload.unit} | spread | p99 ms | CPU µs/req | ctx sw/req | keep-alive | porch/peer "
            "| errors, notes |",
            "|---|---:|---:|---:|---:|---:|:-:|---:|---|",
        ]
        footnotes: list[str] = []
        for row in rows:
            ratio = None if SPECS[row.server].is_porch else ratio_of(rows, row)
            value = f"{row.throughput:,.1f}" if workload.unit == "MiB/s" else f"{row.throughput:,.0f}"
            alive = {True: "yes", False: "no", None: "?"}[row.keep_alive]
            shown = "—" if ratio is None else f"({ratio:.2f}×)" if not comparable(row) else f"{ratio:.2f}×"
            marks = []
            for note in row.notes:
                if note not in footnotes:
                    footnotes.append(note)
                marks.append(f"[{footnotes.index(note) + 1}]")
            extra = " ".join(filter(None, [error_text(row), *marks]))
            spread = f"±{row.spread / 2:.0%}" if row.samples > 1 else ""
            lines.append(
                f"| {label(row)} | {value} | {spread} | {row.p99_ms:.2f} | {row.cpu_us:,.0f} | "
                f"{row.switches:.1f} | {alive} | "
                f"{shown} | {extra} |"
            )
        if footnotes:
            lines += [""] + [
                f"[{n}] {note}" + ("  " if n < len(footnotes) else "") for n, note in enumerate(footnotes, 1)
            ]
    lines.append("")
    return lines


def comparable(row: Row) -> bool:
    return not any("not comparable" in note for note in row.notes)


def settings_table(rows: dict[str, list[Row]]) -> list[str]:
    used: list[str] = []
    for found in rows.values():
        for row in found:
            if row.server not in used:
                used.append(row.server)
    lines = ["### Server settings", "", "| server | settings | compared with |", "|---|---|---|"]
    for key in used:
        spec = SPECS[key]
        versus = f"`{spec.compare_to}`" if spec.compare_to else ""
        lines.append(f"| {spec.label} (`{key}`) | {spec.settings} | {versus} |")
    return lines + [""]


@dataclass
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: could not be measured


def evaluate(target: Target, rows: dict[str, list[Row]]) -> Verdict:
    found = rows.get(target.workload, [])
    if target.kind == "idle":
        base, idle = find(found, "porch-idle", "baseline"), find(found, "porch-idle", "idle")
        name = f"idle-10k: hello throughput ≥ {target.minimum:g}× without idle connections; no thread per connection"
        if not base or not idle or not base.throughput:
            return Verdict(name, "not measured", None)
        share = idle.throughput / base.throughput
        extra_threads = (idle.threads or 0) - (base.threads or 0)
        met = share >= target.minimum and extra_threads <= IDLE_THREAD_ALLOWANCE
        return Verdict(
            name,
            f"{share:.2f}×; threads {base.threads} → {idle.threads}; RSS "
            f"{base.rss_mib or 0:.0f} → {idle.rss_mib or 0:.0f} MiB",
            met,
        )
    python_peers = [row for row in found if SPECS[row.server].python_peer and comparable(row)]
    if target.kind == "p99":
        name = f"{target.workload}: p99 ≤ best Python peer's"
        if not python_peers:
            return Verdict(name, "no Python peer measured", None)
        best = min(python_peers, key=lambda row: row.p99_ms)
        porch = find(found, SPECS[best.server].compare_to or "")
        if porch is None:
            return Verdict(name, "porch not measured", None)
        return Verdict(
            name,
            f"{porch.p99_ms:.2f} ms vs {SPECS[best.server].label} {best.p99_ms:.2f} ms",
            porch.p99_ms <= best.p99_ms,
        )
    ratios: list[tuple[float, Row]] = []
    build = "compiled " if target.compiled else ""
    if target.peer == "python":
        name = f"{build}{target.workload} ≥ {target.minimum:g}× best Python peer"
        candidates = python_peers
    else:
        name = f"{build}{target.workload} ≥ {target.minimum:g}× {SPECS[target.peer].label}"
        candidates = [row for row in found if row.server == target.peer and comparable(row)]
    for candidate in candidates:
        found_ratio = ratio_of(found, candidate, target.compiled)
        if found_ratio is not None:
            ratios.append((found_ratio, candidate))
    if not ratios:
        return Verdict(name, "not measured (peer skipped)", None)
    ratio, row = min(ratios, key=lambda pair: pair[0])  # the best peer is the one porch leads least
    margin = ratio / target.minimum - 1
    return Verdict(name, f"{ratio:.2f}× {SPECS[row.server].label} ({margin:+.0%} vs target)", ratio >= target.minimum)


def targets_table(rows: dict[str, list[Row]]) -> list[str]:
    lines = ["### Targets", "", "| target | measured | |", "|---|---|:-:|"]
    for target in TARGETS:
        if target.workload not in rows:
            continue
        verdict = evaluate(target, rows)
        mark = {True: "met", False: "**missed**", None: "n/a"}[verdict.met]
        lines.append(f"| {verdict.target} | {verdict.measured} | {mark} |")
    return lines + [""]


def render(report: Report) -> str:
    lines = [f"Machine: {report.machine}", "", f"Run: {report.settings}", ""]
    if report.skipped:
        lines += ["Skipped:", *[f"- {reason}" for reason in report.skipped], ""]
    lines += targets_table(report.rows)
    for name, rows in report.rows.items():
        lines += workload_table(name, rows)
    lines += settings_table(report.rows)
    lines += [
        "req/s, p99 and CPU are medians over the repeats; CPU µs/req is the user+system time of the "
        "server's whole process tree (CGI scripts included) divided by the requests wrk completed; "
        "ctx sw/req counts the context switches of the server's threads (/proc/PID/task/*/status), a gauge "
        "of thread hand-offs and GIL contention (threads and processes that end during a run -- CGI scripts, "
        "per-connection threads -- are missing from it); "
        "porch/peer divides medians, each peer against the porch variant with its process and thread "
        "counts. wrk shares the two cores with the server.",
        "",
    ]
    return "\n".join(lines)


# -- the chart ----------------------------------------------------------------------------------

CHART_WIDTH = 980
LABEL_WIDTH = 200  # server names, right-aligned before the bars
PANEL_WIDTH = (CHART_WIDTH - LABEL_WIDTH - 20) // 2  # req/s on the left, CPU µs/req on the right
VALUE_WIDTH = 70  # the number after each bar
BAR_HEIGHT, ROW_HEIGHT, HEADING_HEIGHT, GAP = 12, 16, 22, 10
COLOURS = {"porch": "#1f6fb2", "porch compiled": "#e8731a", "peers": "#a3acb5"}


def colour(server: str) -> str:
    spec = SPECS[server]
    return COLOURS["porch compiled" if spec.compiled else "porch" if spec.is_porch else "peers"]


def chart(rows: dict[str, list[Row]]) -> str:
    """An SVG bar chart of every workload: each server's req/s (MiB/s) and CPU µs per request,
    each panel scaled to the workload's largest value, porch, porch compiled and the peers in
    colours of their own.  Written by hand: the benchmark needs no plotting library."""
    parts: list[str] = []
    y = 56
    bar_room = PANEL_WIDTH - VALUE_WIDTH
    for name, found in rows.items():
        unit = WORKLOADS[name].unit
        parts.append(f'<text x="8" y="{y + 15}" font-weight="bold">{html.escape(name)}</text>')
        for panel, heading in enumerate((unit, "CPU µs/req")):
            x = LABEL_WIDTH + panel * (PANEL_WIDTH + 20)
            parts.append(f'<text x="{x}" y="{y + 15}" fill="#555">{html.escape(heading)}</text>')
        y += HEADING_HEIGHT
        largest = (
            max((row.throughput for row in found), default=0) or 1,
            max((row.cpu_us for row in found), default=0) or 1,
        )
        for row in found:
            text_y = y + BAR_HEIGHT - 2
            parts.append(f'<text x="{LABEL_WIDTH - 6}" y="{text_y}" text-anchor="end">{html.escape(label(row))}</text>')
            values = (row.throughput, row.cpu_us)
            texts = (f"{row.throughput:,.1f}" if unit == "MiB/s" else f"{row.throughput:,.0f}", f"{row.cpu_us:,.0f}")
            for panel, (value, text) in enumerate(zip(values, texts, strict=True)):
                x = LABEL_WIDTH + panel * (PANEL_WIDTH + 20)
                width = value / largest[panel] * bar_room
                parts.append(
                    f'<rect x="{x}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" fill="{colour(row.server)}"/>'
                    f'<text x="{x + width + 4:.1f}" y="{text_y}">{text}</text>'
                )
            y += ROW_HEIGHT
        y += GAP
    legend = []
    for number, (name, fill) in enumerate(COLOURS.items()):
        x = LABEL_WIDTH + number * 150
        legend.append(
            f'<rect x="{x}" y="30" width="12" height="12" fill="{fill}"/><text x="{x + 17}" y="40">{name}</text>'
        )
    title = "throughput (higher is better) and server CPU µs per request (lower is better), medians of the run"
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{y + 8}" '
            f'viewBox="0 0 {CHART_WIDTH} {y + 8}" font-family="sans-serif" font-size="11">',
            f'<rect width="{CHART_WIDTH}" height="{y + 8}" fill="#fff"/>',
            f'<text x="8" y="20" font-size="13" font-weight="bold">porch benchmark: {html.escape(title)}</text>',
            *legend,
            *parts,
            "</svg>",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    """``python bench/report.py RESULTS.json``: the chart of a saved run, written beside it (.svg)."""
    if len(argv) != 1:
        print("usage: python bench/report.py bench/results/DATE-MODE.json", file=sys.stderr)
        return 2
    results = Path(argv[0])
    samples = json.loads(results.read_text())["samples"]
    results.with_suffix(".svg").write_text(chart(aggregate(samples, {})))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

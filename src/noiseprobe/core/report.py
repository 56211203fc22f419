"""A self-contained HTML report of one or more run directories: figures embedded, checks tabulated."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from noiseprobe.core import progress
from noiseprobe.core.errors import ConfigError, RunDirError
from noiseprobe.core.store import RunDir, atomic_write, os_fault, read_parquet, read_summary

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#f3f3f3;text-align:left} td.num{font-family:ui-monospace,monospace;text-align:right}
tr.pass td.verdict{background:#d9f2d9;font-weight:600} tr.fail td.verdict{background:#f9d6d5;font-weight:600}
tr.refuted td.verdict{background:#fbe3b5;font-weight:600} tr.nm td.verdict{background:#e4e4e4;font-weight:600}
tr.refuted + tr.corr td{border-top:none} tr.corr td.claim{padding-left:1.5em} .ok{color:#1a7f37} .notok{color:#b42318}
figure{display:inline-block;margin:.5em;vertical-align:top} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.8em;color:#555} .meta{color:#555;font-size:.9em} .summary{font-size:1.05em}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures-loaded', String(ok));
  document.body.setAttribute('data-figures-total', String(imgs.length));
});
"""


#: a finished run directory; a NoiseMonitor log directory (its CSV has every row while the monitor runs)
MARKERS = ("summary.json", "monitor.parquet", "monitor.csv")

#: log-directory kind -> draw(history, directory) -> the figures written there. Registered by the layer
#: that owns the kind (``noiseprobe.monitor.plots`` registers "monitor"), so core imports nothing above it.
PLOTTERS: dict[str, Callable[[Any, Path], list[Path]]] = {}


def register_plotter(kind: str, draw: Callable[[Any, Path], list[Path]]) -> None:
    """Draw the figures of a ``kind`` log directory (today "monitor") with ``draw(history, directory)``."""
    PLOTTERS[kind] = draw


def find_runs(path: Path) -> list[Path]:
    """``path`` itself if it is a finished run directory or a monitor log directory, else such
    sub-directories."""
    path = Path(path)
    if any((path / m).exists() for m in MARKERS):
        return [path]
    try:
        runs = sorted({p.parent for m in MARKERS for p in path.glob(f"*/{m}")}) if path.is_dir() else []
    except OSError as exc:
        raise os_fault("read", path, exc) from exc
    if not runs:
        raise ConfigError(
            "DIR",
            str(path),
            "a run directory with summary.json, a monitor log directory with "
            "monitor.parquet or monitor.csv, or a folder of such directories",
        )
    return runs


def _monitor_section(run: Path) -> str:
    """A NoiseMonitor log directory: its time-series figures (drawn into the directory) and last values."""
    e = html.escape
    try:
        hist = read_parquet(run / "monitor.parquet")
    except RunDirError:  # a monitor still running (or killed): its Parquet file is not closed yet
        try:
            hist = pd.read_csv(run / "monitor.csv")
        except (OSError, ValueError) as exc:
            raise RunDirError(f"cannot read the monitor log in {run}: {exc}") from None
    draw = PLOTTERS.get("monitor")
    figs = (
        "".join(
            f"<figure><img alt='{e(p.name)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
            f"<figcaption>{e(p.name)}</figcaption></figure>"
            for p in draw(hist, run)
        )
        if draw is not None
        else "<p class='meta'>no figures: no plotter registered for monitor logs (import noiseprobe.monitor)</p>"
    )
    last = (
        "".join(f"<tr><th>{e(str(k))}</th><td class='num'>{e(_fmt(v))}</td></tr>" for k, v in hist.iloc[-1].items())
        if len(hist)
        else ""
    )
    return (
        f"<section class='run' id='{e(run.name)}'><h2>monitor: {e(run.name)}</h2>"
        f"<p class='meta'>{len(hist)} measurements · directory <code>{e(str(run))}</code></p>"
        f"<h3>Figures</h3>{figs}<h3>Last measurement</h3><table class='metrics'>{last}</table></section>"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v[:12]) + (", …" if len(v) > 12 else "") + "]"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


ROW_CLASS = {"pass": "pass", "fail": "fail", "refuted": "refuted", "not measurable": "nm"}
SHOWN = {"pass": "pass", "fail": "FAIL", "refuted": "refuted", "not measurable": "not measurable"}


def _check_row(c: dict[str, Any], extra_class: str = "") -> str:
    e = html.escape
    v = str(c.get("verdict", ""))
    kind = "paper claim" if c.get("kind") == "paper-claim" else ""
    return (
        f"<tr class='{ROW_CLASS.get(v, 'fail')}{extra_class}' id='{e(str(c.get('key')))}'>"
        f"<td class='claim'>{e(str(c.get('claim')))}<br><code>{e(str(c.get('key')))}</code> {e(kind)}</td>"
        f"<td class='num'>{e(_fmt(c.get('measured')))}</td>"
        f"<td class='num'>{e(str(c.get('expected_text', _fmt(c.get('expected')))))}</td>"
        f"<td class='num'>{e(_fmt(c.get('tolerance')))}</td>"
        f"<td class='verdict'>{e(SHOWN.get(v, v))}</td><td>{e(str(c.get('detail', '')))}</td></tr>"
    )


def _png(p: Path) -> str:
    try:
        return base64.b64encode(p.read_bytes()).decode()
    except OSError as exc:
        raise os_fault("read", p, exc) from exc


def _run_section(s: dict[str, Any], run: Path) -> tuple[str, list[dict[str, Any]]]:
    from noiseprobe.core.checks import headline, stored_verdicts

    e = html.escape
    checks = stored_verdicts(s.get("checks", []))
    by_key = {c.get("key"): c for c in checks}
    corrections = {c.get("corrected_by") for c in checks if c.get("verdict") == "refuted"}
    rows = []
    for c in checks:  # a refuted claim is shown with its correction right below it
        if c.get("key") in corrections:
            continue
        rows.append(_check_row(c))
        if c.get("verdict") == "refuted" and c.get("corrected_by") in by_key:
            rows.append(_check_row(by_key[c["corrected_by"]], " corr"))
    rows_html = "".join(rows)
    ok = s.get("ok")
    metrics = "".join(
        f"<tr><th>{e(str(k))}</th><td class='num'>{e(_fmt(v))}</td></tr>" for k, v in s.get("metrics", {}).items()
    )
    figs = "".join(
        f"<figure><img alt='{e(p.name)}' src='data:image/png;base64,{_png(p)}'>"
        f"<figcaption>{e(p.name)}</figcaption></figure>"
        for p in sorted(run.glob("*.png"))
    )
    body = (
        f"<section class='run' id='{e(run.name)}'><h2>{e(s['experiment'])}: {e(s.get('title', ''))}</h2>"
        f"<p class='meta'>preset <b>{e(s.get('preset', ''))}</b> · {s.get('seconds', 0):.1f} s · "
        f"<span class='{'ok' if ok else 'notok'}'>{e(headline(checks))}</span> · "
        f"directory <code>{e(str(run))}</code></p>"
        f"<h3>Checks</h3><table class='checks'><tr><th>claim</th><th>measured</th><th>expected</th>"
        f"<th>tolerance</th><th>verdict</th><th>detail</th></tr>{rows_html}</table>"
        f"<h3>Metrics</h3><table class='metrics'>{metrics}</table>"
        f"<h3>Figures</h3>{figs}"
        f"<details><summary>config</summary><pre>{e(json.dumps(s.get('config', {}), indent=2))}</pre></details>"
        f"</section>"
    )
    return body, checks


def write_report(
    path: Path, out: Path | None = None, title: str = "noiseprobe report", warn: Callable[[str], None] = progress.warn
) -> Path:
    """Write ``out`` (default ``path/report.html``) covering every finished run under ``path``.

    A run whose summary.json does not read or lacks a summary's fields, or whose result tables differ from
    the manifest in it (damaged, missing), is left out with one warning naming the file (``noiseprobe
    reproduce`` on it re-analyses it from its chunks); RunDirError (one line naming each) if none is left,
    or if ``out`` cannot be written.
    """
    from noiseprobe.core.checks import headline

    out = Path(out) if out is not None else Path(path) / "report.html"
    sections, every, runs, left_out = [], [], [], []
    for r in find_runs(Path(path)):
        try:
            if (r / "summary.json").exists():
                summary = read_summary(r / "summary.json")
                faults = RunDir(r).table_faults(summary, ("results",))
                if faults:
                    raise RunDirError(f"{r} is damaged: {'; '.join(faults)}")
                body, checks = _run_section(summary, r)
                every += checks
            else:
                body = _monitor_section(r)
        except RunDirError as exc:
            left_out.append(str(exc))
            continue
        sections.append(body)
        runs.append(r)
    fix = "`noiseprobe reproduce` on a run directory re-analyses it from its chunks"
    if not runs:  # one line: what is wrong with each
        raise RunDirError(f"nothing to report: {'; '.join(left_out)} ({fix})")
    for msg in left_out:
        warn(f"{msg}; run left out of the report ({fix})")
    toc = "".join(f"<li><a href='#{html.escape(r.name)}'>{html.escape(r.name)}</a></li>" for r in runs)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='summary'>{len(runs)} run(s): <b>{html.escape(headline(every))}</b>. Refuted (amber): "
        f"a paper's printed formula that docs/theory shows wrong, beside the corrected predictor that "
        f"passes.</p>"
        f"<ul>{toc}</ul>{''.join(sections)}</body></html>"
    )
    atomic_write(out, page.encode("utf-8"))
    return out

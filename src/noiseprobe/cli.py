"""The ``noiseprobe`` command: list, reproduce, demo, report.

Every invalid argument or config value ends in one line on stderr naming the field, the value and what is
allowed, exit status 2, and nothing written (docs/failures.md lists every failure class). A numerical
failure exits 3, an unusable run directory or output path 4 (one line naming the path and the OS reason);
SIGINT exits 130 and SIGTERM 143, both keeping the finished chunks for a resume.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from noiseprobe._version import __version__
from noiseprobe.core.errors import (
    CONFIG_EXIT,
    NUMERICAL_EXIT,
    RUNDIR_EXIT,
    ConfigError,
    NumericalError,
    RunDirError,
)

PRESETS = ("quick", "full")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``field=value`` pairs; values are JSON (numbers, true/false, lists) or else plain strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", item, "FIELD=VALUE, e.g. --set n_seeds=16")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", help="local (process pool, default) or ray")
    p.add_argument(
        "--address", default=None, help="with --executor ray: join this cluster (default: start a local one)"
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: number of CPU cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="noiseprobe",
        description="Noise in gradient-descent training: reproduce the figures and "
        "tables of three papers, and probe your own models.",
    )
    p.add_argument("--version", action="version", version=f"noiseprobe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    sub.add_parser("list", help="the reproducible experiments, one line each")
    r = sub.add_parser("reproduce", help="run one experiment into a run directory")
    r.add_argument("id", help="experiment id (see `noiseprobe list`) or module:Class of your own Experiment")
    r.add_argument("--preset", default="quick", help="quick (minutes, embedded data) or full (the paper's settings)")
    r.add_argument("--out", type=Path, default=None, help="run directory (default runs/ID-PRESET)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one config field (repeatable)",
    )
    r.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset files a full preset needs")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything and print the memory/time estimate; write nothing, run nothing",
    )
    r.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 unless the run is ok (no check failed, every reproduction check measurable)",
    )
    _run_args(r)
    d = sub.add_parser("demo", help="quick runs, one or more per paper, and an HTML report")
    d.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    _run_args(d)
    rep = sub.add_parser("report", help="write DIR/report.html from finished run directories")
    rep.add_argument("dir", type=Path, help="a run directory or a folder of run directories")
    rep.add_argument("--out", type=Path, default=None, help="HTML file (default DIR/report.html)")
    return p


def _cmd_list() -> int:
    from noiseprobe import experiments

    width = max(map(len, experiments.REGISTRY))
    for exp_id, (_, _, desc) in experiments.REGISTRY.items():
        mark = "" if experiments.available(exp_id) else "  [not available in this build]"
        print(f"{exp_id:<{width}}  {desc}{mark}")
    return 0


def _workers(args: argparse.Namespace) -> int:
    from noiseprobe.core.runner import default_workers

    return args.workers if args.workers is not None else default_workers()


MARK = {"pass": "pass", "refuted": "refuted", "fail": "FAIL", "not measurable": "n/m"}


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from noiseprobe.core.checks import headline

    checks = summary.get("checks", [])
    print(f"{summary['experiment']} ({summary['preset']}): {summary['seconds']:.1f} s, {headline(checks)} -> {out}")
    for c in checks:
        fix = f" (corrected by {c['corrected_by']})" if c.get("verdict") == "refuted" else ""
        print(
            f"  [{MARK.get(c.get('verdict', ''), '?')}] {c['key']}: {c['claim']}: measured {c['measured']}, "
            f"expected {c.get('expected_text', c['expected'])} (tolerance {c['tolerance']}){fix}"
        )


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from noiseprobe.core.runner import execute, get_experiment, prepare
    from noiseprobe.core.validation import check_choice

    check_choice("--preset", args.preset, PRESETS)
    overrides = _parse_set(args.overrides)
    if args.data_dir is not None:
        if "data_dir" not in get_experiment(args.id).presets.get(args.preset, {}):
            raise ConfigError(
                "--data-dir", str(args.data_dir), f"only for experiments that read dataset files ({args.id} does not)"
            )
        overrides["data_dir"] = str(args.data_dir)
    out = args.out if args.out is not None else Path("runs") / f"{args.id.replace(':', '-')}-{args.preset}"
    plan = prepare(args.id, args.preset, out, overrides, args.executor, _workers(args), args.address)
    if args.dry_run:
        print("\n".join(plan.describe()))
        return 0
    summary = execute(plan, quiet=args.quiet)
    _print_summary(summary, out)
    return 1 if args.strict and not summary.get("ok", False) else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from noiseprobe import experiments
    from noiseprobe.core.report import write_report
    from noiseprobe.core.runner import run_experiment
    from noiseprobe.monitor import plots  # noqa: F401  (registers the monitor log figures)

    for exp_id in experiments.DEMO:
        if not experiments.available(exp_id):
            print(f"{exp_id}: not available in this build, skipped", file=sys.stderr)
            continue
        summary = run_experiment(
            exp_id, "quick", args.out / exp_id, None, args.executor, _workers(args), args.address, quiet=args.quiet
        )
        _print_summary(summary, args.out / exp_id)
    report = write_report(args.out, title="noiseprobe demo")
    print(f"report: {report.resolve()}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from noiseprobe.core.report import write_report
    from noiseprobe.monitor import plots  # noqa: F401  (registers the monitor log figures)

    print(write_report(args.dir, args.out))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like SIGINT so that workers end and finished chunks are kept."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while the command runs."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (an embedding application): leave its handler alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _sigterm_as_interrupt():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "reproduce":
            return _cmd_reproduce(args)
        if args.command == "demo":
            return _cmd_demo(args)
        return _cmd_report(args)
    except ConfigError as exc:
        print(f"noiseprobe: error: {exc}", file=sys.stderr)
        return CONFIG_EXIT
    except NumericalError as exc:
        print(f"noiseprobe: numerical failure: {exc}", file=sys.stderr)
        return NUMERICAL_EXIT
    except RunDirError as exc:
        print(f"noiseprobe: error: {exc}", file=sys.stderr)
        return RUNDIR_EXIT
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"noiseprobe: {what}; finished chunks are kept; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())

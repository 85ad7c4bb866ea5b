"""The ``tillwatch`` command.

Every flag can also be set through the environment variable shown in ``--help``. The
project's own errors print as ``error: message`` with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tillwatch import config as config_module
from tillwatch.errors import TillwatchError

ROLES = ("all", "collector", "sink", "detector", "notifier")


def _env_default(parser: argparse.ArgumentParser, flag: str, env: str, **kwargs: Any) -> None:
    """Add ``flag`` whose default comes from ``env``, and say so in the help text."""
    help_text = f"{kwargs.pop('help', '')} [env: {env}]"
    parser.add_argument(
        flag, default=os.environ.get(env, kwargs.pop("default", None)), help=help_text, **kwargs
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: run, config, replay, demo and bench."""
    parser = argparse.ArgumentParser(prog="tillwatch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the pipeline (every stage, or one role)")
    _env_default(
        run, "--config", "TILLWATCH_CONFIG", help="tillwatch.toml; none = embedded defaults"
    )
    _env_default(
        run,
        "--role",
        "TILLWATCH_ROLE",
        default="all",
        choices=ROLES,
        help="which stage to run: all, or one to scale out over Kafka",
    )
    _env_default(
        run,
        "--duration",
        "TILLWATCH_DURATION",
        type=float,
        help="stop (draining) after this many seconds; default: until SIGTERM",
    )
    run.set_defaults(handler=_run)

    cfg = commands.add_parser("config", help="check or show the configuration")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_commands.add_parser("check", help="validate FILE and list every error")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_config_check)
    show = cfg_commands.add_parser(
        "show", help="print the effective configuration, secrets masked"
    )
    _env_default(show, "--config", "TILLWATCH_CONFIG", help="tillwatch.toml; none = defaults")
    show.set_defaults(handler=_config_show)

    _add_extra_commands(commands)
    return parser


def _add_extra_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands whose modules are heavy are imported only when they run."""
    replay = commands.add_parser("replay", help="run the pipeline over recorded samples")
    replay.add_argument("file", type=Path, help="JSON lines (.jsonl) or CSV (.csv) samples")
    _env_default(
        replay,
        "--out",
        "TILLWATCH_OUT",
        default="tillwatch-data/replay",
        help="folder for anomalies, incidents and alerts as JSON lines",
    )
    _env_default(
        replay,
        "--speed",
        "TILLWATCH_SPEED",
        type=float,
        default=0.0,
        help="N times real time; 0 = as fast as possible",
    )
    _env_default(replay, "--config", "TILLWATCH_CONFIG", help="tillwatch.toml; none = defaults")
    replay.set_defaults(handler=_replay)

    demo = commands.add_parser("demo", help="simulate a week with incidents and score it")
    _env_default(
        demo,
        "--seed",
        "TILLWATCH_SEED",
        type=int,
        default=7,
        help="seed of the simulated estate",
    )
    _env_default(
        demo,
        "--out",
        "TILLWATCH_OUT",
        default="tillwatch-data/demo",
        help="folder for anomalies, incidents and alerts as JSON lines",
    )
    _env_default(demo, "--config", "TILLWATCH_CONFIG", help="tillwatch.toml; none = defaults")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="NAME")
    nab = bench_commands.add_parser("nab", help="score the detectors on the Numenta benchmark")
    _env_default(
        nab,
        "--data",
        "TILLWATCH_NAB_DATA",
        default="../shared/data/nab",
        help="NAB folder with data/ and labels/",
    )
    _env_default(
        nab,
        "--out",
        "TILLWATCH_NAB_OUT",
        default="tillwatch-data/nab",
        help="where NAB-format result files are written",
    )
    nab.set_defaults(handler=_bench_nab)


def _run(args: argparse.Namespace) -> int:
    from tillwatch import runner

    settings = config_module.load(Path(args.config) if args.config else None)
    duration = float(args.duration) if args.duration else None
    return runner.run(settings, role=args.role, duration=duration)


def _config_check(args: argparse.Namespace) -> int:
    config_module.load(args.file)
    print(f"{args.file}: ok")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    settings = config_module.load(Path(args.config) if args.config else None)
    print(json.dumps(config_module.redacted(settings), indent=2))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pipeline.replay import Pacer, read_recording
    from tillwatch import logs, offline

    settings = config_module.load(Path(args.config) if args.config else None)
    logs.setup(settings.telemetry.log_level, settings.telemetry.log_format)
    chunks = read_recording(args.file)
    run = offline.replay(
        settings,
        chunks,
        Path(args.out),
        pacer=Pacer(float(args.speed)),
        progress=sys.stderr.isatty(),
    )
    print(
        f"{run.samples:,} samples replayed in {run.seconds:.1f}s: {len(run.anomalies):,} "
        f"anomalies, {len(run.alert_events):,} alert events, {run.rejected:,} lines "
        f"dead-lettered -> {args.out}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tillwatch import logs, offline

    settings = config_module.load(Path(args.config) if args.config else None)
    logs.setup("WARNING", settings.telemetry.log_format)
    report = offline.demo(settings, Path(args.out), seed=int(args.seed))
    print(report.render())
    return 0


def _bench_nab(args: argparse.Namespace) -> int:
    from detectors import nab

    report = nab.run_nab(Path(args.data), Path(args.out), progress=sys.stderr.isatty())
    print(nab.format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tillwatch`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TillwatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

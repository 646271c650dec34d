"""The platform on one machine, from the command line (what the Makefile runs):

    python -m stacks.local up [--detach] [--no-demo-data] [--port 8080] [--processes product=2]
    python -m stacks.local status [--json]
    python -m stacks.local backup [--type full|incr|diff]
    python -m stacks.local restore (--target-time 2026-12-06T10:15:00Z | --latest)
    python -m stacks.local down

``up`` runs in the foreground until Ctrl-C (or ``down`` from elsewhere) and then stops
everything; with ``--detach`` it starts a runner in its own session, follows its progress,
prints the status table once everything is ready and returns. Every command takes
``--state-dir`` (default ``.local/`` in the checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from components.conf.haproxy import RateLimit
from stacks.gateway import SERVER_MAXCONN
from stacks.local.backups import BackupTool
from stacks.local.platform import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_METRICS_PORT,
    DEMO_PRODUCTS,
    FULL_EVERY,
    RESTORE_REQUEST,
    RESTORE_RESULT,
    LocalPlatform,
    PlatformConfig,
)
from stacks.local.process import LocalPlatformError, make_dir, recorded_processes
from stacks.local.state import (
    DEFAULT_STATE_DIR,
    ROOT,
    RUNNER_LOG,
    TIER_DIR,
    prepare_state_dir,
    probe,
    read_json,
    read_state,
    runner_alive,
    stop_platform,
    summary,
    write_json,
)
from stacks.services import SERVICE_TABLE

NOT_RUNNING = 3  # `status` exit code when nothing runs (as LSB init scripts use it)
_SERVICES = [s.name for s in SERVICE_TABLE if s.image == "service"]


def _processes(text: str) -> dict[str, int]:
    """``2`` (every service) or ``product=3,order=2`` (the rest keep their defaults)."""
    try:
        if text.isdigit():
            return dict.fromkeys(_SERVICES, int(text))
        counts = PlatformConfig().processes | {}
        for item in filter(None, text.split(",")):
            name, _, count = item.partition("=")
            counts = {**counts, name.strip(): int(count)}
        return dict(counts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or service=count,... (services: {', '.join(_SERVICES)})"
        ) from None


def _service_env(text: str) -> tuple[str, str, str]:
    """``payment:VELOCITY_LIMIT=1000`` -> (service, variable, value)."""
    service, _, assignment = text.partition(":")
    name, eq, value = assignment.partition("=")
    if not (service and name and eq) or not name.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError("expected SERVICE:VARIABLE=VALUE")
    return service.strip(), name.strip().upper(), value


def _moment(text: str) -> datetime:
    """An ISO 8601 time with its offset (``Z`` for UTC): a restore target is never ambiguous."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-12-06T10:15:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z (UTC) or an offset such as +01:00"
        )
    return moment


def _port(text: str) -> int | None:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535 (0: any free port)")
    return port or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stacks.local", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the platform (foreground; --detach to return)")
    down = commands.add_parser("down", help="stop everything `up` started")
    status = commands.add_parser("status", help="what runs, where, and whether it answers")
    backup = commands.add_parser("backup", help="take a backup of the running platform now")
    restore = commands.add_parser(
        "restore", help="restore the platform's database to a point in time"
    )
    for command in (up, down, status, backup, restore):
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    backup.add_argument("--type", choices=("full", "incr", "diff"), default="full")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target-time",
        type=_moment,
        metavar="TIME",
        help="ISO 8601 with its offset, e.g. 2026-12-06T10:15:00Z",
    )
    target.add_argument(
        "--latest", action="store_true", help="the last moment archived (a few seconds ago)"
    )
    restore.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for it")
    up.add_argument("--detach", action="store_true", help="return once everything is ready")
    up.add_argument("--no-demo-data", action="store_true", help="no catalog, no demo users")
    up.add_argument("--products", type=int, default=DEMO_PRODUCTS, help="demo catalog size")
    up.add_argument("--port", type=_port, default=DEFAULT_GATEWAY_PORT, help="gateway (0: any)")
    up.add_argument("--metrics-port", type=_port, default=DEFAULT_METRICS_PORT)
    up.add_argument(
        "--processes",
        type=_processes,
        default=None,
        help="processes per service: N for all, or e.g. product=2,order=2 (default product=2)",
    )
    up.add_argument(
        "--rate-limit",
        type=int,
        default=RateLimit().requests,
        metavar="N",
        help=f"gateway: requests per {RateLimit().window_s} s per client address (0: no limit)",
    )
    up.add_argument(
        "--server-maxconn",
        type=int,
        default=SERVER_MAXCONN,
        metavar="N",
        help="gateway: requests in flight per service process, the rest queue (0: no cap)",
    )
    up.add_argument(
        "--service-env",
        type=_service_env,
        action="append",
        default=[],
        metavar="SERVICE:VAR=VALUE",
        help="extra environment for a service's processes (repeatable)",
    )
    up.add_argument("--partition-interval", type=float, default=3600.0, metavar="SECONDS")
    up.add_argument(
        "--backup-interval",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help=f"a backup this often (the first at start; every {FULL_EVERY}th full; 0: none)",
    )
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to get ready")
    up.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)
    down.add_argument("--timeout", type=float, default=90.0)
    status.add_argument("--json", action="store_true", help="the state and probes as JSON")
    return parser


def _config(args: argparse.Namespace) -> PlatformConfig:
    return PlatformConfig(
        **({"processes": args.processes} if args.processes is not None else {}),
        demo_products=0 if args.no_demo_data else args.products,
        gateway_port=args.port,
        metrics_port=args.metrics_port,
        partition_interval_s=args.partition_interval,
        backup_interval_s=args.backup_interval or None,
        start_timeout_s=args.timeout,
        rate_limit=RateLimit(requests=args.rate_limit) if args.rate_limit > 0 else None,
        service_env=_env_by_service(args.service_env),
        server_maxconn=args.server_maxconn or None,
    )


def _env_by_service(items: list[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for service, name, value in items:
        found.setdefault(service, {})[name] = value
    return found


def _say(text: str) -> None:
    print(text, flush=True)


# --- up ---------------------------------------------------------------------------------------


def _run(state_dir: Path, config: PlatformConfig, *, daemon: bool = False) -> int:
    """Start, print the table, supervise until a signal, stop. The runner itself."""
    stop = threading.Event()
    starting = [True]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if starting[0]:
            starting[0] = False  # a second signal while stopping changes nothing
            raise KeyboardInterrupt
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    platform = LocalPlatform(state_dir, config)
    _say(f"starting the platform in {state_dir} (runner pid {os.getpid()})")
    try:
        platform.start(progress=_say)
    except KeyboardInterrupt:
        _say("interrupted: everything that had started is stopped")
        return 130
    if not starting[0]:  # a signal arrived just as start() returned
        stop.set()
    starting[0] = False
    state = read_state(state_dir)
    if daemon:  # the `up --detach` that started us prints the table
        _say(f"ready: {platform.gateway_url}; `make down` stops everything")
    elif state is not None:
        _say(summary(state, state_dir))
        _say("running; Ctrl-C or `make down` stops everything, `make status` shows it")
    try:
        platform.run(stop, log=_say)
    finally:
        _say("stopping ...")
        platform.stop()
        _say("stopped: no process of the platform is left running")
    return 0


def _detach(args: argparse.Namespace, state_dir: Path, config: PlatformConfig) -> int:
    """Start the runner in its own session, follow its log until it is ready or fails."""
    LocalPlatform(state_dir, config)  # the checks only (programs, ports): fail fast, here
    make_dir(state_dir, mode=0o711)
    log_path = state_dir / RUNNER_LOG
    argv = [
        sys.executable,
        "-m",
        "stacks.local",
        "up",
        "--daemon",
        "--state-dir",
        str(state_dir),
        "--port",
        str(config.gateway_port or 0),
        "--metrics-port",
        str(config.metrics_port or 0),
        "--processes",
        ",".join(f"{k}={v}" for k, v in config.processes.items()),
        "--products",
        str(config.demo_products),
        "--partition-interval",
        str(config.partition_interval_s),
        "--backup-interval",
        str(config.backup_interval_s or 0),
        "--timeout",
        str(config.start_timeout_s),
        "--rate-limit",
        str(config.rate_limit.requests if config.rate_limit else 0),
        "--server-maxconn",
        str(config.server_maxconn or 0),
    ]
    for service, env in config.service_env.items():
        argv += [
            arg
            for name, value in env.items()
            for arg in ("--service-env", f"{service}:{name}={value}")
        ]
    with log_path.open("ab") as log:
        runner = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C in this terminal and its closing do not reach it
        )
    deadline = time.monotonic() + config.start_timeout_s + 60
    offset = 0
    try:
        while True:
            offset = _follow(log_path, offset)
            state = read_state(state_dir)
            if state and state.get("state") == "ready" and runner_alive(state) == runner.pid:
                _say(summary(state, state_dir))
                _say(
                    f"running in the background (runner pid {runner.pid}, log {log_path}): "
                    "`make status` shows it, `make down` stops it"
                )
                return 0
            if runner.poll() is not None:
                _follow(log_path, offset)
                _say(
                    f"error: the platform did not start; everything it started is stopped "
                    f"(log: {log_path})"
                )
                return 1
            if time.monotonic() > deadline:
                _say("error: the platform is not ready in time: stopping it")
                stop_platform(state_dir)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        _say("interrupted: stopping the platform")
        stop_platform(state_dir)
        return 130


def _follow(path: Path, offset: int) -> int:
    """Print what the runner logged since ``offset``; the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


def _up(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.absolute()
    config = _config(args)
    if not args.daemon:
        prepare_state_dir(state_dir, say=_say)
    if args.detach:
        return _detach(args, state_dir, config)
    return _run(state_dir, config, daemon=args.daemon)


# --- down, status ---------------------------------------------------------------------------------


def _down(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.absolute()
    was_running, taken = stop_platform(state_dir, args.timeout)
    _say("stopped the platform" if was_running else f"nothing was running from {state_dir}")
    if taken:
        _say(f"warning: ports of the platform are taken by other processes: {', '.join(taken)}")
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.absolute()
    state = read_state(state_dir)
    pid = runner_alive(state)
    leftovers = recorded_processes(state_dir / TIER_DIR / "processes.json")
    if state is None or (pid is None and not leftovers):
        last = f" (last state: {state['state']})" if state else ""
        if args.json:
            print(json.dumps({"state": "not running", "last": state}))
        else:
            _say(f"the platform is not running from {state_dir}{last}: `make up` starts it")
        return NOT_RUNNING
    if args.json:
        rows = [asdict(row) for row in probe(state, state_dir)]
        print(json.dumps({**state, "runner_alive": pid is not None, "rows": rows}, indent=2))
        return 0
    runner = f"runner pid {pid}" if pid else "runner gone: `make down` stops what is left"
    _say(f"platform: {state['state']} ({runner}), state in {state_dir}")
    _say(summary(state, state_dir))
    return 0


# --- backup, restore ---------------------------------------------------------------------------


def _running_state(state_dir: Path) -> dict[str, Any]:
    state = read_state(state_dir)
    if state is None or runner_alive(state) is None or state.get("state") != "ready":
        raise LocalPlatformError(f"the platform is not running from {state_dir}: `make up` first")
    return state


def _backup(args: argparse.Namespace) -> int:
    tool = BackupTool.from_state(_running_state(args.state_dir.absolute()))
    began = time.monotonic()
    _say(f"taking a {args.type} backup ...")
    backup = tool.backup(args.type)
    _say(
        f"backup {backup.label} ({backup.type}): {backup.size_bytes / 1e6:.1f} MB of data, "
        f"{backup.stored_bytes / 1e6:.1f} MB stored, in {time.monotonic() - began:.1f} s"
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    """Checked here against the recovery window first, then carried out by the runner (it
    owns every process); its report printed step by step."""
    state_dir = args.state_dir.absolute()
    tool = BackupTool.from_state(_running_state(state_dir))
    target: datetime | None = None if args.latest else args.target_time
    window = tool.window()
    if window.earliest is None:
        raise LocalPlatformError("no backup to restore from yet: take one with `make backup`")
    if target is not None and not window.earliest <= target <= datetime.now(UTC):
        raise LocalPlatformError(
            f"{target.isoformat()} is outside the recovery window: from "
            f"{window.earliest.isoformat()} (the end of the oldest backup) to now"
        )
    ask = {"id": uuid.uuid4().hex, "target": target.isoformat() if target else None}
    result_file = state_dir / RESTORE_RESULT
    result_file.unlink(missing_ok=True)
    write_json(state_dir / RESTORE_REQUEST, ask)
    _say(f"restoring to {ask['target'] or 'the latest moment archived'} (the runner does it) ...")
    deadline = time.monotonic() + args.timeout
    while True:
        result = read_json(result_file)
        if result is not None and result.get("id") == ask["id"]:
            break
        if time.monotonic() > deadline:
            raise LocalPlatformError(
                f"no answer from the runner within {args.timeout:.0f} s "
                f"(see {state_dir / RUNNER_LOG})"
            )
        time.sleep(0.5)
    if not result["ok"]:
        raise LocalPlatformError(f"restore not done: {result['error']}")
    for done in result["steps"]:
        _say(f"  {done['seconds']:>6.1f} s  {done['step']}")
    last = result["last_transaction"] or "none after the backup"
    _say(
        f"restored to {result['target']} in {result['seconds']:.1f} s: {result['orders']} "
        f"orders, the last transaction replayed: {last}; the data as it was is kept in "
        f"{result['kept']} (remove it when you no longer need it)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"up": _up, "down": _down, "status": _status, "backup": _backup}
    try:
        return {**commands, "restore": _restore}[args.command](args)
    except LocalPlatformError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # before the runner's own handling (e.g. during the checks)
        return 130


if __name__ == "__main__":
    sys.exit(main())

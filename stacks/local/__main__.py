"""The platform on one machine, from the command line (what the Makefile runs):

    python -m stacks.local up [--detach] [--no-demo-data] [--port 8080] [--processes product=2]
    python -m stacks.local status [--json]
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
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from components.conf.haproxy import RateLimit
from stacks.gateway import SERVER_MAXCONN
from stacks.local.platform import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_METRICS_PORT,
    DEMO_PRODUCTS,
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
    read_state,
    runner_alive,
    stop_platform,
    summary,
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
    for command in (up, down, status):
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"up": _up, "down": _down, "status": _status}[args.command](args)
    except LocalPlatformError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # before the runner's own handling (e.g. during the checks)
        return 130


if __name__ == "__main__":
    sys.exit(main())

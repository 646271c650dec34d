"""Running wrk against the platform, and the CPU each platform process spent meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.target import LUA, OUT, Target, say


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) each process has used, its descendants included: pgpool and
    postgres work in their children."""
    hz = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, pid in pids.items():
        own = _ticks(pid)
        if own is not None:
            seconds[name] = (own + sum(_ticks(c) or 0 for c in _children(pid))) / hz
    return seconds


def _ticks(pid: int) -> int | None:
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields_[11]) + int(fields_[12])  # utime + stime


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = []
    for child in map(int, text.split()):
        found += [child, *_children(child)]
    return found


def wrk(
    name: str,
    script: str,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    data: Path,
    target: Target | None = None,
    stop_when_threads_finish: bool = False,
    script_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run wrk with a bench script. wrk itself always runs for its whole duration, even when
    every thread has stopped; with `stop_when_threads_finish` (the flash sale: a fixed number
    of attempts) it is interrupted, as Ctrl-C would, once each thread has said it is done."""
    out = OUT / f"{name}.jsonl"
    out.unlink(missing_ok=True)
    finished = [out.with_name(f"{out.name}.done-{n}") for n in range(1, threads + 1)]
    for marker in finished:
        marker.unlink(missing_ok=True)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA / script),
        url,
    ]
    env = {
        **os.environ,
        "BENCH_LUA_DIR": str(LUA),
        "BENCH_OUT": str(out),
        "BENCH_DATA": str(data),
        **(script_env or {}),
    }
    pids = target.pids() if target else {}
    before = cpu_seconds(pids)
    began = time.time()
    say(f"{name}: wrk {' '.join(argv[1:6])} {script} for up to {int(duration)} s")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wrk_ticks = 0
    if stop_when_threads_finish:
        while proc.poll() is None and not all(m.exists() for m in finished):
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # wrk then reports and runs the scripts' done()
    try:
        stdout, _ = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
    ended = time.time()
    for marker in finished:
        marker.unlink(missing_ok=True)
    # wrk's own CPU time (it shares the machine with what it measures)
    with_ticks = os.times()
    wrk_ticks = with_ticks.children_user + with_ticks.children_system
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout.decode()[-2000:]}")
    after = cpu_seconds(pids)
    cpu = {n: (after[n] - before.get(n, 0)) / (ended - began) for n in after}
    result = report.load_wrk(out)
    result["loadavg_after"] = Path("/proc/loadavg").read_text().split(" ")[0]
    result.update(name=name, started=began, ended=ended, cpu=cpu, wrk_cpu_total=wrk_ticks)
    s = result["summary"]
    say(
        f"{name}: {result['rps']:,.0f} req/s, p50 {s['p50_us'] / 1000:.1f} ms, "
        f"p95 {s['p95_us'] / 1000:.1f} ms, p99 {s['p99_us'] / 1000:.1f} ms, "
        f"errors {result['error_rate'] * 100:.3f} %"
    )
    return result

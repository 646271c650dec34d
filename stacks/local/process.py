"""Processes of the local platform: started in their own process group, logged, stopped by PID.

Only what a ``Supervisor`` started is ever signalled. A process is known by its PID *and* its
start time in ``/proc``, so a PID the kernel handed to an unrelated program after a crash is
never touched; everything the supervisor runs is recorded in a manifest (JSON) so that another
process can stop it later (``stop_recorded``) or tell that a state directory is still in use.

Servers that refuse root (``initdb``, ``postgres``) run as another OS user through
``Popen(user=, group=, extra_groups=)``: the kernel switches the user right before ``exec``, so
the PID we hold is the server itself. ``runuser`` would stay in between as the parent: it
ignores SIGINT (PostgreSQL's fast shutdown) and turns SIGTERM into SIGTERM plus a SIGKILL two
seconds later, which can kill a postmaster in the middle of its shutdown checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import signal
import stat
import string
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_TAIL_LINES = 30


class LocalPlatformError(RuntimeError):
    """One message for the person at the keyboard: what went wrong and what to do about it."""


# --- OS users -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def named(cls, name: str) -> OsUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LocalPlatformError(
                f"the OS user {name!r} does not exist: its Debian package creates it "
                "(run `make system-packages` as root)"
            ) from None
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups)

    @classmethod
    def current(cls) -> OsUser:
        uid = os.geteuid()
        return cls(pwd.getpwuid(uid).pw_name, uid, os.getegid(), tuple(os.getgroups()))

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()

    def popen_kwargs(self) -> dict[str, object]:
        """Run a child as this user, with exactly this user's groups (never root's)."""
        if self.is_current:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def own(self, path: Path) -> None:
        if not self.is_current:
            os.chown(path, self.uid, self.gid)

    def can_search(self, directory: Path) -> bool:
        """Whether this user may traverse ``directory`` (its x permission bit)."""
        if self.uid == 0:
            return True
        st = directory.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def server_user(name: str) -> OsUser:
    """Who runs a server that refuses root: ``name`` when we are root, else ourselves."""
    return OsUser.named(name) if os.geteuid() == 0 else OsUser.current()


def write_file(path: Path, text: str, *, mode: int = 0o644, owner: OsUser | None = None) -> Path:
    """Write ``text`` with ``mode`` from the first byte on (a secret is never world-readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    if owner is not None:
        owner.own(path)
    return path


def new_password(length: int = 32) -> str:
    """Letters and digits, as the GKE stack generates them (random.RandomPassword, no specials)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def make_dir(path: Path, *, mode: int = 0o700, owner: OsUser | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None:
        owner.own(path)
    return path


# --- /proc ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stat:
    state: str
    pgrp: int
    start_ticks: int


def _stat(pid: int) -> _Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # "pid (comm) state ppid pgrp session ... starttime(22) ...": comm may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    return _Stat(state=fields[0], pgrp=int(fields[2]), start_ticks=int(fields[19]))


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """A live (not zombie) process with this PID and, if given, this start time."""
    st = _stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return start_ticks is None or st.start_ticks == start_ticks


def _group_members(pgid: int, not_before: int | None) -> list[int]:
    """Live processes of process group ``pgid`` (the group of a session we created)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        st = _stat(int(entry.name))
        if st is None or st.pgrp != pgid or st.state in ("Z", "X"):
            continue
        if not_before is not None and st.start_ticks < not_before:
            continue  # older than our leader: not one of its descendants
        members.append(int(entry.name))
    return members


# --- one process ------------------------------------------------------------------------------


@dataclass
class Process:
    """A process the supervisor started: the leader of its own session and process group."""

    name: str
    pid: int
    start_ticks: int | None
    log: Path
    stop_signal: int = signal.SIGTERM
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def running(self) -> bool:
        """Still running (an exited child of ours stays unreaped until ``_reap``)."""
        if self.popen is not None:
            if self.popen.returncode is not None:
                return False
            try:
                # WNOWAIT: look without reaping, so the PID (and its group id) stays ours.
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return False
            return info is None
        return pid_alive(self.pid, self.start_ticks)

    def exit_status(self) -> str:
        if self.popen is not None and self.popen.returncode is not None:
            return f"exit code {self.popen.returncode}"
        if self.popen is not None:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is not None:
                if info.si_code == os.CLD_EXITED:
                    return f"exit code {info.si_status}"
                return f"killed by signal {signal.Signals(info.si_status).name}"
        return "running" if self.running() else "exited"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def failure(self, what: str) -> LocalPlatformError:
        return LocalPlatformError(
            f"{what}\n--- last lines of {self.log} ({self.name}, pid {self.pid}) ---\n"
            f"{self.log_tail()}"
        )

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def wait(self, timeout: float) -> int:
        """Wait for a one-shot command to finish; its exit code (SIGKILLed after timeout)."""
        if not self.wait_exit(timeout):
            self._signal_group(signal.SIGKILL)
            self.wait_exit(5)
        self._kill_leftovers()
        return self._reap()

    def _signal(self, signum: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _signal_group(self, signum: int) -> None:
        # Safe while the leader is alive or an unreaped zombie: the group id is its PID.
        unreaped = self.popen is not None and self.popen.returncode is None
        if unreaped or self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def _kill_leftovers(self, timeout: float = 5.0) -> None:
        """SIGKILL what the leader left in its group (a script's children, a server's workers)."""
        deadline = time.monotonic() + timeout
        while members := _group_members(self.pid, self.start_ticks):
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)

    def _reap(self) -> int:
        if self.popen is None:
            return 0
        try:
            return self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return -1


# --- the supervisor -------------------------------------------------------------------------


class Supervisor:
    """Starts, waits for and stops the processes of one state directory; keeps the manifest."""

    def __init__(self, log_dir: Path, manifest: Path) -> None:
        self.log_dir = log_dir
        self.manifest = manifest
        self._processes: list[Process] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def processes(self) -> list[Process]:
        with self._lock:
            return list(self._processes)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        user: OsUser | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Process:
        """Start ``argv`` in a new session with a clean environment, output to logs/<name>.log."""
        log = self.log_dir / f"{name}.log"
        environment = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **env}
        with self._lock:
            if self._closed:
                raise LocalPlatformError(f"not starting {name}: the platform is stopping")
            with log.open("ab") as out:
                try:
                    popen = subprocess.Popen(
                        list(argv),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=environment,
                        cwd=cwd,
                        start_new_session=True,
                        **(user.popen_kwargs() if user else {}),  # type: ignore[arg-type]
                    )
                except OSError as error:
                    raise LocalPlatformError(f"cannot start {name} ({argv[0]}): {error}") from None
            st = _stat(popen.pid)
            process = Process(
                name, popen.pid, st.start_ticks if st else None, log, stop_signal, popen
            )
            self._processes.append(process)
            self._write_manifest()
        return process

    def wait_until(
        self,
        check: Callable[[], bool],
        *,
        process: Process,
        what: str,
        timeout: float,
        interval: float = 0.05,
    ) -> None:
        """Poll ``check`` until it passes; fail early if ``process`` exits, late on timeout."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if not process.running():
                raise process.failure(f"{what}: {process.name} stopped ({process.exit_status()})")
            try:
                if check():
                    return
            except Exception as error:  # a check may fail in any way while a server starts
                last_error = f" (last check: {str(error).strip() or type(error).__name__})"
            if self._closed:
                raise LocalPlatformError(f"{what}: interrupted, the platform is stopping")
            if time.monotonic() >= deadline:
                raise process.failure(f"{what}: not ready after {timeout:.0f} s{last_error}")
            time.sleep(interval)

    def stop(self, processes: Sequence[Process] | None = None, timeout: float = 20.0) -> None:
        """Stop processes (default: all) at once: their stop signal, SIGKILL after ``timeout``."""
        with self._lock:
            if processes is None:
                self._closed = True  # threads still starting things give up
            targets = list(self._processes if processes is None else processes)
        stop_processes(targets, timeout)
        with self._lock:
            self._processes = [p for p in self._processes if p not in targets]
            self._write_manifest()
        alive = [f"{p.name} (pid {p.pid})" for p in targets if p.running()]
        if alive:
            raise LocalPlatformError(f"could not stop {', '.join(alive)}")

    def forget(self, process: Process) -> None:
        """Drop a process that has exited (a finished job, a crashed server about to be
        restarted) from the list and the manifest, after reaping it."""
        if process.running():
            raise LocalPlatformError(f"{process.name} (pid {process.pid}) is still running")
        process._kill_leftovers()
        process._reap()
        with self._lock:
            self._processes = [p for p in self._processes if p is not process]
            self._write_manifest()

    def _write_manifest(self) -> None:
        records = [
            {
                "name": p.name,
                "pid": p.pid,
                "start_ticks": p.start_ticks,
                "log": str(p.log),
                "stop_signal": p.stop_signal,
            }
            for p in self._processes
        ]
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": records}, indent=2) + "\n")
        tmp.replace(self.manifest)


def stop_processes(targets: Sequence[Process], timeout: float) -> None:
    for p in targets:
        p._signal(p.stop_signal)
    deadline = time.monotonic() + timeout
    for p in targets:
        p.wait_exit(max(0.0, deadline - time.monotonic()))
    for p in targets:
        if p.running():
            p._signal_group(signal.SIGKILL)  # the leader still lives: the group is surely ours
    for p in targets:
        p.wait_exit(5)
        p._kill_leftovers()
        p._reap()


def recorded_processes(manifest: Path) -> list[Process]:
    """The processes a manifest lists that still run (same PID and start time)."""
    try:
        records = json.loads(manifest.read_text())["processes"]
    except (OSError, ValueError, KeyError):
        return []
    found = [
        Process(r["name"], r["pid"], r["start_ticks"], Path(r["log"]), r["stop_signal"])
        for r in records
    ]
    return [p for p in found if p.start_ticks is not None and p.running()]


def stop_recorded(manifest: Path, timeout: float = 20.0) -> list[Process]:
    """Stop what a manifest lists (from another process than the one that started it)."""
    targets = recorded_processes(manifest)
    stop_processes(targets, timeout)
    alive = [f"{p.name} (pid {p.pid})" for p in targets if p.running()]
    if alive:
        raise LocalPlatformError(f"could not stop {', '.join(alive)}")
    return targets

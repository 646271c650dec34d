"""pytest-timeout's signal method, plus the stack of every asyncio task in the report.

A hung async test shows, on its main thread, only the event loop waiting in select(): what
hangs is a task awaiting something (a pool that waits for a connection, a lock, a socket).
So when a test runs out of time this prints each pending task and where it waits, then lets
pytest-timeout fail the test as usual (naming it, with every thread's stack)."""

from __future__ import annotations

import asyncio
import io
import signal
import threading
from typing import Any

import pytest
import pytest_timeout


def pending_tasks() -> str:
    """Every unfinished task of the running loop and the frames it waits in."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "no event loop running\n"
    out = io.StringIO()
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    out.write(f"{len(tasks)} asyncio tasks pending:\n")
    for task in tasks:
        out.write(f"\n--- {task!r}\n")
        task.print_stack(limit=20, file=out)
    return out.getvalue()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own implementation

    def on_timeout(_signum: int, _frame: object) -> None:
        __tracebackhide__ = True
        terminal = item.config.get_terminal_writer()
        terminal.sep("+", title=f"Timeout of {item.nodeid}: asyncio tasks")
        terminal.write(pending_tasks())
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # read by pytest-timeout
    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True

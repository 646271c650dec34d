"""The suite's time limit (pyproject's `timeout`, tests/timeouts.py): a test that hangs fails
within it, named, with the asyncio task it hangs in, instead of stopping the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_hanging_async_test_fails_naming_itself_and_its_tasks(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            async def test_waits_for_ever():
                async def wait_for_a_connection():
                    await asyncio.Event().wait()  # like a pool nobody gives back
                await asyncio.create_task(wait_for_a_connection(), name="pool-waiter")
            """
        )
    )
    began = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.timeouts", str(tmp_path)),
            *("--rootdir", str(tmp_path), "-o", "asyncio_mode=auto"),
            *("-o", "timeout=2", "-o", "timeout_method=signal"),
            *("-p", "no:cacheprovider", "-p", "no:cloudcoil"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - began < 30
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "test_waits_for_ever" in result.stdout
    assert "Timeout (>2.0s)" in result.stdout
    assert "name='pool-waiter'" in result.stdout  # the task, and where it waits:
    assert "in wait_for_a_connection" in result.stdout

"""services.kit.tasks: work that must not stop halfway when its caller is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from services.kit.tasks import finish_even_if_cancelled


async def test_the_work_finishes_after_its_caller_is_cancelled() -> None:
    steps: list[str] = []
    second_step = asyncio.Event()

    async def move_money() -> str:
        steps.append("authorized")
        await asyncio.sleep(0.05)
        steps.append("recorded")
        second_step.set()
        return "done"

    caller = asyncio.create_task(finish_even_if_cancelled(move_money()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(second_step.wait(), 1)
    assert steps == ["authorized", "recorded"]


async def test_the_result_and_errors_reach_a_caller_that_stays() -> None:
    async def ok() -> int:
        return 7

    async def broken() -> None:
        raise LookupError("nope")

    assert await finish_even_if_cancelled(ok()) == 7
    with pytest.raises(LookupError):
        await finish_even_if_cancelled(broken())


async def test_an_orphaned_failure_is_logged(capsys: pytest.CaptureFixture[str]) -> None:
    async def fails_late() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("provider went away")

    caller = asyncio.create_task(finish_even_if_cancelled(fails_late()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.1)
    captured = capsys.readouterr()
    assert "work finished after its caller left, and failed" in captured.out + captured.err
    assert "provider went away" in captured.out + captured.err

"""Reading the password-reset e-mails a test's user service sent to the shipped mail sink."""

from __future__ import annotations

import asyncio
import re
import time

from services.mailsink import MailSink, Received

TOKEN = re.compile(r"^Reset token: (\S+)$", re.MULTILINE)


async def mails_to(
    sink: MailSink, address: str, count: int = 1, timeout_s: float = 20.0
) -> list[Received]:
    """The e-mails to `address`, once there are `count` of them (AssertionError after
    `timeout_s`: the relay, the consumer group or SMTP did not bring them)."""
    deadline = time.monotonic() + timeout_s
    while len(found := sink.to(address)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(found)} of {count} e-mails to {address} reached the sink in {timeout_s} s"
            )
        await asyncio.sleep(0.05)
    return found


def token_of(mail: Received) -> str:
    found = TOKEN.search(mail.text)
    assert found, f"no reset token in the e-mail: {mail.text!r}"
    return found.group(1)

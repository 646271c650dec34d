"""Password-reset e-mails: a consumer group on the reset events, sending over SMTP.

Every user process is a member of the `user-mailer` group on `user.password_reset`. For each
event the mailer rebuilds the token from the reset id (`services.user.accounts`), checks that
the reset still wants an e-mail (not mailed, used or expired), sends it, and marks it mailed.

Delivery is at least once. An SMTP failure (refused, timed out, a 4xx/5xx answer) leaves the
event pending: the group retries it after MAIL_RETRY_SECONDS, five times, then it rests in the
dead-letter stream and is re-driven every minute, 30 times (`services.kit.events.Consumer`):
about as long as the token lives, after which the mailer drops it as expired. A crash between
the mail relay's acceptance of the message and the mark (or a database failure there) sends the
e-mail twice; its Message-ID is the reset's, so a mail client shows one. One attempt, with
its wait for a free connection, is bounded by SMTP_TIMEOUT_SECONDS, which the settings keep
below MAIL_RETRY_SECONDS: no other member retries an event while it is being sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, parseaddr
from typing import Literal

import aiosmtplib
from prometheus_client import CollectorRegistry, Counter

from services.kit.events import Event
from services.kit.exports import RESET_MAILS
from services.kit.logs import get_logger
from services.user.accounts import RESET_TOPIC, Accounts, ResetMail

log = get_logger(__name__)

GROUP = "user-mailer"
TOPICS = (RESET_TOPIC,)
CONCURRENT_SENDS = 4  # SMTP connections per process at once; a batch waits for them

Security = Literal["starttls", "tls", "none"]


@dataclass(frozen=True)
class SmtpServer:
    """The relay the e-mails go through (SMTP_* settings)."""

    host: str
    port: int
    security: Security
    sender: str  # the From header: `Shop <no-reply@shop.example.com>`
    user: str | None = None
    password: str | None = None
    timeout_s: float = 10.0


def reset_message(mail: ResetMail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.email
    message["Subject"] = "Reset your password"
    message["Date"] = formatdate(localtime=False)
    # The reset's own id: a second delivery of the same e-mail is recognisably the same.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<reset-{mail.reset_id}@{domain}>"
    message.set_content(
        "Someone, hopefully you, asked to reset the password of the account of this address.\n"
        "\n"
        f"Reset token: {mail.token}\n"
        "\n"
        "Send it with your new password to POST /api/users/password-reset/confirm.\n"
        f"It works once, until {format_datetime(mail.expires_at)}.\n"
        "\n"
        "If you did not ask for this, ignore this e-mail: your password stays as it is.\n"
    )
    return message


class ResetMailer:
    def __init__(
        self, accounts: Accounts, smtp: SmtpServer, registry: CollectorRegistry | None = None
    ) -> None:
        self.accounts = accounts
        self.smtp = smtp
        self._connections = asyncio.Semaphore(CONCURRENT_SENDS)
        self.mails = Counter(
            RESET_MAILS,
            "Password-reset e-mails by result: sent, skipped (mailed, used or expired "
            "already) or failed (retried)",
            ["result"],
            registry=registry,
        )
        for result in ("sent", "skipped", "failed"):  # every series exists from the start
            self.mails.labels(result)

    async def handle(self, event: Event) -> None:
        """One reset event: send its e-mail unless it needs none. Raises when sending failed
        (the consumer group retries it)."""
        reset_id = event.payload.get("reset_id")
        if not isinstance(reset_id, str):  # an event of the old form (migration 0005)
            log.warning("reset event without a reset id: skipped", key=event.key)
            self.mails.labels("skipped").inc()
            return
        mail = await self.accounts.reset_to_mail(reset_id)
        if mail is None:
            log.info("reset e-mail not needed: mailed, used or expired", key=event.key)
            self.mails.labels("skipped").inc()
            return
        try:
            await self.send(reset_message(mail, self.smtp.sender))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            self.mails.labels("failed").inc()
            log.warning(
                "reset e-mail not sent: retried later",
                key=event.key,
                attempt=event.deliveries,
                error=f"{type(error).__name__}: {error}",
            )
            raise
        await self.accounts.reset_mailed(mail)
        self.mails.labels("sent").inc()
        log.info("reset e-mail sent", key=event.key, attempt=event.deliveries)

    async def send(self, message: EmailMessage) -> None:
        smtp = self.smtp
        async with asyncio.timeout(smtp.timeout_s), self._connections:
            await aiosmtplib.send(
                message,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.user,
                password=smtp.password,
                use_tls=smtp.security == "tls",
                start_tls=smtp.security == "starttls",
                timeout=smtp.timeout_s,
            )

"""A stand-in for the outside mail relay: a real SMTP server (aiosmtpd) that keeps what it
receives and shows it over HTTP, shipped so password-reset e-mails can be sent, and read, with
no account anywhere:

    python -m services.mailsink --port 2525 --http-port 2526 [--user shop --password-file F]

With `--user`, it wants SMTP AUTH (PLAIN or LOGIN) with that user and the password in the
file, as a real relay does; over plain text, because it only listens on loopback. It accepts
every message for every recipient and delivers none.

    GET    /messages[?to=ADDRESS]   {"messages": [{"id", "from", "to", "subject",
                                     "message_id", "text", "received_at"}, ...]}, oldest first
    DELETE /messages                forget them

It keeps the last MAX_MESSAGES in memory: a restarted sink starts empty.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import hmac
import itertools
import logging
import signal
import warnings
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
MAX_MESSAGES = 10_000
SERVER_NAME = "mailsink.local"  # the EHLO name (socket.getfqdn() may wait on DNS)
SMTP_TIMEOUT_S = 30.0  # an idle client is dropped after this
# aiosmtpd logs a warning for every AUTH without TLS and every login (a deprecated attribute).
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Received:
    id: int
    sender: str
    to: list[str]
    subject: str
    message_id: str
    text: str
    received_at: str

    def view(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("sender")
        return data


class MailSink:
    """The messages, the SMTP handler that stores them, and the HTTP app that lists them."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        if (user is None) != (password is None):
            raise ValueError("a user needs a password, and a password a user")
        self.user, self.password = user, password
        self.messages: deque[Received] = deque(maxlen=MAX_MESSAGES)
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self.port: int | None = None  # where SMTP listens, once started

    # --- SMTP -----------------------------------------------------------------------------

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        parsed = email.message_from_bytes(
            raw if isinstance(raw, bytes) else raw.encode(), policy=email.policy.default
        )
        body = parsed.get_body(("plain",))
        self.messages.append(
            Received(
                id=next(self._ids),
                sender=envelope.mail_from or "",
                to=list(envelope.rcpt_tos),
                subject=str(parsed.get("Subject", "")),
                message_id=str(parsed.get("Message-ID", "")),
                text=body.get_content().replace("\r\n", "\n") if body is not None else "",
                received_at=datetime.now(UTC).isoformat(),
            )
        )
        return "250 OK: kept, delivered nowhere"

    def _authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        assert self.user is not None and self.password is not None
        ok = (
            isinstance(data, LoginPassword)
            and hmac.compare_digest(data.login, self.user.encode())
            and hmac.compare_digest(data.password, self.password.encode())
        )
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    def protocol(self) -> SMTP:
        auth = self.user is not None
        with warnings.catch_warnings():
            # AUTH without TLS is the point here (loopback only): no warning per connection.
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(
                self,
                hostname=SERVER_NAME,
                timeout=SMTP_TIMEOUT_S,
                authenticator=self._authenticate if auth else None,
                auth_required=auth,
                auth_require_tls=False,
            )

    async def start_smtp(self, host: str = HOST, port: int = 0) -> int:
        """Listen for SMTP (again, after `stop_smtp`); the port it listens on."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop_smtp(self) -> None:
        """Stop listening (as a relay that is down: connections are refused); keep the mail."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.to]

    # --- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/messages", self._list)
        app.router.add_delete("/messages", self._clear)
        return app

    async def _list(self, request: web.Request) -> web.Response:
        address = request.query.get("to")
        found = self.to(address) if address else list(self.messages)
        return web.json_response({"messages": [m.view() for m in found]})

    async def _clear(self, _request: web.Request) -> web.Response:
        self.messages.clear()
        return web.json_response({"messages": []})


async def _serve(sink: MailSink, port: int, http_port: int) -> None:
    runner = web.AppRunner(sink.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, http_port).start()
    await sink.start_smtp(HOST, port)
    print(f"mail sink: SMTP on {HOST}:{port}, messages on http://{HOST}:{http_port}/messages")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for received in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(received, stop.set)
    try:
        await stop.wait()
    finally:
        await sink.stop_smtp()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.mailsink", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="SMTP port")
    parser.add_argument("--http-port", type=int, required=True, help="port of GET /messages")
    parser.add_argument("--user", help="require SMTP AUTH as this user")
    parser.add_argument("--password-file", type=Path, help="the password --user must give")
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password_file is None):
        parser.error("--user and --password-file go together")
    password = args.password_file.read_text().strip() if args.password_file else None
    asyncio.run(_serve(MailSink(args.user, password), args.port, args.http_port))


if __name__ == "__main__":
    main()

"""A stand-in for the receivers Alertmanager notifies (PagerDuty for critical alerts, Slack for
warnings): it keeps every webhook notification it gets and shows them over HTTP, so the local
platform's alerts can be read, and tested, with no account anywhere:

    python -m services.alertsink --port 9095

    POST /pager, /chat          Alertmanager's webhook payload (version 4): kept as received
    GET  /notifications[?receiver=pager|chat&alertname=NAME]
                                {"notifications": [{"receiver", "status", "alerts":
                                  [{"alertname", "status", "labels", "startsAt", "endsAt"}],
                                  "received_at"}, ...]}, oldest first
    DELETE /notifications       forget them

It keeps the last MAX_NOTIFICATIONS in memory: a restarted sink starts empty.
"""

from __future__ import annotations

import argparse
from collections import deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
MAX_NOTIFICATIONS = 10_000
RECEIVERS = ("pager", "chat")


class AlertSink:
    def __init__(self) -> None:
        self.notifications: deque[dict[str, Any]] = deque(maxlen=MAX_NOTIFICATIONS)

    def app(self) -> web.Application:
        app = web.Application()
        for receiver in RECEIVERS:
            app.router.add_post(f"/{receiver}", self._receiver(receiver))
        app.router.add_get("/notifications", self.list)
        app.router.add_delete("/notifications", self.forget)
        return app

    def _receiver(self, receiver: str):  # type: ignore[no-untyped-def]
        async def receive(request: web.Request) -> web.Response:
            try:
                payload = await request.json()
                alerts = [
                    {
                        "alertname": alert["labels"].get("alertname", ""),
                        "status": alert["status"],
                        "labels": alert["labels"],
                        "startsAt": alert.get("startsAt"),
                        "endsAt": alert.get("endsAt"),
                    }
                    for alert in payload["alerts"]
                ]
                status = payload["status"]
            except (ValueError, KeyError, TypeError, AttributeError):
                return web.json_response(
                    {"error": "expected Alertmanager's webhook payload"}, status=400
                )
            self.notifications.append(
                {
                    "receiver": receiver,
                    "status": status,
                    "alerts": alerts,
                    "received_at": datetime.now(UTC).isoformat(),
                }
            )
            return web.json_response({"status": "received"})

        return receive

    async def list(self, request: web.Request) -> web.Response:
        receiver = request.query.get("receiver")
        name = request.query.get("alertname")
        found = [
            n
            for n in self.notifications
            if (receiver is None or n["receiver"] == receiver)
            and (name is None or any(a["alertname"] == name for a in n["alerts"]))
        ]
        return web.json_response({"notifications": found})

    async def forget(self, _request: web.Request) -> web.Response:
        self.notifications.clear()
        return web.json_response({"status": "forgotten"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.alertsink", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(AlertSink().app(), host=HOST, port=args.port, shutdown_timeout=1.0, print=None)


if __name__ == "__main__":
    main()

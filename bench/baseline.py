"""The framework's ceiling: a bare aiohttp JSON endpoint, one process, as a service runs.

    python -m bench.baseline --port N

``GET /json`` answers a small JSON document and returns the request's ``X-Request-ID`` (as the
gateway does), so the load generator's per-second accounting works the same way here. No
middleware, no logging, no metrics: what aiohttp itself costs per request on this machine.
"""

from __future__ import annotations

import argparse

from aiohttp import web

BODY = b'{"id":42,"sku":"SKU-000041","name":"bare aiohttp","price_cents":22481,"currency":"USD"}'


async def handle(request: web.Request) -> web.Response:
    headers = {"X-Request-ID": request.headers.get("X-Request-ID", "-")}
    return web.Response(body=BODY, content_type="application/json", headers=headers)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/json", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

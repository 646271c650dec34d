"""The gateway's haproxy.cfg for given routes; ``haproxy -c`` accepts it when HAProxy is here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.conf.haproxy import (
    DnsServers,
    GatewayTimeouts,
    RateLimit,
    Route,
    StaticServers,
    haproxy_cfg,
)

KEY = "GATEWAY_JWT_KEY"


def local_routes() -> list[Route]:
    return [
        Route("user", "users", StaticServers((("127.0.0.1", 19001),)), timeout_ms=3000),
        Route(
            "order",
            "orders",
            StaticServers((("127.0.0.1", 19002), ("127.0.0.1", 19003))),
            auth=True,
        ),
        Route("user-me", "users/me", StaticServers((("127.0.0.1", 19004),)), auth=True),
    ]


def k8s_routes() -> list[Route]:
    svc = "{}.shop.svc.cluster.local"
    return [
        Route("user", "users", DnsServers(svc.format("user"), 8080, slots=10)),
        Route("product", "products", DnsServers(svc.format("product"), 8080, slots=20)),
        Route("order", "orders", DnsServers(svc.format("order")), auth=True),
        Route(
            "payment", "payments", DnsServers(svc.format("payment")), auth=True, timeout_ms=15000
        ),
        Route("inventory", "inventory", DnsServers(svc.format("inventory"))),
    ]


def section(cfg: str, header: str) -> list[str]:
    """Lines of one section (``frontend gateway``, ``backend be_user``...), stripped."""
    out: list[str] = []
    inside = False
    for line in cfg.splitlines():
        if line and not line.startswith(" "):
            inside = line == header
            continue
        if inside and line.strip() and not line.strip().startswith("#"):
            out.append(line.strip())
    assert out, f"no section {header!r}"
    return out


def test_local_frontend_routes_limits_and_request_id() -> None:
    cfg = haproxy_cfg(
        local_routes(),
        jwt_key_env=KEY,
        port=18080,
        metrics_port=18404,
        rate_limit=RateLimit(20, 10),
    )
    fe = section(cfg, "frontend gateway")
    assert fe[0] == "bind 127.0.0.1:18080"
    assert "monitor-uri /healthz" in fe
    assert "option http-buffer-request" in fe
    assert "acl route_user path /api/users" in fe
    assert "acl route_user path_beg /api/users/" in fe
    assert "acl route_user_me path_beg /api/users/me/" in fe
    # Longest prefix first: /api/users/me must not fall into /api/users.
    uses = [line for line in fe if line.startswith("use_backend")]
    assert uses == [
        "use_backend be_user-me if route_user_me",
        "use_backend be_order if route_order",
        "use_backend be_user if route_user",
    ]
    assert fe[-1] == "default_backend be_not_found"
    assert "http-request set-var(txn.client_ip) src" in fe
    assert "http-request track-sc0 var(txn.client_ip)" in fe
    assert "stick-table type ipv6 size 200000 expire 20s store http_req_rate(10s)" in fe
    assert any("deny_status 429" in x and "sc_http_req_rate(0) gt 20" in x for x in fe)
    assert any("Retry-After 10" in x for x in fe)
    assert any("deny_status 413" in x and "req.body_size gt 1048576" in x for x in fe)
    assert any("deny_status 411" in x and "transfer-encoding" in x for x in fe)
    assert any(x.startswith("http-request set-var(txn.request_id) uuid()") for x in fe)
    assert "http-request set-header X-Request-ID %[var(txn.request_id)]" in fe
    assert any(x.startswith("http-after-response set-header X-Request-ID") for x in fe)


def test_rules_run_in_order_request_id_first() -> None:
    fe = section(haproxy_cfg(local_routes(), jwt_key_env=KEY), "frontend gateway")
    rules = [x for x in fe if x.startswith("http-request")]
    first = {
        k: next(i for i, x in enumerate(rules) if k in x)
        for k in (
            "set-var(txn.request_id)",
            "set-var(txn.client_ip)",
            "set-header X-Forwarded-For",
            "track-sc0",
            "deny_status 429",
            "deny_status 413",
            "deny_status 401",
        )
    }
    assert list(first.values()) == sorted(first.values())


def test_jwt_rules_cover_exactly_the_auth_routes() -> None:
    cfg = haproxy_cfg(local_routes(), jwt_key_env=KEY)
    fe = section(cfg, "frontend gateway")
    assert "http-request set-var(txn.needs_token) bool(1) if route_user_me || route_order" in fe
    # The key is a variable HAProxy expands at load time, never a value in the file.
    assert f'acl jwt_signed http_auth_bearer,jwt_verify("HS256","${{{KEY}}}") -m int 1' in fe
    assert any("jwt_header_query('$.alg') -m str HS256" in x for x in fe)
    assert any("jwt_payload_query('$.type') -m str access" in x for x in fe)
    deny = [x for x in fe if "deny_status 401" in x]
    assert len(deny) == 1
    assert deny[0].endswith(
        "if needs_token !jwt_hs256 || needs_token !jwt_signed || needs_token !jwt_access "
        "|| needs_token !jwt_live"
    )
    assert cfg.index(f".if !defined({KEY})") < cfg.index("global")
    no_auth = haproxy_cfg([local_routes()[0]])
    assert "jwt" not in no_auth and "deny_status 401" not in no_auth


def test_static_backend_has_health_checks_and_timeout() -> None:
    cfg = haproxy_cfg(local_routes(), jwt_key_env=KEY)
    be = section(cfg, "backend be_order")
    assert "timeout server 5000ms" in be
    assert "option httpchk" in be
    assert "http-check send meth GET uri /healthz" in be
    assert "http-check expect status 200" in be
    assert "server order-1 127.0.0.1:19002 check" in be
    assert "server order-2 127.0.0.1:19003 check" in be
    assert "timeout server 3000ms" in section(cfg, "backend be_user")
    assert "resolvers" not in cfg


def test_not_found_and_metrics() -> None:
    cfg = haproxy_cfg(local_routes(), jwt_key_env=KEY, metrics_port=18404)
    nf = section(cfg, "backend be_not_found")
    assert nf[0].startswith("http-request return status 404 content-type application/json")
    assert '"error":"not_found"' in nf[0]
    metrics = section(cfg, "frontend metrics")
    assert metrics[0] == "bind 127.0.0.1:18404"
    assert "http-request use-service prometheus-exporter if { path /metrics }" in metrics
    assert "monitor-uri /healthz" in metrics


def test_k8s_uses_server_template_with_resolvers() -> None:
    cfg = haproxy_cfg(
        k8s_routes(),
        jwt_key_env=KEY,
        bind="0.0.0.0",
        metrics_bind="0.0.0.0",
        nbthread=2,
        client_ip_header="X-Forwarded-For",
    )
    assert "parse-resolv-conf" in section(cfg, "resolvers dns")
    be = section(cfg, "backend be_product")
    assert (
        "server-template product- 1-20 product.shop.svc.cluster.local:8080 check "
        "resolvers dns resolve-prefer ipv4 init-addr none"
    ) in be
    assert "timeout server 15000ms" in section(cfg, "backend be_payment")
    fe = section(cfg, "frontend gateway")
    assert fe[0] == "bind 0.0.0.0:8080"
    assert "http-request set-var(txn.client_ip) req.hdr_ip(X-Forwarded-For,-1)" in fe
    assert "nbthread 2" in section(cfg, "global")
    gclb = haproxy_cfg(
        k8s_routes(), jwt_key_env=KEY, client_ip_header="X-Forwarded-For", client_ip_occurrence=-2
    )
    assert "http-request set-var(txn.client_ip) req.hdr_ip(X-Forwarded-For,-2)" in gclb


@pytest.mark.parametrize("client_ip_header", [None, "X-Forwarded-For"])
def test_one_client_address_is_the_rate_limit_key_and_the_forwarded_header(
    client_ip_header: str | None,
) -> None:
    cfg = haproxy_cfg(local_routes(), jwt_key_env=KEY, client_ip_header=client_ip_header)
    # `option forwardfor` would append to the client's header: the first value stays forged.
    assert "forwardfor" not in cfg
    fe = section(cfg, "frontend gateway")
    setting = [x for x in fe if "set-var(txn.client_ip)" in x]
    if client_ip_header is None:
        assert setting == ["http-request set-var(txn.client_ip) src"]
    else:
        # The trusted proxy's value, else (no such header, not an IP) the TCP peer.
        assert setting == [
            "http-request set-var(txn.client_ip) req.hdr_ip(X-Forwarded-For,-1)",
            "http-request set-var(txn.client_ip) src unless { var(txn.client_ip) -m found }",
        ]
    assert "http-request track-sc0 var(txn.client_ip)" in fe
    replaced = fe.index("http-request set-header X-Forwarded-For %[var(txn.client_ip)]")
    # Read before the header is replaced, and only ever from the variable afterwards.
    assert fe.index(setting[-1]) < replaced < fe.index("http-request track-sc0 var(txn.client_ip)")
    assert "http-request del-header Forwarded" in fe
    assert "http-request del-header X-Real-IP" in fe
    assert sum("X-Forwarded-For" in x for x in fe) == 1 + (client_ip_header is not None)


def test_every_response_loses_server_and_gains_nosniff_and_no_store() -> None:
    fe = section(haproxy_cfg(local_routes(), jwt_key_env=KEY), "frontend gateway")
    # http-after-response: the services' responses and the gateway's own.
    assert "http-after-response del-header Server" in fe
    assert "http-after-response set-header X-Content-Type-Options nosniff" in fe
    assert (
        "http-after-response set-header Cache-Control no-store "
        "unless { res.hdr(cache-control) -m found }"
    ) in fe


def test_every_status_haproxy_generates_is_json() -> None:
    # What HAProxy 2.6's documentation of `http-error` lists (200: the monitor-uri answer).
    statuses = {200, 400, 401, 403, 404, 405, 407, 408, 410, 413, 425, 429, 500, 501, 502, 503}
    statuses.add(504)
    d = section(haproxy_cfg(local_routes(), jwt_key_env=KEY), "defaults")
    errors = [x for x in d if x.startswith("http-error")]
    assert sorted(int(x.split()[2]) for x in errors) == sorted(statuses)
    assert all("content-type application/json" in x for x in errors)
    assert not any(x.startswith("errorfile") for x in d)


def test_options_switch_features_off_and_timeouts_render() -> None:
    cfg = haproxy_cfg(
        local_routes(),
        jwt_key_env=KEY,
        rate_limit=None,
        allow_chunked_bodies=True,
        timeouts=GatewayTimeouts(connect_ms=1500, client_ms=20_000),
        max_body_bytes=4096,
    )
    assert "stick-table" not in cfg and "deny_status 429" not in cfg
    assert "deny_status 411" not in cfg
    assert "req.body_size gt 4096" in cfg
    d = section(cfg, "defaults")
    assert "timeout connect 1500ms" in d and "timeout client 20000ms" in d
    assert "retry-on conn-failure" in d


@pytest.mark.parametrize(
    "make",
    [
        lambda: haproxy_cfg([]),
        lambda: haproxy_cfg(local_routes()),  # auth routes without a key
        lambda: haproxy_cfg(local_routes(), jwt_key_env="jwt key"),
        lambda: Route("User", "users", StaticServers((("127.0.0.1", 1),))),
        lambda: Route("user", "/api/users", StaticServers((("127.0.0.1", 1),))),
        lambda: StaticServers(()),
        lambda: StaticServers((("127.0.0.1", 0),)),
        lambda: DnsServers("bad name"),
        lambda: haproxy_cfg([*local_routes(), local_routes()[0]]),
        lambda: haproxy_cfg(local_routes(), jwt_key_env=KEY, port=8404, metrics_port=8404),
        lambda: haproxy_cfg(local_routes(), jwt_key_env=KEY, client_ip_header="X-F: y"),
        lambda: haproxy_cfg(
            local_routes(), jwt_key_env=KEY, client_ip_header="X-Real-IP", client_ip_occurrence=0
        ),
    ],
)
def test_invalid_inputs_are_rejected(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
@pytest.mark.parametrize("kind", ["local", "k8s"])
def test_haproxy_accepts_the_config(kind: str, tmp_path: Path) -> None:
    if kind == "local":
        cfg = haproxy_cfg(
            local_routes(),
            jwt_key_env=KEY,
            stats_socket=str(tmp_path / "admin.sock"),
        )
    else:
        cfg = haproxy_cfg(
            k8s_routes(),
            jwt_key_env=KEY,
            bind="0.0.0.0",
            metrics_bind="0.0.0.0",
            nbthread=2,
            client_ip_header="X-Forwarded-For",
            client_ip_occurrence=-2,
        )
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    proc = check(path, {KEY: "k" * 64})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Warnings usually mean a directive is ignored: treat them as failures.
    assert "WARNING" not in proc.stdout + proc.stderr
    # Without the signing key (or with an empty one) the gateway refuses to load.
    for env in ({}, {KEY: ""}):
        proc = check(path, env)
        assert proc.returncode != 0
        assert f"environment variable {KEY} (the JWT signing key) is not set" in proc.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
@pytest.mark.parametrize("status", [414, 431])
def test_haproxy_cannot_customise_414_or_431(status: int, tmp_path: Path) -> None:
    """Why _HTTP_ERRORS has neither: HAProxy sends 400 for a too long URI or headers."""
    cfg = haproxy_cfg(local_routes(), jwt_key_env=KEY).replace(
        "    http-error status 400", f"    http-error status {status}"
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    proc = check(path, {KEY: "k" * 64})
    assert proc.returncode != 0
    assert f"status code '{status}' not handled" in proc.stderr


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != KEY} | env
    return subprocess.run(
        ["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, env=environ
    )

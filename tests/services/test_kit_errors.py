"""Every error is the same JSON shape: router errors, body problems, validation, domain
errors, and unexpected exceptions (which never leak their text)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.services.kit_example import SECRET_LEAK, build_app

Client = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(
    aiohttp_client: Client, tmp_path: Path
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(build_app(tmp_path, client_max_size=1024))


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) >= {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


async def test_unknown_route_is_404_json(client: TestClient[web.Request, web.Application]) -> None:
    body = await error_of(await client.get("/api/nothing-here"), 404)
    assert body["error"] == "not_found"
    assert "fields" not in body


async def test_wrong_method_is_405_json_with_allow(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.put("/api/orders/1")
    body = await error_of(response, 405)
    assert body["error"] == "method_not_allowed"
    assert response.headers["Allow"] == "DELETE, GET"
    assert "PUT is not allowed" in body["message"]


async def test_body_over_the_limit_is_413_json(
    client: TestClient[web.Request, web.Application],
) -> None:
    note = "x" * 2000
    response = await client.post("/api/orders", json={"items": [], "note": note})
    body = await error_of(response, 413)
    assert body["error"] == "payload_too_large"


async def test_default_body_limit_is_one_mebibyte(aiohttp_client: Client, tmp_path: Path) -> None:
    client = await aiohttp_client(build_app(tmp_path))
    items = [{"sku": "a", "quantity": 1}]
    padding = " " * (1024 * 1024 - 100)
    body = json.dumps({"items": items})
    fits = await client.post("/api/orders", data=body + padding[:1000], headers=JSON)
    assert fits.status == 201
    too_big = await client.post("/api/orders", data=body + padding * 2, headers=JSON)
    assert too_big.status == 413


@pytest.mark.parametrize("raw", [b"{not json", b"", b"   ", b'{"items": [', b"\xff\xfe"])
async def test_a_body_that_is_not_json_is_400(
    client: TestClient[web.Request, web.Application], raw: bytes
) -> None:
    response = await client.post("/api/orders", data=raw, headers=JSON)
    body = await error_of(response, 400)
    assert body["error"] == "bad_request"
    assert "JSON" in body["message"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-16", None],
)
async def test_only_a_body_declared_json_is_read(
    client: TestClient[web.Request, web.Application], content_type: str | None
) -> None:
    """A form (what a cross-site page can post without asking) or text is never parsed as
    JSON, even when it holds JSON."""
    order = json.dumps({"items": [{"sku": "a", "quantity": 1}]}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = await error_of(await client.post("/api/orders", data=order, headers=headers), 415)
    assert body["error"] == "unsupported_media_type"
    assert "application/json" in body["message"]
    plus_json = {"Content-Type": "application/merge-patch+json; charset=UTF-8"}
    assert (await client.post("/api/orders", data=order, headers=plus_json)).status == 201


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        (b'{"items": [{"sku": "a", "quantity": "5"}]}', "body.items.0.quantity", "valid integer"),
        (b'{"items": [{"sku": "a", "quantity": true}]}', "body.items.0.quantity", "valid integer"),
        (b'{"items": [{"sku": "a", "quantity": 1e2}]}', "body.items.0.quantity", "valid integer"),
        (b'{"items": [{"sku": 7, "quantity": 1}]}', "body.items.0.sku", "valid string"),
        (
            b'{"items": [{"sku": "a", "quantity": 1}], "note": "a", "note": "b"}',
            "body.note",
            "given twice",
        ),
        (b'{"items": [{"sku": "a", "sku": "b", "quantity": 1}]}', "body.items.0.sku", "twice"),
        (b'{"items": [{"sku": "a", "quantity": 1e400}]}', "body.items.0.quantity", "finite"),
    ],
)
async def test_a_body_is_taken_as_written_or_refused(
    client: TestClient[web.Request, web.Application], raw: bytes, field: str, problem: str
) -> None:
    """No coercion, no silent choice between two values of one key."""
    response = await client.post("/api/orders", data=raw, headers=JSON)
    body = await error_of(response, 422)
    problems = {item["field"]: item["problem"] for item in body["fields"]}
    assert problem in problems[field], problems


async def test_an_invalid_body_is_422_naming_each_field(
    client: TestClient[web.Request, web.Application],
) -> None:
    order = {"items": [{"sku": "a", "quantity": 0}, {"quantity": "many"}], "note": 5}
    body = await error_of(await client.post("/api/orders", json=order), 422)
    assert body["error"] == "validation_failed"
    problems = {item["field"]: item["problem"] for item in body["fields"]}
    assert problems == {
        "body.items.0.quantity": "Input should be greater than 0",
        "body.items.1.sku": "Field required",
        "body.items.1.quantity": "Input should be a valid integer",
        "body.note": "Input should be a valid string",
    }
    assert "body.items.0.quantity" in body["message"]


async def test_a_body_of_the_wrong_shape_is_422_at_the_top(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = await error_of(await client.post("/api/orders", json=[1, 2]), 422)
    assert [item["field"] for item in body["fields"]] == ["body"]


async def test_invalid_query_and_path_parameters_are_422(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = await error_of(await client.get("/api/orders?limit=500"), 422)
    assert [item["field"] for item in body["fields"]] == ["query.limit"]
    body = await error_of(await client.get("/api/orders?limit=1&limit=2"), 422)
    assert [item["field"] for item in body["fields"]] == ["query.limit"]
    body = await error_of(await client.get("/api/orders/abc"), 422)
    assert [item["field"] for item in body["fields"]] == ["path.order_id"]
    body = await error_of(await client.get("/api/orders/0"), 422)
    assert body["fields"] == [
        {"field": "path.order_id", "problem": "Input should be greater than 0"}
    ]


async def test_valid_requests_get_their_validated_values(
    client: TestClient[web.Request, web.Application],
) -> None:
    created = await client.post("/api/orders", json={"items": [{"sku": "a", "quantity": 2}] * 2})
    assert created.status == 201
    assert await created.json() == {
        "id": 1,
        "items": [{"sku": "a", "quantity": 2}] * 2,
        "total_quantity": 4,
    }
    listed = await client.get("/api/orders?limit=2&sku=x&sku=y")
    assert listed.status == 200
    orders = await listed.json()
    assert [order["id"] for order in orders] == [1, 2]
    assert [item["sku"] for item in orders[0]["items"]] == ["x", "y"]
    one = await client.get("/api/orders?limit=1&sku=only")
    assert [item["sku"] for item in (await one.json())[0]["items"]] == ["only"]


async def test_domain_errors_keep_their_status_and_code(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = await error_of(await client.get("/api/orders/404"), 404)
    assert body == {
        "error": "not_found",
        "message": "order 404 does not exist",
        "request_id": body["request_id"],
    }
    response = await client.get("/api/busy")
    body = await error_of(response, 429)
    assert body["error"] == "too_many_requests"
    assert response.headers["Retry-After"] == "7"


async def test_a_bare_exception_is_a_generic_500_without_its_text(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/api/boom")
    body = await error_of(response, 500)
    assert body["error"] == "internal_error"
    assert body["message"] == "internal server error"
    text = await response.text()
    assert "hunter2" not in text and "RuntimeError" not in text and SECRET_LEAK not in text
    assert "Traceback" not in text


async def test_an_answer_that_breaks_its_response_model_is_a_500(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/api/bad-answer")
    body = await error_of(response, 500)
    assert "not a number" not in await response.text()
    assert "fields" not in body  # a server bug is not the client's validation problem

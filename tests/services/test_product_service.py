"""The product service against the real data tier: browsing, search, recommendations, admin
writes behind a role, the cache layers and their invalidation, and every bad input."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.kit.auth import Tokens
from services.kit.exports import PRODUCT_SEARCH_SELECTION_POSITION, PRODUCT_SEARCHES
from services.product.app import ProductSettings, init_app
from stacks.local.data_tier import DataTier
from tests.services.conftest import SEEDED_PRODUCTS


@pytest.fixture
async def client(aiohttp_client, settings_for) -> TestClient:
    return await aiohttp_client(init_app(settings_for(ProductSettings, "product")))


def bearer(tokens: Tokens, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('1', role, 'test-session')}"}


async def get(client: TestClient, path: str, status: int = 200, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status == status, await response.text()
    return await response.json()


async def test_listing_pages_through_the_catalog(client: TestClient) -> None:
    first = await get(client, "/api/products", page_size=50)
    # The seeded catalog, plus whatever other tests added to the shared database.
    assert first["total"] >= SEEDED_PRODUCTS and len(first["items"]) == 50
    second = await get(client, "/api/products", page_size=50, page=2)
    assert not {p["id"] for p in first["items"]} & {p["id"] for p in second["items"]}


async def test_filters_by_category_with_its_children_and_by_price(client: TestClient) -> None:
    department = await get(client, "/api/products", category="electronics", page_size=100)
    leaf = await get(client, "/api/products", category="phones", page_size=100)
    assert leaf["total"] > 0 and department["total"] > leaf["total"]
    assert {p["category"] for p in department["items"]} <= {"phones", "laptops", "audio", "cameras"}
    cheap = await get(
        client, "/api/products", max_price_cents=5000, sort="price_desc", page_size=100
    )
    prices = [p["price_cents"] for p in cheap["items"]]
    assert prices == sorted(prices, reverse=True) and max(prices) <= 5000


async def test_search_ranks_full_text_matches_and_forgives_typos(client: TestClient) -> None:
    exact = await get(client, "/api/products/search", q="waterproof jacket")
    assert exact["items"] and "jacket" in exact["items"][0]["name"].lower()
    typo = await get(client, "/api/products/search", q="wireles headphone")
    assert typo["items"], "trigram similarity finds names despite the typo"


async def test_searches_are_counted_by_whether_they_found_anything(client: TestClient) -> None:
    """The business dashboard's zero-result share: a shopper's search counts once (its first
    page), found or empty."""

    async def counted() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        return {
            s.labels["result"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == PRODUCT_SEARCHES
        }

    assert await counted() == {"found": 0.0, "empty": 0.0}
    await get(client, "/api/products/search", q="waterproof jacket")
    await get(client, "/api/products/search", q="waterproof jacket", page=2)
    await get(client, "/api/products/search", q="zzqxjv nothingatall")
    assert await counted() == {"found": 1.0, "empty": 1.0}


async def test_chosen_hits_are_observed_by_their_position(client: TestClient) -> None:
    """Search relevance: where the product a shopper clicked or bought stood in the results."""

    async def observed() -> dict[tuple[str, str], float]:
        text = await (await client.get("/metrics")).text()
        return {
            (s.labels["action"], s.labels["le"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == f"{PRODUCT_SEARCH_SELECTION_POSITION}_bucket"
        }

    assert {v for v in (await observed()).values()} == {0.0}, "both actions exist, at 0"
    for position, action in ((1, "click"), (7, "click"), (2, "purchase")):
        response = await client.post(
            "/api/products/search/selections", json={"position": position, "action": action}
        )
        assert response.status == 204, await response.text()
    buckets = await observed()
    assert (buckets["click", "1.0"], buckets["click", "3.0"], buckets["click", "10.0"]) == (1, 1, 2)
    assert (buckets["purchase", "1.0"], buckets["purchase", "3.0"]) == (0, 1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"position": 0, "action": "click"}, "body.position"),
        ({"position": 10_001, "action": "click"}, "body.position"),
        ({"position": "first", "action": "click"}, "body.position"),
        ({"position": 1, "action": "hover"}, "body.action"),
        ({"position": 1}, "body.action"),
    ],
)
async def test_a_bad_selection_names_the_field_and_counts_nothing(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/products/search/selections", json=body)
    assert response.status == 422
    assert field in [f["field"] for f in (await response.json())["fields"]]
    metrics = await (await client.get("/metrics")).text()
    assert f'{PRODUCT_SEARCH_SELECTION_POSITION}_count{{action="click"}} 0.0' in metrics


async def test_detail_and_not_found(client: TestClient) -> None:
    listing = await get(client, "/api/products", page_size=1)
    product_id = listing["items"][0]["id"]
    detail = await get(client, f"/api/products/{product_id}")
    assert detail["id"] == product_id and detail["sku"].startswith("SKU-")
    missing = await get(client, "/api/products/999999999", status=404)
    assert missing["error"] == "not_found"
    await get(client, "/api/products/abc", status=404)


async def test_categories_and_popular(client: TestClient) -> None:
    categories = await get(client, "/api/products/categories")
    by_slug = {c["slug"]: c for c in categories}
    assert by_slug["phones"]["parent"] == "electronics" and by_slug["phones"]["products"] > 0
    popular = await get(client, "/api/products/popular")
    assert 0 < len(popular) <= 12


async def test_recommendations_are_bought_together(client: TestClient, platform: DataTier) -> None:
    listing = await get(client, "/api/products", page_size=3, sort="name")
    a, b, c = (p["id"] for p in listing["items"])
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        for together in ((a, b), (a, b), (a, c)):
            order = await connection.fetchrow(
                "INSERT INTO orders (user_id, total_cents) VALUES (2, 1) RETURNING id, created_at"
            )
            for product_id in together:
                await connection.execute(
                    """INSERT INTO order_items
                         (order_id, order_created_at, sku, product_id, quantity, unit_price_cents)
                       SELECT $1, $2, sku, id, 1, price_cents FROM products WHERE id = $3""",
                    order["id"],
                    order["created_at"],
                    product_id,
                )
        recommended = await get(client, f"/api/products/{a}/recommendations")
        assert [p["id"] for p in recommended[:2]] == [b, c]
    finally:
        await connection.execute("DELETE FROM orders WHERE user_id = 2")
        await connection.close()


async def test_admin_writes_need_the_admin_role(client: TestClient, tokens: Tokens) -> None:
    sku = f"SKU-T{uuid.uuid4().hex[:8].upper()}"
    body = {"sku": sku, "name": "Test kettle", "category": "kitchen", "price_cents": 2599}
    assert (await client.post("/api/products", json=body)).status == 401
    assert (
        await client.post("/api/products", json=body, headers=bearer(tokens, "customer"))
    ).status == 403
    created = await client.post("/api/products", json=body, headers=bearer(tokens, "admin"))
    assert created.status == 201
    product = await created.json()
    assert product["sku"] == sku and product["category"] == "kitchen"
    again = await client.post("/api/products", json=body, headers=bearer(tokens, "admin"))
    assert again.status == 409


async def test_a_write_invalidates_every_cached_copy(client: TestClient, tokens: Tokens) -> None:
    listing = await get(client, "/api/products", page_size=1, sort="price_asc")
    product_id = listing["items"][0]["id"]
    before = await get(client, f"/api/products/{product_id}")
    await get(client, f"/api/products/{product_id}")  # now cached in L1
    metrics = await (await client.get("/metrics")).text()
    assert 'cache_requests_total{layer="l1",result="hit",service="product"}' in metrics
    changed = await client.patch(
        f"/api/products/{product_id}",
        json={"price_cents": before["price_cents"] + 100},
        headers=bearer(tokens, "admin"),
    )
    assert changed.status == 200
    after = await get(client, f"/api/products/{product_id}")
    assert after["price_cents"] == before["price_cents"] + 100
    # Listings are keyed by the catalog's generation, so they change too.
    relisted = await get(client, "/api/products", page_size=1, sort="price_asc")
    assert (
        relisted["items"][0]["updated_at"] >= after["updated_at"]
        or relisted["items"][0]["id"] != product_id
    )


async def test_cache_miss_ratio_is_exported_for_the_autoscaler(client: TestClient) -> None:
    await get(client, "/api/products/categories")
    metrics = await (await client.get("/metrics")).text()
    assert "product_cache_miss_ratio " in metrics


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/products", {"page": "0"}, "query.page"),
        ("/api/products", {"page_size": "1000"}, "query.page_size"),
        ("/api/products", {"sort": "random"}, "query.sort"),
        ("/api/products", {"category": "Not A Slug"}, "query.category"),
        (
            "/api/products",
            {"min_price_cents": "900", "max_price_cents": "100"},
            "query.min_price_cents",
        ),
        ("/api/products/search", {}, "query.q"),
        ("/api/products/search", {"q": "x"}, "query.q"),
    ],
)
async def test_bad_queries_name_the_field(
    client: TestClient, path: str, params: dict[str, str], field: str
) -> None:
    response = await client.get(path, params=params)
    assert response.status == 422
    assert field in [f["field"] for f in (await response.json())["fields"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sku": "lower-case", "name": "x", "category": "kitchen", "price_cents": 100}, "body.sku"),
        (
            {"sku": "SKU-NEGATIVE", "name": "x", "category": "kitchen", "price_cents": -5},
            "body.price_cents",
        ),
        (
            {"sku": "SKU-NOCAT", "name": "x", "category": "no-such-category", "price_cents": 100},
            "body.category",
        ),
        ({"sku": "SKU-NONAME", "category": "kitchen", "price_cents": 100}, "body.name"),
    ],
)
async def test_bad_products_name_the_field_and_write_nothing(
    client: TestClient, tokens: Tokens, platform: DataTier, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/products", json=body, headers=bearer(tokens, "admin"))
    assert response.status == 422, await response.text()
    assert field in [f["field"] for f in (await response.json())["fields"]]
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        assert (
            await connection.fetchval("SELECT count(*) FROM products WHERE sku = $1", body["sku"])
            == 0
        )
    finally:
        await connection.close()


async def test_categories_are_created_by_admins(client: TestClient, tokens: Tokens) -> None:
    slug = f"test-{uuid.uuid4().hex[:8]}"
    admin = bearer(tokens, "admin")
    created = await client.post(
        "/api/products/categories",
        json={"slug": slug, "name": "Test", "parent": "home"},
        headers=admin,
    )
    assert created.status == 201 and (await created.json())["parent"] == "home"
    duplicate = await client.post(
        "/api/products/categories", json={"slug": slug, "name": "Again"}, headers=admin
    )
    assert duplicate.status == 409
    orphan = await client.post(
        "/api/products/categories",
        json={"slug": f"{slug}-x", "name": "X", "parent": "nowhere"},
        headers=admin,
    )
    assert orphan.status == 422

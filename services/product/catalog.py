"""The catalog's queries and how their results are cached.

Reads go through the cache layers with the seed's TTLs (catalog 1 h, search 15 min, popular
products 30 min); listing and search keys embed the catalog's *generation* (the newest
`updated_at` of products and categories), so any write makes every cached listing stale at
once without enumerating keys. Product detail keys are invalidated by id on writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from services.kit.cache import Cache
from services.kit.db import Database
from services.kit.errors import Conflict, NotFound, ValidationFailed

FROM_PRODUCTS = "FROM products p JOIN categories c ON c.id = p.category_id"
PRODUCT_COLUMNS = """
    p.id, p.sku, p.name, p.description, p.price_cents, p.currency, p.attributes, p.active,
    c.slug AS category, p.created_at, p.updated_at
"""
SORTS = {
    "newest": "p.created_at DESC, p.id DESC",
    "price_asc": "p.price_cents ASC, p.id ASC",
    "price_desc": "p.price_cents DESC, p.id DESC",
    "name": "p.name ASC, p.id ASC",
}
GENERATION_KEY = "catalog:generation"
POPULAR_KEY = "catalog:popular"


@dataclass(frozen=True)
class Ttls:
    catalog: int
    search: int
    popular: int


@dataclass(frozen=True)
class ListingQuery:
    category: str | None = None
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    sort: str = "newest"
    page: int = 1
    page_size: int = 24

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:24]


def product_key(product_id: int) -> str:
    return f"catalog:product:{product_id}"


def _product(row: Any) -> dict[str, Any]:
    product = dict(row)
    if isinstance(product.get("attributes"), str):
        product["attributes"] = json.loads(product["attributes"])
    for field in ("created_at", "updated_at"):
        if product.get(field) is not None:
            product[field] = product[field].isoformat()
    return product


class Catalog:
    def __init__(self, db: Database, cache: Cache, ttls: Ttls):
        self.db = db
        self.cache = cache
        self.ttls = ttls

    async def generation(self) -> str:
        async def load() -> str:
            value = await self.db.fetchval(
                """SELECT greatest(
                       (SELECT max(updated_at) FROM products),
                       (SELECT max(created_at) FROM categories))::text"""
            )
            return value or "empty"

        return await self.cache.get_or_load(GENERATION_KEY, self.ttls.catalog, load)

    # --- reads --------------------------------------------------------------------------------

    async def product(self, product_id: int) -> dict[str, Any] | None:
        async def load() -> dict[str, Any] | None:
            row = await self.db.fetchrow(
                f"""SELECT {PRODUCT_COLUMNS} {FROM_PRODUCTS}
                    WHERE p.id = $1""",
                product_id,
            )
            return None if row is None else _product(row)

        return await self.cache.get_or_load(product_key(product_id), self.ttls.catalog, load)

    async def listing(self, query: ListingQuery) -> dict[str, Any]:
        generation = await self.generation()

        async def load() -> dict[str, Any]:
            where, args = ["p.active"], []
            if query.category is not None:
                args.append(query.category)
                # A category lists its own products and those of its direct children.
                where.append(
                    f"""p.category_id IN (SELECT id FROM categories WHERE slug = ${len(args)}
                        UNION SELECT c2.id FROM categories c2 JOIN categories c1
                        ON c2.parent_id = c1.id WHERE c1.slug = ${len(args)})"""
                )
            if query.min_price_cents is not None:
                args.append(query.min_price_cents)
                where.append(f"p.price_cents >= ${len(args)}")
            if query.max_price_cents is not None:
                args.append(query.max_price_cents)
                where.append(f"p.price_cents <= ${len(args)}")
            condition = " AND ".join(where)
            total = await self.db.fetchval(
                f"SELECT count(*) FROM products p WHERE {condition}", *args
            )
            args += [query.page_size, (query.page - 1) * query.page_size]
            rows = await self.db.fetch(
                f"""SELECT {PRODUCT_COLUMNS} {FROM_PRODUCTS}
                    WHERE {condition} ORDER BY {SORTS[query.sort]}
                    LIMIT ${len(args) - 1} OFFSET ${len(args)}""",
                *args,
            )
            return {
                "items": [_product(r) for r in rows],
                "page": query.page,
                "page_size": query.page_size,
                "total": total,
            }

        key = f"catalog:{generation}:list:{query.key()}"
        return await self.cache.get_or_load(key, self.ttls.catalog, load)

    async def search(self, text: str, page: int, page_size: int) -> dict[str, Any]:
        """Full-text search (weighted name/description) plus trigram similarity on the name,
        so typos and partial words still find products."""
        generation = await self.generation()

        async def load() -> dict[str, Any]:
            rows = await self.db.fetch(
                f"""WITH q AS (SELECT websearch_to_tsquery('english', $1) AS tsq)
                    SELECT {PRODUCT_COLUMNS},
                           ts_rank(p.search, q.tsq) + similarity(p.name, $1) AS score
                    {FROM_PRODUCTS}, q
                    WHERE p.active AND (p.search @@ q.tsq OR p.name % $1)
                    ORDER BY score DESC, p.id
                    LIMIT $2 OFFSET $3""",
                text,
                page_size,
                (page - 1) * page_size,
            )
            return {
                "items": [{**_product(r), "score": round(float(r["score"]), 4)} for r in rows],
                "page": page,
                "page_size": page_size,
            }

        digest = hashlib.sha256(f"{text}|{page}|{page_size}".encode()).hexdigest()[:24]
        return await self.cache.get_or_load(f"search:{generation}:{digest}", self.ttls.search, load)

    async def categories(self) -> list[dict[str, Any]]:
        generation = await self.generation()

        async def load() -> list[dict[str, Any]]:
            rows = await self.db.fetch(
                """SELECT c.id, c.slug, c.name, parent.slug AS parent,
                          (SELECT count(*) FROM products p WHERE p.category_id = c.id AND p.active)
                            AS products
                   FROM categories c LEFT JOIN categories parent ON parent.id = c.parent_id
                   ORDER BY c.slug"""
            )
            return [dict(r) for r in rows]

        return await self.cache.get_or_load(
            f"catalog:{generation}:categories", self.ttls.catalog, load
        )

    async def popular(self, limit: int = 12) -> list[dict[str, Any]]:
        return await self.cache.get_or_load(
            POPULAR_KEY, self.ttls.popular, lambda: self._popular(limit)
        )

    async def _popular(self, limit: int) -> list[dict[str, Any]]:
        """Best sellers of the last 30 days; the newest products while nothing has sold."""
        rows = await self.db.fetch(
            f"""SELECT {PRODUCT_COLUMNS}
                FROM (SELECT oi.product_id, sum(oi.quantity) AS sold
                      FROM order_items oi
                      WHERE oi.order_created_at > now() - interval '30 days'
                      GROUP BY oi.product_id ORDER BY sold DESC LIMIT $1) best
                JOIN products p ON p.id = best.product_id
                JOIN categories c ON c.id = p.category_id
                WHERE p.active ORDER BY best.sold DESC, p.id""",
            limit,
        )
        if not rows:
            rows = await self.db.fetch(
                f"""SELECT {PRODUCT_COLUMNS} {FROM_PRODUCTS}
                    WHERE p.active ORDER BY p.created_at DESC, p.id DESC LIMIT $1""",
                limit,
            )
        return [_product(r) for r in rows]

    async def refresh_popular(self, limit: int = 12) -> None:
        """The background job: recompute and replace, so readers never wait for it."""
        await self.cache.invalidate(POPULAR_KEY)
        await self.popular(limit)

    async def recommendations(self, product_id: int, limit: int = 8) -> list[dict[str, Any]]:
        """Bought together with this product; popular products when it has no history."""

        async def load() -> list[dict[str, Any]]:
            rows = await self.db.fetch(
                f"""SELECT {PRODUCT_COLUMNS}
                    FROM (SELECT b.product_id, count(*) AS together
                          FROM order_items a
                          JOIN order_items b
                            ON b.order_id = a.order_id AND b.product_id <> a.product_id
                          WHERE a.product_id = $1
                          GROUP BY b.product_id ORDER BY together DESC LIMIT $2) pairs
                    JOIN products p ON p.id = pairs.product_id
                    JOIN categories c ON c.id = p.category_id
                    WHERE p.active ORDER BY pairs.together DESC, p.id""",
                product_id,
                limit,
            )
            if rows:
                return [_product(r) for r in rows]
            return [p for p in await self.popular(limit + 1) if p["id"] != product_id][:limit]

        return await self.cache.get_or_load(
            f"catalog:product:{product_id}:recommendations", self.ttls.popular, load
        )

    # --- writes (admin) -----------------------------------------------------------------------

    async def create_category(self, slug: str, name: str, parent: str | None) -> dict[str, Any]:
        async with self.db.transaction() as connection:
            parent_id = None
            if parent is not None:
                parent_id = await connection.fetchval(
                    "SELECT id FROM categories WHERE slug = $1", parent
                )
                if parent_id is None:
                    raise ValidationFailed.field("body.parent", f"no category {parent!r}")
            row = await connection.fetchrow(
                """INSERT INTO categories (slug, name, parent_id) VALUES ($1, $2, $3)
                   ON CONFLICT (slug) DO NOTHING RETURNING id, slug, name""",
                slug,
                name,
                parent_id,
            )
        if row is None:
            raise Conflict(f"category {slug!r} exists")
        await self.cache.invalidate(GENERATION_KEY)
        return {**dict(row), "parent": parent, "products": 0}

    async def create_product(self, fields: dict[str, Any]) -> int:
        async with self.db.transaction() as connection:
            category_id = await self._category_id(connection, fields["category"])
            product_id = await connection.fetchval(
                """INSERT INTO products (sku, name, description, category_id, price_cents, currency,
                                         attributes)
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
                   ON CONFLICT (sku) DO NOTHING RETURNING id""",
                fields["sku"],
                fields["name"],
                fields["description"],
                category_id,
                fields["price_cents"],
                fields["currency"],
                json.dumps(fields["attributes"]),
            )
        if product_id is None:
            raise Conflict(f"a product with SKU {fields['sku']!r} exists")
        await self.cache.invalidate(GENERATION_KEY)
        return product_id

    async def update_product(self, product_id: int, changes: dict[str, Any]) -> None:
        sets, args = ["updated_at = now()"], [product_id]
        async with self.db.transaction() as connection:
            for field, value in changes.items():
                if field == "category":
                    value, field = await self._category_id(connection, value), "category_id"
                elif field == "attributes":
                    value = json.dumps(value)
                args.append(value)
                cast = "::jsonb" if field == "attributes" else ""
                sets.append(f"{field} = ${len(args)}{cast}")
            updated = await connection.fetchval(
                f"UPDATE products SET {', '.join(sets)} WHERE id = $1 RETURNING id", *args
            )
        if updated is None:
            raise NotFound(f"no product {product_id}")
        await self.cache.invalidate(product_key(product_id), GENERATION_KEY)

    @staticmethod
    async def _category_id(connection: Any, slug: str) -> int:
        category_id = await connection.fetchval("SELECT id FROM categories WHERE slug = $1", slug)
        if category_id is None:
            raise ValidationFailed.field("body.category", f"no category {slug!r}")
        return category_id

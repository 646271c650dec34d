"""Demo data: categories, products with searchable names, and their stock. (Demo users are
registered through the gateway by the local runner, so their passwords go through the user
service's own hashing and policy.)

Deterministic for a given seed, and idempotent (it does nothing when products already exist),
so the local platform, the tests and the benchmarks can all call it. Rows go in with COPY:
10,000 products take well under a second.

    python -m services.maintenance.seed --products 10000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from dataclasses import dataclass

import asyncpg

from services.kit.db import PRIMARY_HINT

DEPARTMENTS = {
    "electronics": ["phones", "laptops", "audio", "cameras"],
    "home": ["kitchen", "furniture", "lighting", "bedding"],
    "fashion": ["shoes", "jackets", "bags", "watches"],
    "sports": ["running", "cycling", "camping", "fitness"],
    "books": ["fiction", "science", "cooking", "travel"],
    "toys": ["puzzles", "outdoor-play", "building-sets", "dolls"],
}
ADJECTIVES = [
    "wireless", "compact", "premium", "classic", "ultralight", "waterproof", "ergonomic",
    "vintage", "smart", "portable", "organic", "handmade", "heavy-duty", "slim", "recycled",
]  # fmt: skip
MATERIALS = ["bamboo", "steel", "leather", "cotton", "carbon", "ceramic", "oak", "wool", "glass"]
COLORS = ["black", "white", "red", "blue", "green", "grey", "orange", "navy", "sand"]


@dataclass(frozen=True)
class SeedReport:
    categories: int
    products: int
    created: bool


def _product_rows(count: int, category_ids: dict[str, int], rng: random.Random) -> list[tuple]:
    leaves = [slug for children in DEPARTMENTS.values() for slug in children]
    rows = []
    for i in range(count):
        leaf = leaves[i % len(leaves)]
        noun = leaf.rstrip("s").replace("-", " ")
        name = (
            f"{rng.choice(ADJECTIVES).title()} {rng.choice(MATERIALS)} {noun} {rng.choice(COLORS)}"
        )
        description = (
            f"A {rng.choice(ADJECTIVES)} {noun} made of {rng.choice(MATERIALS)}, "
            f"in {rng.choice(COLORS)}. Model {i:05d}."
        )
        rows.append(
            (f"SKU-{i:06d}", name, description, category_ids[leaf], rng.randint(199, 99_999))
        )
    return rows


async def seed(connection: asyncpg.Connection, products: int = 10_000, seed: int = 7) -> SeedReport:
    # On the primary: the schema may have been created an instant ago (replicas lag).
    existing = await connection.fetchval(f"{PRIMARY_HINT}SELECT count(*) FROM products")
    if existing:
        categories = await connection.fetchval(f"{PRIMARY_HINT}SELECT count(*) FROM categories")
        return SeedReport(categories, existing, created=False)
    rng = random.Random(seed)
    async with connection.transaction():
        ids: dict[str, int] = {}
        for department, children in DEPARTMENTS.items():
            ids[department] = await connection.fetchval(
                "INSERT INTO categories (slug, name) VALUES ($1, $2) RETURNING id",
                department,
                department.title(),
            )
            for child in children:
                ids[child] = await connection.fetchval(
                    """INSERT INTO categories (slug, name, parent_id) VALUES ($1, $2, $3)
                       RETURNING id""",
                    child,
                    child.replace("-", " ").title(),
                    ids[department],
                )
        rows = _product_rows(products, ids, rng)
        await connection.copy_records_to_table(
            "products",
            records=rows,
            columns=["sku", "name", "description", "category_id", "price_cents"],
        )
        await connection.copy_records_to_table(
            "inventory",
            records=[(row[0], rng.randint(0, 500)) for row in rows],
            columns=["sku", "available"],
        )
        await connection.execute(
            """INSERT INTO inventory_events (sku, kind, delta, available_after, reference)
               SELECT sku, 'stocked', available, available, 'seed' FROM inventory"""
        )
    return SeedReport(len(ids), products, created=True)


async def _main(products: int) -> SeedReport:
    from services.kit.db import connect
    from services.kit.settings import Settings

    connection = await connect(Settings.load().database())
    try:
        return await seed(connection, products)
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    report = asyncio.run(_main(parser.parse_args().products))
    print(report)
    sys.exit(0)

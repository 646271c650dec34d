"""The product service's API: /api/products/..."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from services.kit.api import Api
from services.kit.auth import Principal
from services.kit.errors import Conflict, NotFound, ValidationFailed
from services.product.catalog import SORTS, Catalog, ListingQuery

api = Api("product", version="1.0.0", description="Catalog, categories, search, recommendations")

CATALOG = web.AppKey("catalog", Catalog)
SEARCHES = web.AppKey("searches", Counter)  # PRODUCT_SEARCHES, by result
SELECTIONS = web.AppKey("selections", Histogram)  # PRODUCT_SEARCH_SELECTION_POSITION, by action
SELECTION_ACTIONS = ("click", "purchase")
ID = r"{product_id:\d+}"  # numeric, so /search, /popular, /categories never match it

Slug = Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=60)]
Cents = Annotated[int, Field(gt=0, le=100_000_000)]


class Product(BaseModel):
    id: int
    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    currency: str
    attributes: dict[str, Any]
    active: bool
    created_at: str
    updated_at: str


class ProductPage(BaseModel):
    items: list[Product]
    page: int
    page_size: int
    total: int


class SearchHit(Product):
    score: float


class SearchPage(BaseModel):
    items: list[SearchHit]
    page: int
    page_size: int


class Category(BaseModel):
    id: int
    slug: str
    name: str
    parent: str | None
    products: int


class ListingParams(BaseModel):
    category: Slug | None = None
    min_price_cents: Cents | None = None
    max_price_cents: Cents | None = None
    sort: Literal[tuple(SORTS)] = "newest"  # type: ignore[valid-type]
    page: int = Field(default=1, ge=1, le=1000)
    page_size: int = Field(default=24, ge=1, le=100)


class SearchParams(BaseModel):
    q: str = Field(min_length=2, max_length=100, description="words, phrases, -exclusions")
    page: int = Field(default=1, ge=1, le=100)
    page_size: int = Field(default=24, ge=1, le=100)


class SearchSelection(BaseModel):
    """A product a shopper chose from search results, and where it stood in them."""

    position: int = Field(
        ge=1, le=10_000, description="1 for the first hit of the first page, across pages"
    )
    action: Literal[SELECTION_ACTIONS] = Field(  # type: ignore[valid-type]
        description="click: opened it from the results; purchase: bought it from there"
    )


class ProductPath(BaseModel):
    product_id: int = Field(gt=0, lt=2**63)


class NewCategory(BaseModel):
    slug: Slug
    name: str = Field(min_length=1, max_length=120)
    parent: Slug | None = None


class NewProduct(BaseModel):
    sku: str = Field(pattern=r"^[A-Z0-9][A-Z0-9-]{1,63}$")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)
    category: Slug
    price_cents: Cents
    currency: Literal["USD", "EUR", "GBP"] = "USD"
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=50)


class ProductChange(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5000)
    category: Slug | None = None
    price_cents: Cents | None = None
    active: bool | None = None
    attributes: dict[str, str | int | float | bool] | None = Field(default=None, max_length=50)


def _catalog(request: web.Request) -> Catalog:
    return request.app[CATALOG]


@api.get("/api/products", query=ListingParams, response=ProductPage, tags=["catalog"])
async def list_products(request: web.Request, query: ListingParams) -> ProductPage:
    """Browse the catalog: by category (with its subcategories), price range, sorted, paged."""
    if (
        query.min_price_cents is not None
        and query.max_price_cents is not None
        and query.min_price_cents > query.max_price_cents
    ):
        raise ValidationFailed.field("query.min_price_cents", "must be <= max_price_cents")
    page = await _catalog(request).listing(ListingQuery(**query.model_dump()))
    return ProductPage.model_validate(page)


@api.get("/api/products/search", query=SearchParams, response=SearchPage, tags=["catalog"])
async def search(request: web.Request, query: SearchParams) -> SearchPage:
    """Search names and descriptions (full text), tolerating typos (trigram similarity)."""
    page = await _catalog(request).search(query.q, query.page, query.page_size)
    if query.page == 1:  # a shopper's search, once: the next pages are the same search
        request.app[SEARCHES].labels("found" if page["items"] else "empty").inc()
    return SearchPage.model_validate(page)


@api.post("/api/products/search/selections", body=SearchSelection, status=204, tags=["catalog"])
async def search_selection(request: web.Request, body: SearchSelection) -> None:
    """Record which hit a shopper chose (the storefront sends it): measures search relevance."""
    request.app[SELECTIONS].labels(body.action).observe(body.position)


@api.get("/api/products/categories", response=list[Category], tags=["catalog"])
async def categories(request: web.Request) -> list[Category]:
    """Every category, with its parent and how many active products it holds."""
    return [Category.model_validate(c) for c in await _catalog(request).categories()]


@api.get("/api/products/popular", response=list[Product], tags=["catalog"])
async def popular(request: web.Request) -> list[Product]:
    """The best sellers of the last 30 days (refreshed in the background)."""
    return [Product.model_validate(p) for p in await _catalog(request).popular()]


@api.get(
    f"/api/products/{ID}",
    path_params=ProductPath,
    response=Product,
    errors=[NotFound],
    tags=["catalog"],
)
async def product(request: web.Request, path_params: ProductPath) -> Product:
    """One product."""
    found = await _catalog(request).product(path_params.product_id)
    if found is None:
        raise NotFound(f"no product {path_params.product_id}")
    return Product.model_validate(found)


@api.get(
    f"/api/products/{ID}/recommendations",
    path_params=ProductPath,
    response=list[Product],
    errors=[NotFound],
    tags=["catalog"],
)
async def recommendations(request: web.Request, path_params: ProductPath) -> list[Product]:
    """Products often bought together with this one; popular products when there is no history."""
    if await _catalog(request).product(path_params.product_id) is None:
        raise NotFound(f"no product {path_params.product_id}")
    found = await _catalog(request).recommendations(path_params.product_id)
    return [Product.model_validate(p) for p in found]


@api.post(
    "/api/products/categories",
    body=NewCategory,
    response=Category,
    status=201,
    auth="admin",
    errors=[Conflict],
    tags=["admin"],
)
async def create_category(request: web.Request, body: NewCategory, user: Principal) -> Category:
    """Add a category (administrators)."""
    created = await _catalog(request).create_category(body.slug, body.name, body.parent)
    return Category.model_validate(created)


@api.post(
    "/api/products",
    body=NewProduct,
    response=Product,
    status=201,
    auth="admin",
    errors=[Conflict],
    tags=["admin"],
)
async def create_product(request: web.Request, body: NewProduct, user: Principal) -> Product:
    """Add a product (administrators)."""
    catalog = _catalog(request)
    product_id = await catalog.create_product(body.model_dump())
    created = await catalog.product(product_id)
    return Product.model_validate(created)


@api.patch(
    f"/api/products/{ID}",
    path_params=ProductPath,
    body=ProductChange,
    response=Product,
    auth="admin",
    errors=[NotFound],
    tags=["admin"],
)
async def update_product(
    request: web.Request, path_params: ProductPath, body: ProductChange, user: Principal
) -> Product:
    """Change a product (administrators); caches everywhere drop the old version."""
    catalog = _catalog(request)
    await catalog.update_product(path_params.product_id, body.model_dump(exclude_unset=True))
    updated = await catalog.product(path_params.product_id)
    return Product.model_validate(updated)

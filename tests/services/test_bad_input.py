"""Every endpoint's bad input (issue 5): a clear 4xx, and nothing written.

The standard: bad input gets a clear error and loses nothing. An API answers 4xx with a JSON
body naming the field and the problem (`services/kit/errors.py`), never a 500 or a stack trace.

Driven by the services' own route registries (`services/<name>/views.py: api`) and the OpenAPI
document each app serves at /openapi.json: one test per operation, and the bad requests are
derived from the operation's schemas (body, query, path parameters), its security (a valid
token of the right kind, then broken ones) and the headers its handler reads (`Idempotency-Key`,
`If-Match`). A new route is covered without touching this file, and a route
added around the registry fails `test_every_route_is_in_the_registry_and_the_document`.

Each bad request carries otherwise valid input (a body built from the schema, a valid token,
valid headers) so that the one bad part is what is refused. Around the requests, every table's
rows are hashed and every Redis key listed: the bad requests must change neither. The apps run
without their background jobs, so any change seen is a request's.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import re._parser as regex_parser  # the stdlib's regex parser: an example for each `pattern`
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import RedisCluster

from services.kit.api import Api, Operation
from services.kit.app import DEPENDENCIES, OPS_PATHS
from services.kit.auth import Tokens
from services.kit.cache import Cache, MemcachedLayer, RedisLayer
from services.kit.db import Database
from services.kit.errors import ErrorBody
from services.kit.redis import ChannelListener, RedisStore
from services.kit.settings import Settings
from services.payment.simulators import DEFAULT_CREDENTIALS, build
from stacks.local.data_tier import DataTier
from stacks.services import SERVICES

# --- what there is to test: every service with a route registry ------------------------------


def _registries() -> dict[str, Api]:
    """Each Python service's registry (the gateway is nginx: it has none)."""
    found = {}
    for name in SERVICES:
        if importlib.util.find_spec(f"services.{name}") is None:
            continue
        found[name] = importlib.import_module(f"services.{name}.views").api
    return found


REGISTRIES = _registries()
OPERATIONS = [
    pytest.param(service, op.name, id=f"{service}:{op.method} {op.template}")
    for service, api in REGISTRIES.items()
    for op in api.operations
]


def _operation(service: str, name: str) -> Operation:
    return next(op for op in REGISTRIES[service].operations if op.name == name)


# --- the apps, as the platform starts them, without background jobs ---------------------------

# What each service needs beyond the platform's environment to start in a test process.
OVERRIDES: dict[str, dict[str, str]] = {
    "user": {"BCRYPT_ROUNDS": "4"},
    "order": {"RUN_WORKERS": "false"},  # no saga: nothing may move but the requests
}


def _settings_type(service: str) -> type[Settings]:
    module = importlib.import_module(f"services.{service}.app")
    return next(
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Settings)
        and value.__module__ == module.__name__
    )


def build_app(
    service: str, settings_for: Callable[..., Any], extra: dict[str, str] | None = None
) -> web.Application:
    module = importlib.import_module(f"services.{service}.app")
    settings = settings_for(
        _settings_type(service), service, **OVERRIDES.get(service, {}), **(extra or {})
    )
    app: web.Application = module.init_app(settings)
    # The periodic jobs (reservation sweeper, stray voider, popular refresh) write on their own
    # schedule; without them, whatever changes during the test was written by a request.
    for context in list(app.cleanup_ctx):
        if getattr(context, "__qualname__", "").startswith("every."):
            app.cleanup_ctx.remove(context)
    return app


@dataclass
class Running:
    client: TestClient
    providers: list[Any] = field(default_factory=list)  # payment simulators: charges seen


async def start(
    service: str, aiohttp_client: Any, aiohttp_server: Any, settings_for: Any, tmp_path: Path
) -> Running:
    extra: dict[str, str] = {}
    providers = []
    if service == "payment":  # the shipped simulators: they count what reaches them
        urls = {}
        for kind in PROVIDERS:
            simulator = build(kind)
            urls[kind] = str((await aiohttp_server(simulator.app())).make_url("")).rstrip("/")
            providers.append(simulator)
        extra = provider_settings(tmp_path, urls)
    client = await aiohttp_client(build_app(service, settings_for, extra))
    return Running(client, providers)


PROVIDERS = ("stripe", "paypal")


def provider_settings(tmp_path: Path, urls: dict[str, str]) -> dict[str, str]:
    found = {}
    for kind, url in urls.items():
        key_file = tmp_path / f"{kind}-key"
        key_file.write_text(DEFAULT_CREDENTIALS[kind])
        found[f"{kind.upper()}_URL"] = url
        found[f"{kind.upper()}_API_KEY_FILE"] = str(key_file)
    return found


# --- who calls: a valid token of the right kind ----------------------------------------------


async def identity(service: str, op: Operation, client: TestClient, tokens: Tokens) -> str | None:
    """A bearer token the operation accepts: None for public routes; a shopper for any-user
    routes (on the user service, a real account's login, since it checks the session); else
    the first role it allows (`service` is the saga's caller identity)."""
    if op.roles is None:
        return None
    if not op.roles:
        if service == "user":
            return await _logged_in(client)
        return tokens.issue(new_user_id(), "customer", "bad-input")
    role = op.roles[0]
    return tokens.issue("order" if role == "service" else new_user_id(), role, "bad-input")


def new_user_id() -> str:
    """Numeric, as the user service's ids are, and no one else's."""
    return str(uuid.uuid4().int % 10**9 + 3 * 10**9)


async def _logged_in(client: TestClient) -> str:
    account = {"email": f"bad-input-{uuid.uuid4().hex[:12]}@example.com", "password": "Secret-123"}
    registered = await client.post("/api/users/register", json=account)
    assert registered.status == 202, await registered.text()
    logged_in = await client.post("/api/users/login", json=account)
    assert logged_in.status == 200, await logged_in.text()
    return str((await logged_in.json())["access_token"])


# --- what was written: every table's rows, every Redis key ------------------------------------

TABLES = """
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'
    ORDER BY 1
"""


@dataclass
class Snapshot:
    tables: dict[str, tuple[int, str]]  # table -> (rows, md5 of every row)
    keys: set[bytes]

    def changes(self, after: Snapshot) -> list[str]:
        found = [
            f"table {name}: {self.tables.get(name, (0, ''))[0]} -> {rows} rows"
            + (" (contents changed)" if rows == self.tables.get(name, (0, ""))[0] else "")
            for name, (rows, digest) in after.tables.items()
            if self.tables.get(name) != (rows, digest)
        ]
        if new := after.keys - self.keys:
            found.append(f"new Redis keys: {sorted(new)[:10]}")
        return found


async def snapshot(platform: DataTier, redis: RedisCluster) -> Snapshot:
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        tables = {}
        for name in [row[0] for row in await connection.fetch(TABLES)]:
            rows, digest = await connection.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                f" FROM {name} t"
            )
            tables[name] = (rows, digest)
    finally:
        await connection.close()
    # KEYS goes to one node unless told: every master holds its share of the key space.
    return Snapshot(tables, set(await redis.keys("*", target_nodes=RedisCluster.PRIMARIES)))


# --- schemas: valid examples, and what is wrong with them -------------------------------------


class Schemas:
    """The operation's JSON schemas, `$ref`s resolved against the document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components = document["components"]["schemas"]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def variants(self, schema: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The non-null alternatives of `schema`, and whether null is allowed."""
        schema = self.resolve(schema)
        options = [self.resolve(s) for s in schema.get("anyOf", schema.get("oneOf", [schema]))]
        concrete = [s for s in options if s.get("type") != "null"]
        return concrete, len(concrete) < len(options)

    def example(self, schema: dict[str, Any]) -> Any:
        """A small value the schema accepts (objects with their required properties only)."""
        concrete, _nullable = self.variants(schema)
        s = concrete[0]
        if "const" in s:
            return s["const"]
        if "enum" in s:
            return s["enum"][0]
        kind = s.get("type")
        if kind == "object":
            properties = s.get("properties", {})
            return {name: self.example(properties[name]) for name in s.get("required", [])}
        if kind == "array":
            return [self.example(s.get("items", {}))] * s.get("minItems", 0)
        if kind == "string":
            if s.get("format") == "email":
                return f"bad-input-{uuid.uuid4().hex[:12]}@example.com"
            if s.get("format") == "date-time":
                return datetime.now(UTC).isoformat()
            if "pattern" in s:
                return matching(s["pattern"])
            return "x" * max(s.get("minLength", 1), 1)
        if kind in ("integer", "number"):
            if "exclusiveMinimum" in s:
                return s["exclusiveMinimum"] + 1
            return s.get("minimum", 1)
        if kind == "boolean":
            return True
        raise AssertionError(f"no example for schema {s}: teach Schemas.example")


def matching(pattern: str) -> str:
    """The shortest string matching `pattern` (literals, classes, repeats, groups, anchors)."""

    def first(items: list[Any]) -> str:
        for op, arg in items:
            if str(op) == "LITERAL":
                return chr(arg)
            if str(op) == "RANGE":
                return chr(arg[0])
            if str(op) == "CATEGORY":
                return {"CATEGORY_DIGIT": "0", "CATEGORY_WORD": "a"}[str(arg)]
        raise AssertionError(f"no example for class {items} of {pattern!r}")

    def walk(items: Any) -> str:
        out = []
        for op, arg in items:
            kind = str(op)
            if kind == "LITERAL":
                out.append(chr(arg))
            elif kind == "IN":
                out.append(first(arg))
            elif kind in ("MAX_REPEAT", "MIN_REPEAT"):
                out.append(walk(arg[2]) * arg[0])
            elif kind == "SUBPATTERN":
                out.append(walk(arg[-1]))
            elif kind == "BRANCH":
                out.append(walk(arg[1][0]))
            elif kind != "AT":
                raise AssertionError(f"no example for {kind} in {pattern!r}")
        return "".join(out)

    found = walk(regex_parser.parse(pattern))
    assert re.search(pattern, found), f"example {found!r} does not match {pattern!r}"
    return found


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
HUGE = 10**30  # no integer column holds it


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {str: "string", int: "integer", float: "number", list: "array", dict: "object"}[
        type(value)
    ]


def wrong_types(concrete: list[dict[str, Any]], nullable: bool) -> Iterator[tuple[str, Any]]:
    """Values of a JSON type none of the alternatives takes. Bodies are validated strictly:
    no coercion, so `"5"`, `true` and `1e2` are no integer, `1` no string (a JSON integer is
    still a number)."""
    kinds = {s.get("type") for s in concrete}
    if "number" in kinds:
        kinds.add("integer")
    for value in ("text", 12345, 1.5, True, [1], {"k": "v"}):
        kind = _json_type(value)
        if kind not in kinds:
            yield f"a JSON {kind}", value
    if kinds & {"integer", "number"} and "string" not in kinds:
        yield "a number in a string", "5"
    if "integer" in kinds and "number" not in kinds:
        yield "an integral number written with an exponent (1e2)", 1e2
    if "boolean" in kinds and "string" not in kinds:
        yield "a boolean in a string", "true"
    if not nullable:
        yield "null", None


def out_of_range(s: dict[str, Any], example: Any, item: Any = None) -> Iterator[tuple[str, Any]]:
    """Values of the right type that break one of the schema's constraints."""
    kind = s.get("type")
    if kind in ("integer", "number"):
        if "minimum" in s:
            yield f"below the minimum {s['minimum']}", s["minimum"] - 1
        if "exclusiveMinimum" in s:
            yield f"not above {s['exclusiveMinimum']}", s["exclusiveMinimum"]
        if "maximum" in s:
            yield f"above the maximum {s['maximum']}", s["maximum"] + 1
        if "exclusiveMaximum" in s:
            yield f"not below {s['exclusiveMaximum']}", s["exclusiveMaximum"]
        yield "a 100-bit number", HUGE
        yield "a negative 100-bit number", -HUGE
    elif kind == "string":
        if "enum" in s or "const" in s:
            yield "not one of the allowed values", "no-such-value"
        if s.get("minLength", 0) > 0:
            yield f"shorter than {s['minLength']}", (example * 2)[: s["minLength"] - 1]
        if "maxLength" in s:
            yield f"longer than {s['maxLength']}", (example or "x") * (s["maxLength"] + 1)
        elif "enum" not in s and s.get("format") != "date-time":
            yield "2,000 characters (no maxLength)", "x" * 2_000
        if "pattern" in s:
            yield f"not matching {s['pattern']}", "~not valid~"
        if s.get("format") == "email":
            yield "not an email address", "not-an-email"
        if s.get("format") == "date-time":
            yield "not a date-time", "not-a-date"
            yield "month 13", "2024-13-01T00:00:00Z"
    elif kind == "array":
        if s.get("minItems", 0) > 0:
            yield f"fewer than {s['minItems']} items", []
        if "maxItems" in s:
            yield f"more than {s['maxItems']} items", [item] * (s["maxItems"] + 1)
    elif kind == "object" and "maxProperties" in s:
        yield (
            f"more than {s['maxProperties']} properties",
            {f"k{i}": "v" for i in range(s["maxProperties"] + 1)},
        )


def free_text(s: dict[str, Any]) -> bool:
    return s.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(s)


def with_nul(example: str, s: dict[str, Any]) -> str:
    """The example with a NUL character in it, within the schema's length limits."""
    value = example[:1] + "\x00" + example[1:]
    return value[: s["maxLength"]] if "maxLength" in s else value


# --- the bad requests --------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    query: list[tuple[str, str]] = field(default_factory=list)
    statuses: frozenset[int] = frozenset({422})
    named: str | None = None  # the field an answer of 422 must name (or a part of it)
    code: str | None = None


@dataclass
class Request:
    """The valid request each case breaks one part of."""

    method: str
    template: str
    path: dict[str, str]
    query: dict[str, str]
    body: Any
    headers: dict[str, str]

    def url(self, **path: str) -> str:
        values = {**self.path, **path}
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], self.template)

    def case(self, name: str, **changes: Any) -> Case:
        body = changes.pop("body", self.body)
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        query = changes.pop("query", list(self.query.items()))
        return Case(
            name=name,
            path=changes.pop("url", self.url()),
            body=body,
            headers=changes.pop("headers", self.headers),
            query=query,
            **changes,
        )


IDEMPOTENCY_KEY = "Idempotency-Key"
IF_MATCH = "If-Match"
# The headers routes read themselves: a valid value (made per request), and bad ones as
# (description, value or None to leave it out, statuses, code).
HEADERS: dict[str, tuple[Callable[[], str], list[tuple[str, str | None, frozenset[int], str]]]] = {
    IDEMPOTENCY_KEY: (
        lambda: uuid.uuid4().hex,
        [
            ("missing", None, frozenset({422}), "validation_failed"),
            ("empty", "", frozenset({422}), "validation_failed"),
            ("too short", "short", frozenset({422}), "validation_failed"),
            ("129 characters", "k" * 129, frozenset({422}), "validation_failed"),
            ("not ASCII", "clé-clé-clé-clé", frozenset({422}), "validation_failed"),
        ],
    ),
    IF_MATCH: (
        lambda: '"1"',
        [
            ("missing", None, frozenset({428}), "precondition_required"),
            ("empty", "", frozenset({428}), "precondition_required"),
            ("not a version", '"abc"', frozenset({422}), "validation_failed"),
            ("a weak ETag", 'W/"1"', frozenset({422}), "validation_failed"),
            ("a wildcard", "*", frozenset({422}), "validation_failed"),
            ("a 40-digit version", "9" * 40, frozenset({422}), "validation_failed"),
            ("a superscript digit", "\u00b2", frozenset({422}), "validation_failed"),
        ],
    ),
}


READS_HEADER = re.compile(r"request\.headers(?:\.get\(|\[)\s*([^,)\]]+)")


def headers_read(op: Operation) -> list[str]:
    """The request headers the route's handler reads itself (`request.headers.get(KEY_HEADER)`,
    `request.headers["If-Match"]`): each needs its bad values in HEADERS."""
    names = []
    for expression in READS_HEADER.findall(inspect.getsource(op.handler)):
        expression = expression.strip()
        name = op.handler.__globals__.get(expression, expression.strip("\"'"))
        assert name in HEADERS, f"{op.name} reads the header {name}: add its bad values to HEADERS"
        names.append(name)
    return names


def base_request(
    schemas: Schemas, op: Operation, template: str, spec: dict[str, Any], token: str | None
) -> Request:
    parameters = spec.get("parameters", [])
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for name in headers_read(op):
        headers[name] = HEADERS[name][0]()
    body = None
    if "requestBody" in spec:
        body = schemas.example(spec["requestBody"]["content"]["application/json"]["schema"])
    return Request(
        method=op.method,
        template=template,
        path={
            p["name"]: str(schemas.example(p["schema"])) for p in parameters if p["in"] == "path"
        },
        query={
            p["name"]: str(schemas.example(p["schema"]))
            for p in parameters
            if p["in"] == "query" and p["required"]
        },
        body=body,
        headers=headers,
    )


def body_cases(schemas: Schemas, request: Request, schema: dict[str, Any]) -> Iterator[Case]:
    bad_json = {
        "an empty body": b"",
        "malformed JSON": b'{"a": ',
        "bytes that are not UTF-8": b'\xff\xfe{"a": 1}',
        "a lone surrogate": b'{"a": "\\ud800"}',
        "JSON nested 100,000 deep": b"[" * 100_000,
    }
    for name, raw in bad_json.items():
        yield request.case(f"body: {name}", body=raw, statuses=frozenset({400}), code="bad_request")
    # Only a body declared JSON is read as JSON, whatever it holds.
    valid = json.dumps(request.body).encode()
    for name, content_type, raw in (
        ("form-encoded", "application/x-www-form-urlencoded", b"a=1&b=2"),
        ("JSON sent as text/plain", "text/plain", valid),
        ("JSON in Latin-1", "application/json; charset=latin-1", valid),
        ("JSON without a Content-Type", None, valid),
    ):
        headers = {k: v for k, v in request.headers.items() if k != "Content-Type"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        yield request.case(
            f"body: {name}",
            body=raw,
            headers=headers,
            statuses=frozenset({415}),
            code="unsupported_media_type",
        )
    for name, raw in (
        ("NaN", b'{"a": NaN}'),
        ("Infinity", b'{"a": -Infinity}'),
    ):
        yield request.case(f"body: {name}", body=raw, statuses=frozenset({400}), code="bad_request")
    if isinstance(request.body, dict) and request.body:
        # A key given twice: which one is meant? (The json module would keep the last.)
        key, value = next(iter(request.body.items()))
        rest = json.dumps({k: v for k, v in request.body.items() if k != key})[1:-1]
        twice = f"{json.dumps(key)}: {json.dumps(value)}, " * 2 + rest
        yield request.case(
            f"body.{key}: given twice",
            body=("{" + twice.rstrip(", ") + "}").encode(),
            named=f"body.{key}",
        )
    for raw in (b"[]", b'"x"', b"42", b"null", b"true"):
        yield request.case(f"body: JSON {raw.decode()}", body=raw, named="body")
    yield request.case(
        "body: over 1 MiB",
        body=b'{"a": "' + b"x" * (1024 * 1024 + 1) + b'"}',
        statuses=frozenset({413}),
        code="payload_too_large",
    )
    yield from field_cases(schemas, request, schema, "body", lambda value: value)


def field_cases(
    schemas: Schemas,
    request: Request,
    schema: dict[str, Any],
    location: str,
    place: Callable[[Any], Any],
) -> Iterator[Case]:
    """For the value at `location` (placed in an otherwise valid body by `place`): wrong types,
    values out of range, and the same for each property and the first item, recursively."""
    concrete, nullable = schemas.variants(schema)
    root = location == "body"

    def case(why: str, value: Any, **options: Any) -> Case:
        return request.case(f"{location}: {why}", body=place(value), named=location, **options)

    if not root:  # the root's wrong types are the whole-body cases above
        for why, value in wrong_types(concrete, nullable):
            yield case(why, value)
    if len(concrete) != 1:
        return
    s = concrete[0]
    example = schemas.example(s)
    item = schemas.example(s["items"]) if s.get("type") == "array" else None
    for why, value in out_of_range(s, example, item):
        yield case(why, value)
    if free_text(s):
        yield case("a NUL character", with_nul(example, s))
    if s.get("type") == "object":
        properties, required = s.get("properties", {}), s.get("required", [])
        if required and root:
            yield request.case("body: {}", body={}, named=f"body.{required[0]}")
        for name, sub in properties.items():
            inner = f"{location}.{name}"
            if name in required:
                without = {k: v for k, v in example.items() if k != name}
                yield request.case(f"{inner}: missing", body=place(without), named=inner)
            yield from field_cases(
                schemas, request, sub, inner, lambda v, name=name: place({**example, name: v})
            )
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):
            yield from field_cases(
                schemas, request, extra, f"{location}.k", lambda v: place({**example, "k": v})
            )
            yield case("a key with a NUL character", {**example, "a\x00b": example})
    elif s.get("type") == "array":
        item = s.get("items", {})
        rest = example[1:]
        yield from field_cases(schemas, request, item, f"{location}.0", lambda v: place([v, *rest]))


def query_cases(schemas: Schemas, request: Request, spec: dict[str, Any]) -> Iterator[Case]:
    for parameter in spec.get("parameters", []):
        if parameter["in"] != "query":
            continue
        name = parameter["name"]
        where = f"query.{name}"
        concrete, _nullable = schemas.variants(parameter["schema"])
        s = concrete[0]
        base = [(k, v) for k, v in request.query.items() if k != name]
        if parameter["required"]:
            yield request.case(f"{where}: missing", query=base, named=where)
        values: list[tuple[str, str]] = []
        if s.get("type") == "array":
            item = schemas.resolve(s.get("items", {}))
            example = str(schemas.example(item))
            values += [(f"an item {why}", str(v)) for why, v in out_of_range(item, example)]
            if "maxItems" in s:
                many = [(name, example)] * (s["maxItems"] + 1)
                yield request.case(f"{where}: {len(many)} values", query=base + many, named=where)
        else:
            example = str(schemas.example(s))
            if s.get("type") in ("integer", "number"):
                values += [("not a number", "abc"), ("empty", "")]
                if s.get("type") == "integer":
                    values.append(("a fraction", "1.5"))
            values += [(why, _query_value(v)) for why, v in out_of_range(s, example)]
            if free_text(s):
                values.append(("a NUL character", with_nul(example, s)))
            yield request.case(
                f"{where}: given twice",
                query=[*base, (name, example), (name, example)],
                named=where,
            )
        for why, value in values:
            yield request.case(f"{where}: {why}", query=[*base, (name, value)], named=where)


def _query_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def path_cases(schemas: Schemas, request: Request, spec: dict[str, Any]) -> Iterator[Case]:
    for parameter in spec.get("parameters", []):
        if parameter["in"] != "path":
            continue
        name = parameter["name"]
        for why, value in (
            ("letters", "abc"),
            ("300 characters", "A" * 300),
            ("300 digits", "9" * 300),
            ("negative", "-1"),
            ("zero", "0"),
            ("a space", "A%20B"),
            ("a NUL character", "A%00B"),
            ("not ASCII", "%C3%A9%C3%A9"),
        ):
            yield request.case(
                f"path.{name}: {why}",
                url=request.url(**{name: value}),
                statuses=frozenset({404, 422}),  # no route matches it, or its model refuses it
                named=f"path.{name}",
            )


def header_cases(request: Request, op: Operation) -> Iterator[Case]:
    for name in headers_read(op):
        for why, value, statuses, code in HEADERS[name][1]:
            headers = {k: v for k, v in request.headers.items() if k != name}
            if value is not None:
                headers[name] = value
            yield request.case(
                f"header.{name}: {why}",
                headers=headers,
                statuses=statuses,
                code=code,
                named=f"header.{name}" if code == "validation_failed" else None,
            )


def auth_cases(request: Request, op: Operation, tokens: Tokens) -> Iterator[Case]:
    if op.roles is None:
        return
    without = {k: v for k, v in request.headers.items() if k != "Authorization"}
    past = datetime.now(UTC) - timedelta(hours=1)
    for why, value in (
        ("missing", None),
        ("not a JWT", "Bearer not-a-token"),
        ("another scheme", "Basic dXNlcjpwYXNzd29yZA=="),
        ("expired", f"Bearer {tokens.issue('1', 'admin', 's', now=past)}"),
        ("a refresh token", f"Bearer {tokens.issue('1', 'admin', 's', token_type='refresh')}"),
    ):
        headers = without if value is None else {**without, "Authorization": value}
        yield request.case(
            f"header.Authorization: {why}",
            headers=headers,
            statuses=frozenset({401}),
            code="unauthorized",
        )
    if op.roles:
        outsider = {**without, "Authorization": f"Bearer {tokens.issue('1', 'visitor', 's')}"}
        yield request.case(
            "header.Authorization: a role the route does not allow",
            headers=outsider,
            statuses=frozenset({403}),
            code="forbidden",
        )


def cases_for(
    document: dict[str, Any],
    template: str,
    spec: dict[str, Any],
    op: Operation,
    token: str | None,
    tokens: Tokens,
) -> list[Case]:
    schemas = Schemas(document)
    request = base_request(schemas, op, template, spec, token)
    found = [
        request.case(
            "path: a 300-character segment under the route's",
            url=request.url() + "/" + "x" * 300,
            statuses=frozenset({404, 405}),
        ),
        *auth_cases(request, op, tokens),
        *header_cases(request, op),
        *path_cases(schemas, request, spec),
        *query_cases(schemas, request, spec),
    ]
    if "requestBody" in spec:
        schema = spec["requestBody"]["content"]["application/json"]["schema"]
        found += body_cases(schemas, request, schema)
    return found


# --- what a clear 4xx is -----------------------------------------------------------------------

TRACEBACK_SIGNS = ("Traceback", 'File "', "site-packages", "asyncpg.", "Exception")
LOCATIONS = ("body", "query", "path", "header")


async def problems_with(response: Any, case: Case) -> list[str]:
    text = await response.text(errors="replace")
    where = f"{case.name}: answered {response.status} {text[:300]}"
    found = []
    if not 400 <= response.status < 500:
        found.append(f"{where}: not a 4xx")
    elif response.status not in case.statuses:
        found.append(f"{where}: expected {sorted(case.statuses)}")
    if response.content_type != "application/json":
        found.append(f"{where}: not JSON ({response.content_type})")
    if any(sign in text for sign in TRACEBACK_SIGNS):
        found.append(f"{where}: looks like a stack trace")
    try:
        error = ErrorBody.model_validate_json(text)
    except ValueError:
        return [*found, f"{where}: not the error shape of services/kit/errors.py"]
    if case.code and error.error != case.code:
        found.append(f"{where}: expected the code {case.code}")
    if error.error == "validation_failed":
        names = [problem.field for problem in error.fields]
        if not names or not all(n == "body" or n.split(".")[0] in LOCATIONS for n in names):
            found.append(f"{where}: the fields {names} do not say where")
        if not all(problem.problem for problem in error.fields):
            found.append(f"{where}: a field without its problem")
        expected = case.named
        if expected and not any(n == expected or n.startswith(f"{expected}.") for n in names):
            found.append(f"{where}: does not name {expected}")
    return found


# --- the tests ---------------------------------------------------------------------------------


def _find(document: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    for template, methods in document["paths"].items():
        for spec in methods.values():
            if spec["operationId"] == name:
                return template, spec
    raise AssertionError(f"{name} is not in the service's /openapi.json")


@pytest.mark.parametrize(("service", "name"), OPERATIONS)
async def test_bad_input_gets_a_clear_4xx_and_writes_nothing(
    service: str,
    name: str,
    aiohttp_client: Any,
    aiohttp_server: Any,
    settings_for: Any,
    tokens: Tokens,
    platform: DataTier,
    redis: RedisCluster,
    tmp_path: Path,
) -> None:
    op = _operation(service, name)
    running = await start(service, aiohttp_client, aiohttp_server, settings_for, tmp_path)
    client = running.client
    document = await (await client.get("/openapi.json")).json()
    template, spec = _find(document, name)
    token = await identity(service, op, client, tokens)
    cases = cases_for(document, template, spec, op, token, tokens)
    before = await snapshot(platform, redis)
    problems = []
    for case in cases:
        async with client.request(
            op.method, case.path, params=case.query, data=case.body, headers=case.headers
        ) as response:
            problems += await problems_with(response, case)
    after = await snapshot(platform, redis)
    problems += [f"written by the bad requests: {change}" for change in before.changes(after)]
    problems += [
        f"{len(provider.payments)} payments reached the provider simulator {provider}"
        for provider in running.providers
        if provider.payments
    ]
    assert not problems, f"{len(problems)} problems in {len(cases)} bad requests:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize("service", list(REGISTRIES))
def test_every_route_is_in_the_registry_and_the_document(
    service: str, settings_for: Any, tmp_path: Path
) -> None:
    """What the parametrization above covers is all there is: no route registered around the
    registry, and the document describes every registered one."""
    extra = {}
    if service == "payment":  # built, never started: nothing calls the providers
        extra = provider_settings(tmp_path, dict.fromkeys(PROVIDERS, "http://127.0.0.1:9"))
    app = build_app(service, settings_for, extra)
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        if route.resource.canonical not in OPS_PATHS
    }
    registry = REGISTRIES[service]
    assert routes == {(op.method, op.template) for op in registry.operations}
    documented = {
        (method.upper(), template)
        for template, methods in registry.openapi()["paths"].items()
        for method in methods
    }
    assert documented == routes


async def test_the_snapshot_sees_a_write(
    aiohttp_client: Any, settings_for: Any, tokens: Tokens, platform: DataTier, redis: RedisCluster
) -> None:
    """The control: one valid request's writes show, in its table and in Redis (the cart)."""
    client = await aiohttp_client(build_app("order", settings_for))
    shopper = {"Authorization": f"Bearer {tokens.issue(new_user_id(), 'customer', 'bad-input')}"}
    before = await snapshot(platform, redis)
    response = await client.put(
        "/api/orders/cart/items", json={"sku": "SKU-000003", "quantity": 1}, headers=shopper
    )
    assert response.status == 200, await response.text()
    changes = before.changes(await snapshot(platform, redis))
    assert (await client.delete("/api/orders/cart", headers=shopper)).status == 204
    assert [change.split(":")[0] for change in changes] == ["table public.carts", "new Redis keys"]


def backends_of(dependency: Any) -> set[str]:
    """The data-tier backends a dependency of an app talks to."""
    if isinstance(dependency, Database):
        return {"postgres"}
    if isinstance(dependency, RedisStore | ChannelListener):  # commands, or pub/sub
        return {"redis"}
    if isinstance(dependency, Cache):  # L1 in process, then its shared layers
        kinds = {RedisLayer: "redis", MemcachedLayer: "memcached"}
        return {kinds[type(layer)] for layer in dependency.layers}
    raise AssertionError(f"a dependency of unknown kind: {dependency!r}")


@pytest.mark.parametrize("service", sorted(REGISTRIES))
async def test_each_service_depends_on_exactly_what_the_service_table_says_it_needs(
    service: str, aiohttp_client, aiohttp_server, settings_for, tmp_path: Path
) -> None:
    """The table's `needs` open the network paths and hand out the secrets: a dependency the
    code does not use is a hole, one it uses undeclared fails on GKE only."""
    running = await start(service, aiohttp_client, aiohttp_server, settings_for, tmp_path)
    dependencies = running.client.server.app[DEPENDENCIES]
    uses = set().union(*(backends_of(dependency) for dependency in dependencies))
    assert uses == {str(dependency) for dependency in SERVICES[service].needs}
    ready = await running.client.get("/readyz")
    assert ready.status == 200
    assert set((await ready.json())["checks"]) == {d.name for d in dependencies}

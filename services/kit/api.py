"""Routes declared with pydantic models, and the OpenAPI 3.1 document made from them.

    api = Api("product", version="1.0.0")

    @api.get("/api/products/{sku}", path_params=SkuPath, response=Product, errors=[NotFound])
    async def get_product(request: web.Request, path_params: SkuPath) -> Product:
        "Get one product."                       # the docstring is the OpenAPI summary

    @api.post("/api/products", body=NewProduct, response=Product, status=201, auth="admin")
    async def create_product(request: web.Request, body: NewProduct, user: Principal) -> Product:
        ...

A handler receives by keyword what its route declares: `body`, `query`, `path_params`
(validated pydantic objects: a failure answers 422 naming each field, a body that is not
JSON 400, a body over the app's limit 413, a body not declared JSON 415) and `user` (the
verified caller, when `auth` is True, a role, or several roles). Body JSON is validated
strictly (`"5"`, `true` or `1e2` is no integer; datetimes and the like still come as their
JSON strings), and a key given twice, NaN, Infinity or a NUL character is refused, naming the
field. It returns its response model's value (answered as JSON with the declared status),
None when the route has no response model (an empty answer, 204 by default), or any aiohttp
response when it needs full control (`json_response` adds headers).

No framework: aiohttp routes and pydantic models already do the work; this registry only
connects them and describes them, so every handler stays a plain aiohttp handler.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import json
import math
import re
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import Any, TypeVar, Union, get_args, get_origin

from aiohttp import hdrs, web
from multidict import MultiMapping
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import JsonSchemaMode

from services.kit.auth import REVOCATIONS, TOKENS, authenticate
from services.kit.errors import (
    ApiError,
    BadRequest,
    ErrorBody,
    FieldProblem,
    Forbidden,
    InternalError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)

M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])
Auth = bool | str | Sequence[str]

SCHEMAS = "#/components/schemas/"
BEARER = "bearer"  # the security scheme's name in the document
_PLACEHOLDER = re.compile(r"\{(\w+)(?::[^{}]*)?\}")  # aiohttp's {name} and {name:regex}
_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)
_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def json_response(
    value: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`value` (a pydantic model, a list of them, plain data) as a JSON response."""
    body: str | bytes
    if isinstance(value, BaseModel):
        body = value.model_dump_json(by_alias=True)
    else:
        body = _ANY.dump_json(value, by_alias=True)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


@dataclass
class Operation:
    """One route: what it takes, what it answers, who may call it."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    status: int
    body: Any = None  # a model, or any type pydantic validates (list[Item], ...)
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    response: Any = None  # a model, list[Model], ...; None: no content
    roles: tuple[str, ...] | None = None  # None: public; (): any user; else one of them
    errors: tuple[type[ApiError], ...] = ()
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def template(self) -> str:
        """The path as OpenAPI writes it (aiohttp's `{id:\\d+}` becomes `{id}`)."""
        return _PLACEHOLDER.sub(r"{\1}", self.path)

    @cached_property
    def body_adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.body)

    @cached_property
    def response_adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.response)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler: authenticate, validate, call, serialize."""
        arguments: dict[str, Any] = {}
        if self.roles is not None:
            arguments["user"] = await authenticate(request, self.roles)
        if self.path_params is not None:
            arguments["path_params"] = _validate(self.path_params, request.match_info, "path")
        if self.query is not None:
            arguments["query"] = _validate(
                self.query, _query_values(self.query, request.query), "query"
            )
        if self.body is not None:
            arguments["body"] = await self._read_body(request)
        result = await self.handler(request, **arguments)
        if isinstance(result, web.StreamResponse):
            return result
        if self.response is None:
            if result is not None:
                raise TypeError(f"{self.name} has no response model but returned a value")
            return web.Response(status=self.status)
        # Validated on the way out too: a handler bug is a 500, never a malformed answer.
        value = self.response_adapter.validate_python(result)
        return web.Response(
            body=self.response_adapter.dump_json(value, by_alias=True),
            status=self.status,
            content_type="application/json",
        )

    async def _read_body(self, request: web.Request) -> Any:
        _refuse_unless_json(request)
        raw = await request.read()  # over the app's client_max_size: 413
        if not raw.strip():
            raise BadRequest("the request body is empty; expected JSON")
        try:
            # The json module's pass finds what pydantic's parser lets through: keys given
            # twice (both keep the last), NaN and Infinity (no JSON), numbers beyond a double
            # and NUL characters (see _problems). It costs about 4 us on an order's body.
            parsed = json.loads(raw, object_pairs_hook=_object, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise BadRequest("the request body is not valid JSON") from None
        _refuse(parsed, "body")
        try:
            # Strict: no coercion ("5", true and 1e2 are no integer, 1 no string). JSON mode
            # keeps the string forms of datetimes, decimals, UUIDs and enums.
            return self.body_adapter.validate_json(raw, strict=True)
        except ValidationError as error:
            if any(item["type"] == "json_invalid" for item in error.errors()):
                raise BadRequest("the request body is not valid JSON") from None
            raise ValidationFailed.from_pydantic(error, "body") from None


def _validate(model: type[M], values: Mapping[str, Any], location: str) -> M:
    _refuse(values, location)
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        raise ValidationFailed.from_pydantic(error, location) from None


JSON_TYPES = "application/json (or application/*+json), in UTF-8"


def _refuse_unless_json(request: web.Request) -> None:
    """415 unless the body is declared JSON (with no charset, or UTF-8's: JSON's only one). A
    form (what `curl -d` sends), text or a body without a Content-Type is not parsed as JSON:
    a client that did not mean JSON learns it, and a cross-site form cannot post here."""
    kind = request.content_type  # lower case, without parameters; none sent: octet-stream
    charset = (request.charset or "utf-8").lower()
    plus_json = kind.startswith("application/") and kind.endswith("+json")
    if not (kind == "application/json" or plus_json) or charset not in ("utf-8", "utf8"):
        sent = request.headers.get(hdrs.CONTENT_TYPE, "no Content-Type")[:100]
        raise UnsupportedMediaType(f"expected a body of type {JSON_TYPES}; got {sent}")


class _Repeated(dict[str, Any]):
    """A JSON object that gave keys more than once (`repeated`); the json module keeps the last."""

    repeated: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    repeated = _Repeated(found)
    counts = collections.Counter(key for key, _ in pairs)
    repeated.repeated = tuple(key for key, count in counts.items() if count > 1)
    return repeated


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _problems(value: Any, path: str) -> Iterator[FieldProblem]:
    if isinstance(value, str):
        if "\x00" in value:
            yield FieldProblem(field=path, problem="must not contain the NUL character (U+0000)")
    elif isinstance(value, float):
        if not math.isfinite(value):  # 1e400: valid JSON, but infinite once parsed
            yield FieldProblem(field=path, problem="must be a finite number (beyond a double)")
    elif isinstance(value, Mapping):
        for key in getattr(value, "repeated", ()):
            if "\x00" not in key:  # else named below, as a key with a NUL character
                yield FieldProblem(field=f"{path}.{key}", problem="given twice in one object")
        for key, item in value.items():
            if "\x00" in key:
                yield FieldProblem(field=path, problem="a key contains the NUL character (U+0000)")
            else:
                yield from _problems(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _problems(item, f"{path}.{index}")


def _refuse(value: Any, location: str) -> None:
    """422 naming each value that pydantic would take but should not reach a handler.

    A NUL character in a string or key: PostgreSQL stores it in neither text nor jsonb, so it
    would fail a write halfway (a 500), and no real input carries one. An infinite number:
    jsonb refuses it (another 500). A key given twice: the request means two things, and the
    last one would win silently."""
    problems = list(_problems(value, location))
    if problems:
        raise ValidationFailed(problems)


def _is_sequence(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_sequence(arg) for arg in get_args(annotation) if arg is not type(None))
    return annotation in _SEQUENCES or origin in _SEQUENCES


@functools.cache
def _sequence_fields(model: type[BaseModel]) -> frozenset[str]:
    """Query names (field names and aliases) that take several values: `?tag=a&tag=b`."""
    return frozenset(
        key
        for name, info in model.model_fields.items()
        if _is_sequence(info.annotation)
        for key in (name, info.alias)
        if key
    )


def _query_values(model: type[BaseModel], query: MultiMapping[str]) -> dict[str, Any]:
    many = _sequence_fields(model)
    values: dict[str, Any] = {}
    for key in dict.fromkeys(query):
        found = query.getall(key)
        # A repeated scalar stays a list, so validation refuses it instead of picking one.
        values[key] = found if key in many or len(found) > 1 else found[0]
    return values


class Api:
    """A service's routes, each declared once: registered on the app and documented."""

    def __init__(self, title: str, version: str = "1.0.0", description: str = "") -> None:
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: type[BaseModel] | None = None,
        path_params: type[BaseModel] | None = None,
        response: Any = None,
        status: int | None = None,
        auth: Auth = False,
        errors: Iterable[type[ApiError]] = (),
        summary: str | None = None,
        tags: Iterable[str] = (),
    ) -> Callable[[H], H]:
        def register(handler: H) -> H:
            doc = inspect.getdoc(handler) or ""
            first, _, rest = doc.partition("\n\n")
            operation = Operation(
                method=method.upper(),
                path=path,
                handler=handler,
                status=status or (200 if response is not None else 204),
                body=body,
                query=query,
                path_params=path_params,
                response=response,
                roles=_roles(auth),
                errors=tuple(errors),
                summary=summary or " ".join(first.split()),
                description=rest.strip(),
                tags=tuple(tags),
            )
            self._check(operation)
            self.operations.append(operation)
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[H], H]:
        return self.route("DELETE", path, **options)

    def _check(self, operation: Operation) -> None:
        where = f"{operation.method} {operation.path} ({operation.name})"
        if any(op.name == operation.name for op in self.operations):
            raise ValueError(f"{where}: another route's handler is named {operation.name}")
        placeholders = set(_PLACEHOLDER.findall(operation.path))
        if operation.path_params is not None:
            fields = set(operation.path_params.model_fields)
            if fields != placeholders:
                raise ValueError(
                    f"{where}: path_params fields {sorted(fields)} "
                    f"must be the path's placeholders {sorted(placeholders)}"
                )
        if operation.response is not None and operation.status in (204, 304):
            raise ValueError(f"{where}: status {operation.status} has no body")

    def add_to(self, app: web.Application) -> None:
        """Register every route on `app` (its JWT verifier and revocations must be there if
        any route needs a user)."""
        needy = [op.name for op in self.operations if op.roles is not None]
        if needy and TOKENS not in app:
            raise RuntimeError(f"routes {needy} need a JWT secret (JWT_SECRET_FILE)")
        if needy and REVOCATIONS not in app:  # a revoked token must never open a route
            raise RuntimeError(f"routes {needy} need the revocations (create_app(revocations=))")
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handle, name=op.name)

    # --- the OpenAPI document ---------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every route, schemas under `components.schemas`."""
        inputs: list[tuple[tuple[str, str], JsonSchemaMode, TypeAdapter[Any]]] = [
            (("", "error"), "serialization", TypeAdapter(ErrorBody))
        ]
        for op in self.operations:
            parts: tuple[tuple[str, JsonSchemaMode, Any], ...] = (
                ("body", "validation", op.body),
                ("query", "validation", op.query),
                ("path_params", "validation", op.path_params),
                ("response", "serialization", op.response),
            )
            for part, mode, kind in parts:
                if kind is not None:
                    inputs.append(((op.name, part), mode, TypeAdapter(kind)))
        found, definitions = TypeAdapter.json_schemas(inputs, ref_template=SCHEMAS + "{model}")
        schemas: dict[str, Any] = definitions.get("$defs", {})
        document = _Document({key: schema for (key, _mode), schema in found.items()}, schemas)
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.template, {})[op.method.lower()] = document.operation(op)
        info = {"title": self.title, "version": self.version}
        if self.description:
            info["description"] = self.description
        # Query and path models become parameters: keep only the schemas something refers to.
        used = _referenced(paths, schemas)
        return {
            "openapi": "3.1.0",
            "info": info,
            "paths": paths,
            "components": {
                "schemas": {name: schemas[name] for name in sorted(used)},
                "securitySchemes": {
                    BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
            },
        }


def _referenced(root: Any, schemas: Mapping[str, Any]) -> set[str]:
    """Names of the schemas `root` refers to, directly or through other schemas."""
    found: set[str] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(SCHEMAS):
                name = ref.removeprefix(SCHEMAS)
                if name not in found:
                    found.add(name)
                    pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Status {status}"


def _roles(auth: Auth) -> tuple[str, ...] | None:
    if auth is False:
        return None
    if auth is True:
        return ()
    return (auth,) if isinstance(auth, str) else tuple(auth)


@dataclass
class _Document:
    keys: Mapping[tuple[str, str], Any]  # (operation, part) -> its schema (often a $ref)
    schemas: Mapping[str, Any]

    def operation(self, op: Operation) -> dict[str, Any]:
        found: dict[str, Any] = {"operationId": op.name}
        if op.summary:
            found["summary"] = op.summary
        if op.description:
            found["description"] = op.description
        if op.tags:
            found["tags"] = list(op.tags)
        parameters = self._parameters(op)
        if parameters:
            found["parameters"] = parameters
        if op.body is not None:
            found["requestBody"] = {"required": True, "content": self._json((op.name, "body"))}
        found["responses"] = self._responses(op)
        if op.roles is not None:
            found["security"] = [{BEARER: []}]
        return found

    def _json(self, key: tuple[str, str]) -> dict[str, Any]:
        return {"application/json": {"schema": self.keys[key]}}

    def _parameters(self, op: Operation) -> list[dict[str, Any]]:
        parameters = []
        declared: set[str] = set()
        for part, where in (("path_params", "path"), ("query", "query")):
            if (op.name, part) not in self.keys:
                continue
            schema = self.keys[(op.name, part)]
            if "$ref" in schema:
                schema = self.schemas[schema["$ref"].removeprefix(SCHEMAS)]
            required = set(schema.get("required", ()))
            for name, property_schema in schema.get("properties", {}).items():
                parameter = {
                    "name": name,
                    "in": where,
                    "required": where == "path" or name in required,
                    "schema": property_schema,
                }
                if "description" in property_schema:
                    parameter["description"] = property_schema["description"]
                parameters.append(parameter)
                declared.add(name)
        # Placeholders without a path_params model are plain strings.
        for name in _PLACEHOLDER.findall(op.path):
            if name not in declared:
                parameters.append(
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                )
        return parameters

    def _responses(self, op: Operation) -> dict[str, Any]:
        success: dict[str, Any] = {"description": _phrase(op.status)}
        if op.response is not None:
            success["content"] = self._json((op.name, "response"))
        responses = {str(op.status): success}
        errors: list[type[ApiError]] = [*op.errors, InternalError]
        if op.body is not None:
            errors += [BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed]
        if op.query is not None or op.path_params is not None:
            errors.append(ValidationFailed)
        if op.roles is not None:
            errors += [Unauthorized, Forbidden] if op.roles else [Unauthorized]
        codes: dict[int, set[str]] = {}
        for error in errors:
            codes.setdefault(error.status, set()).add(error.code)
        for status, names in sorted(codes.items()):
            responses[str(status)] = {
                "description": f"{_phrase(status)}: {', '.join(sorted(names))}",
                "content": self._json(("", "error")),
            }
        return responses

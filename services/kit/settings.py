"""A service's settings: the environment it is started with (`stacks.wiring`), typed.

    settings = Settings.from_env()      # raises SettingsError naming every bad variable
    settings = Settings.load()          # the same, for `__main__`: prints it and exits 2

Each variable is the upper-case name of a field. A bad environment fails once, listing every
problem with what was expected:

    invalid environment for service 'user' (2 problems):
      - PORT: expected an integer 1..65535, got 'abc'
      - DATABASE_USER: required when DATABASE_HOST is set

Secrets are never in the environment: `*_FILE` variables name files (Kubernetes secret
volumes, the local platform's state directory) that must exist and be readable at start.
A service adds its own variables by subclassing `Settings`; annotate a field with
`Expect("...")` to say what it takes in error messages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Self, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from services.kit.db import DatabaseConfig, Endpoint

# HMAC-SHA256 keys (the JWT signing key, the reset key) shorter than the hash output weaken it
# (RFC 7518 3.2, RFC 2104 3).
KEY_MIN_BYTES = 32
JWT_SECRET_MIN_BYTES = KEY_MIN_BYTES


@dataclass(frozen=True)
class Expect:
    """What a variable must hold, as error messages say it: `expected <text>, got '...'`."""

    text: str


class HostPort(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _nodes(value: Any) -> Any:
    """`host:port,host:port` (REDIS_NODES, MEMCACHED_NODES) as HostPort tuples."""
    if not isinstance(value, str):
        return value
    nodes = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r} is not host:port")
        nodes.append(HostPort(host.strip("[]"), int(port)))
    return tuple(nodes)


def _readable(path: Path, min_bytes: int = 1) -> Path:
    try:
        size = len(path.read_bytes().strip())
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("it is a directory") from None
    except PermissionError:
        raise ValueError("permission denied") from None
    if size < min_bytes:
        raise ValueError("the file is empty" if size == 0 else f"it holds only {size} bytes")
    return path


def _expect(annotation: Any, metadata: Iterable[Any] = ()) -> str | None:
    """The `Expect` text of a field, looking inside `X | None` and nested `Annotated`."""
    for item in metadata:
        if isinstance(item, Expect):
            return item.text
    if get_origin(annotation) is Annotated:
        return _expect(get_args(annotation)[0], annotation.__metadata__)
    for arg in get_args(annotation):
        if (found := _expect(arg)) is not None:
            return found
    return None


def read_secret(path: Path) -> str:
    """A secret file's content, without the trailing newline editors and `echo` add."""
    return path.read_text().strip()


Port = Annotated[int, Field(ge=1, le=65535), Expect("an integer 1..65535")]
Seconds = Annotated[int, Field(gt=0), Expect("a whole number of seconds > 0")]
Name = Annotated[
    str,
    Field(pattern=r"^[a-z][a-z0-9-]{0,62}$"),
    Expect("a lower-case name (letters, digits and '-', starting with a letter)"),
]
Host = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$"),
    Expect("a host name or IP address"),
]
Nodes = Annotated[
    tuple[HostPort, ...],
    BeforeValidator(_nodes),
    Field(min_length=1),
    Expect("comma-separated host:port pairs, e.g. 'redis-0:6379,redis-1:6379'"),
]
SecretFile = Annotated[
    Path, AfterValidator(_readable), Expect("the path of a readable file holding the secret")
]
KeyFile = Annotated[
    Path,
    AfterValidator(lambda path: _readable(path, KEY_MIN_BYTES)),
    Expect(f"the path of a readable file holding at least {KEY_MIN_BYTES} bytes"),
]
JwtSecretFile = KeyFile
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"],
    BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value),
    Expect("one of debug, info, warning, error"),
]


class SettingsError(ValueError):
    def __init__(self, problems: list[tuple[str, str]], service: str | None = None) -> None:
        self.problems = problems
        whose = f" for service {service!r}" if service else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = [f"  - {variable}: {problem}" for variable, problem in problems]
        super().__init__("\n".join([f"invalid environment{whose} ({count}):", *lines]))


class Settings(BaseModel):
    """The variables of `stacks.wiring.service_environment`, and a few optional ones."""

    model_config = ConfigDict(frozen=True)

    service_name: Name
    environment: Name  # dev, staging, prod; the local platform's own name
    port: Port
    log_level: LogLevel = "info"
    # Share of successful, fast requests written to the access log; errors (>= 400) and slow
    # ones (>= SLOW_REQUEST_MS) always are, and the metrics count every request. A JSON line
    # per request costs ~15 % of a hot path's CPU.
    access_log_sample: Annotated[float, Field(ge=0, le=1), Expect("a share, 0..1")] = 0.1

    # PostgreSQL, through PgPool-II (writes to the primary, reads over the replicas).
    database_host: Host | None = None
    database_port: Port = 5432
    database_name: Name | None = None
    database_user: Name | None = None
    database_password_file: SecretFile | None = None
    # An explicit replica for reads, where there is no PgPool-II in front of the database.
    database_read_host: Host | None = None
    database_read_port: Port = 5432
    # Connections this process may hold. Through PgPool-II each open one pins a pgpool child:
    # the sum over every process must stay below PgPool's num_init_children.
    database_pool_max: Annotated[int, Field(ge=1, le=200), Expect("connections, 1..200")] = 10
    # The longest a request waits for one of them; then 503 `database_busy` (Retry-After: 1).
    database_acquire_timeout_seconds: Annotated[
        float, Field(gt=0, le=60), Expect("seconds, 0 < s <= 60")
    ] = 5.0

    redis_nodes: Nodes | None = None
    redis_password_file: SecretFile | None = None
    memcached_nodes: Nodes | None = None

    # Seconds each kind of cached data lives; the defaults are stacks.config.CacheTtls's.
    cache_ttl_sessions: Seconds = 24 * 3600
    cache_ttl_catalog: Seconds = 3600
    cache_ttl_search: Seconds = 15 * 60
    cache_ttl_popular_products: Seconds = 30 * 60
    cache_ttl_carts: Seconds = 7 * 24 * 3600

    # Signs and verifies the JWTs (HS256); services without authenticated routes omit it.
    jwt_secret_file: JwtSecretFile | None = None

    # Variables that only make sense together: when the key is set, each of these must be.
    companions: ClassVar[dict[str, tuple[str, ...]]] = {
        "database_host": ("database_name", "database_user", "database_password_file"),
        "database_read_host": ("database_host",),
    }

    @classmethod
    def variable(cls, field: str) -> str:
        return field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from `environ` (default: the process environment).

        An empty variable counts as unset. Raises SettingsError listing every problem."""
        environ = os.environ if environ is None else environ
        raw = {
            field: environ[cls.variable(field)]
            for field in cls.model_fields
            if environ.get(cls.variable(field), "").strip()
        }
        problems: dict[str, str] = {}
        for key, needed in cls.companions.items():
            if key in raw:
                for field in needed:
                    if field not in raw:
                        problems[field] = f"required when {cls.variable(key)} is set"
        try:
            settings = cls.model_validate(raw)
        except ValidationError as error:
            for item in error.errors(include_url=False):
                field = str(item["loc"][0]) if item["loc"] else ""
                problems.setdefault(field, cls._describe(field, item, raw))
        if problems:
            order = list(cls.model_fields)
            ranked = sorted(problems.items(), key=lambda kv: (order.index(kv[0]), kv[0]))
            raise SettingsError(
                [(cls.variable(field), problem) for field, problem in ranked],
                raw.get("service_name"),
            )
        return settings

    @classmethod
    def load(cls) -> Self:
        """`from_env()` for a process entry point: on error, print it and exit with status 2."""
        try:
            return cls.from_env()
        except SettingsError as error:
            print(error, file=sys.stderr)
            raise SystemExit(2) from None

    @classmethod
    def _describe(cls, field: str, item: Any, raw: Mapping[str, str]) -> str:
        info = cls.model_fields.get(field)
        expected = (_expect(info.annotation, info.metadata) if info else None) or item["msg"]
        if item["type"] == "missing":
            return f"missing; expected {expected}"
        detail = f" ({item['ctx']['error']})" if item["type"] == "value_error" else ""
        return f"expected {expected}, got {raw.get(field)!r}{detail}"

    # --- what services build their clients from --------------------------------------------

    def database(self) -> DatabaseConfig:
        """PostgreSQL as `services.kit.db` connects to it (SettingsError if not configured)."""
        if (
            self.database_host is None
            or self.database_name is None
            or self.database_user is None
            or self.database_password_file is None
        ):
            raise SettingsError(
                [("DATABASE_HOST", "missing; expected where PostgreSQL (PgPool-II) listens")],
                self.service_name,
            )
        replica = self.database_read_host
        return DatabaseConfig(
            endpoint=Endpoint(self.database_host, self.database_port),
            database=self.database_name,
            user=self.database_user,
            password_file=self.database_password_file,
            replica=None if replica is None else Endpoint(replica, self.database_read_port),
            min_connections=min(2, self.database_pool_max),
            max_connections=self.database_pool_max,
            acquire_timeout_s=self.database_acquire_timeout_seconds,
        )

    def database_password(self) -> str | None:
        path = self.database_password_file
        return None if path is None else read_secret(path)

    def redis_password(self) -> str | None:
        path = self.redis_password_file
        return None if path is None else read_secret(path)

    def jwt_secret(self) -> bytes | None:
        path = self.jwt_secret_file
        return None if path is None else read_secret(path).encode()

"""How a service finds its dependencies: the environment it is started with.

One function for both places a service runs: the GKE stack (cluster DNS names, secrets
mounted as files) and the local platform (127.0.0.1 ports, secret files in the state dir).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.conf.postgres import PgUsers
from stacks.config import CacheTtls, SmtpConfig
from stacks.services import Dependency, Service, callees

USERS = PgUsers()


@dataclass(frozen=True)
class Addresses:
    """Where the shared backends are, as `host:port` strings."""

    database: str  # PgPool-II: writes to the primary, reads balanced over the replicas
    redis_nodes: tuple[str, ...]  # cluster seed nodes
    memcached_nodes: tuple[str, ...]
    # Base URLs of the services others call (`http://host:port`), by service name.
    services: dict[str, str] = field(default_factory=dict)
    # The outside parties' base URLs by name (stacks.services.OUTSIDE_PARTIES).
    external: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SecretFiles:
    """Paths of the secret files a service reads (never secret values in the environment)."""

    database_password: str
    redis_password: str
    jwt_secret: str  # the access-token signing key
    reset_key: str | None = None  # the password-reset tokens' key (mail senders only)
    smtp_password: str | None = None  # the mail relay's password, where smtp.user is set
    external_keys: dict[str, str] = field(default_factory=dict)  # outside APIs' keys, by name


def service_environment(
    service: Service,
    environment: str,
    addresses: Addresses,
    secrets: SecretFiles,
    ttl: CacheTtls,
    database_pool: int | None = None,
    smtp: SmtpConfig | None = None,
) -> dict[str, str]:
    """``database_pool``: each process's connection pool (DATABASE_POOL_MAX), sized by the
    caller so that every process fits PgPool-II's children. ``smtp``: the relay mail senders
    use (None: they send none)."""
    env = {
        "SERVICE_NAME": service.name,
        "ENVIRONMENT": environment,
        "PORT": str(service.port),
    }
    if service.image == "service":  # the gateway (HAProxy) takes its configuration as a file
        env["JWT_SECRET_FILE"] = secrets.jwt_secret
        # Whom it calls, by the caller graph: INVENTORY_URL, PAYMENT_URL, ...
        for callee in callees(service.name):
            if callee.name in addresses.services:
                env[f"{callee.name.upper()}_URL"] = addresses.services[callee.name]
    for party in service.outside:  # STRIPE_URL, STRIPE_API_KEY_FILE, WAREHOUSE_URL, ...
        if party not in addresses.external:
            continue  # a partial platform (the data tier's tests) has no outside parties
        env[f"{party.upper()}_URL"] = addresses.external[party]
        env[f"{party.upper()}_API_KEY_FILE"] = secrets.external_keys[party]
    if service.sends_mail:
        if secrets.reset_key is not None:
            env["RESET_KEY_FILE"] = secrets.reset_key
        if smtp is not None:
            env |= mail_environment(smtp, secrets.smtp_password)
    if Dependency.POSTGRES in service.needs:
        env |= database_environment(addresses.database, secrets.database_password)
        if database_pool is not None:
            env["DATABASE_POOL_MAX"] = str(database_pool)
    if Dependency.REDIS in service.needs:
        env |= {
            "REDIS_NODES": ",".join(addresses.redis_nodes),
            "REDIS_PASSWORD_FILE": secrets.redis_password,
        }
    if Dependency.MEMCACHED in service.needs:
        env["MEMCACHED_NODES"] = ",".join(addresses.memcached_nodes)
    if service.needs & {Dependency.REDIS, Dependency.MEMCACHED}:
        env |= {
            "CACHE_TTL_SESSIONS": str(ttl.sessions),
            "CACHE_TTL_CATALOG": str(ttl.catalog),
            "CACHE_TTL_SEARCH": str(ttl.search),
            "CACHE_TTL_POPULAR_PRODUCTS": str(ttl.popular_products),
            "CACHE_TTL_CARTS": str(ttl.carts),
        }
    return env


def database_environment(address: str, password_file: str) -> dict[str, str]:
    """How anything reaches PostgreSQL through PgPool-II as the application role."""
    host, port = address.rsplit(":", 1)
    return {
        "DATABASE_HOST": host,
        "DATABASE_PORT": port,
        "DATABASE_NAME": USERS.app_database,
        "DATABASE_USER": USERS.app,
        "DATABASE_PASSWORD_FILE": password_file,
    }


def mail_environment(smtp: SmtpConfig, password_file: str | None) -> dict[str, str]:
    """How a mail sender reaches the relay (`services.user.app.UserSettings`)."""
    env = {
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": smtp.security,
        "SMTP_FROM": smtp.sender,
    }
    if smtp.user is not None:
        if password_file is None:
            raise ValueError(f"smtp.user is {smtp.user!r} but no password file is given")
        env |= {"SMTP_USER": smtp.user, "SMTP_PASSWORD_FILE": password_file}
    return env


def job_environment(job: str, environment: str, database: dict[str, str]) -> dict[str, str]:
    """A database job's environment (migrations, partitions, seed): the services' settings
    shape, so jobs read it with the same code (`Settings.from_env().database()`)."""
    return {"SERVICE_NAME": job, "ENVIRONMENT": environment, "PORT": "8080", **database}

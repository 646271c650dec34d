"""Settings from the environment `stacks.wiring` gives every service, and one clear error
naming every bad or missing variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from services.kit.db import Endpoint
from services.kit.settings import Expect, HostPort, Settings, SettingsError
from stacks.config import CacheTtls
from stacks.services import SERVICES
from stacks.wiring import Addresses, SecretFiles, service_environment


@pytest.fixture
def secrets(tmp_path: Path) -> SecretFiles:
    (tmp_path / "db").write_text("database password\n")
    (tmp_path / "redis").write_text("redis password\n")
    (tmp_path / "jwt").write_text("j" * 64 + "\n")
    return SecretFiles(str(tmp_path / "db"), str(tmp_path / "redis"), str(tmp_path / "jwt"))


def wired(service: str, secrets: SecretFiles) -> dict[str, str]:
    addresses = Addresses(
        database="pgpool.data.svc.cluster.local:5432",
        redis_nodes=("redis-0.redis:6379", "redis-1.redis:6379"),
        memcached_nodes=("10.0.0.7:11211",),
    )
    return service_environment(SERVICES[service], "prod", addresses, secrets, CacheTtls())


def test_the_wired_environment_of_every_service_loads(secrets: SecretFiles) -> None:
    for name in ("user", "product", "order", "payment", "inventory"):
        settings = Settings.from_env(wired(name, secrets))
        assert settings.service_name == name
        assert settings.port == 8080


def test_the_product_service_gets_every_backend(secrets: SecretFiles) -> None:
    settings = Settings.from_env(wired("product", secrets) | {"LOG_LEVEL": "WARNING"})
    assert settings.environment == "prod"
    assert settings.log_level == "warning"
    assert settings.database_host == "pgpool.data.svc.cluster.local"
    assert settings.database_port == 5432
    assert settings.database_password() == "database password"
    assert settings.redis_nodes == (
        HostPort("redis-0.redis", 6379),
        HostPort("redis-1.redis", 6379),
    )
    assert settings.redis_password() == "redis password"
    assert [str(node) for node in settings.memcached_nodes or ()] == ["10.0.0.7:11211"]
    assert settings.cache_ttl_search == 15 * 60
    assert settings.database_read_host is None
    assert settings.jwt_secret() == b"j" * 64  # every service verifies the platform's tokens
    database = settings.database()  # what services.kit.db connects with
    assert database.endpoint == Endpoint("pgpool.data.svc.cluster.local", 5432)
    assert (database.database, database.user) == ("shop", "shop")
    assert database.password() == "database password" and database.replica is None


def test_an_explicit_replica_and_a_service_without_a_database(secrets: SecretFiles) -> None:
    environ = wired("order", secrets) | {
        "DATABASE_READ_HOST": "127.0.0.1",
        "DATABASE_READ_PORT": "5433",
    }
    assert Settings.from_env(environ).database().replica == Endpoint("127.0.0.1", 5433)
    bare = Settings.from_env({"SERVICE_NAME": "x", "ENVIRONMENT": "dev", "PORT": "8080"})
    with pytest.raises(SettingsError, match="DATABASE_HOST: missing"):
        bare.database()


def test_the_pool_size_is_bounded_and_named(secrets: SecretFiles) -> None:
    environ = wired("order", secrets)
    assert Settings.from_env(environ).database().max_connections == 10
    small = Settings.from_env(environ | {"DATABASE_POOL_MAX": "1"}).database()
    assert (small.min_connections, small.max_connections) == (1, 1)
    with pytest.raises(SettingsError) as error:
        Settings.from_env(environ | {"DATABASE_POOL_MAX": "0"})
    assert error.value.problems == [("DATABASE_POOL_MAX", "expected connections, 1..200, got '0'")]


def test_cache_ttl_defaults_are_the_stack_configs() -> None:
    ttl = CacheTtls()
    defaults = Settings.model_fields
    for name in ("sessions", "catalog", "search", "popular_products", "carts"):
        assert defaults[f"cache_ttl_{name}"].default == getattr(ttl, name)


def test_every_problem_is_named_in_one_error(tmp_path: Path) -> None:
    short = tmp_path / "jwt"
    short.write_text("too short")
    environ = {
        "SERVICE_NAME": "user",
        "PORT": "abc",
        "LOG_LEVEL": "loud",
        "DATABASE_HOST": "pgpool",
        "DATABASE_PORT": "70000",
        "DATABASE_PASSWORD_FILE": str(tmp_path / "missing"),
        "REDIS_NODES": "redis-0:6379,redis-1",
        "CACHE_TTL_CARTS": "0",
        "JWT_SECRET_FILE": str(short),
        "DATABASE_READ_PORT": "5433",
    }
    with pytest.raises(SettingsError) as error:
        Settings.from_env(environ)
    expected_letters = "a lower-case name (letters, digits and '-', starting with a letter)"
    assert error.value.problems == [
        ("ENVIRONMENT", f"missing; expected {expected_letters}"),
        ("PORT", "expected an integer 1..65535, got 'abc'"),
        ("LOG_LEVEL", "expected one of debug, info, warning, error, got 'loud'"),
        ("DATABASE_PORT", "expected an integer 1..65535, got '70000'"),
        ("DATABASE_NAME", "required when DATABASE_HOST is set"),
        ("DATABASE_USER", "required when DATABASE_HOST is set"),
        (
            "DATABASE_PASSWORD_FILE",
            "expected the path of a readable file holding the secret, "
            f"got '{tmp_path / 'missing'}' (no such file)",
        ),
        (
            "REDIS_NODES",
            "expected comma-separated host:port pairs, e.g. 'redis-0:6379,redis-1:6379', "
            "got 'redis-0:6379,redis-1' ('redis-1' is not host:port)",
        ),
        ("CACHE_TTL_CARTS", "expected a whole number of seconds > 0, got '0'"),
        (
            "JWT_SECRET_FILE",
            "expected the path of a readable file holding at least 32 bytes, "
            f"got '{short}' (it holds only 9 bytes)",
        ),
    ]
    message = str(error.value)
    assert message.startswith("invalid environment for service 'user' (10 problems):\n")
    assert "  - PORT: expected an integer 1..65535, got 'abc'" in message.splitlines()


def test_a_replica_needs_the_primary_and_empty_variables_count_as_unset() -> None:
    environ = {"SERVICE_NAME": "x", "ENVIRONMENT": "dev", "PORT": "1", "DATABASE_READ_HOST": "r"}
    with pytest.raises(SettingsError) as error:
        Settings.from_env(environ | {"MEMCACHED_NODES": " "})
    assert [variable for variable, _ in error.value.problems] == ["DATABASE_HOST"]


def test_secret_files_must_be_readable_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    base = {"SERVICE_NAME": "x", "ENVIRONMENT": "dev", "PORT": "8080"}
    for path, why in ((tmp_path / "empty", "the file is empty"), (tmp_path, "it is a directory")):
        with pytest.raises(SettingsError) as error:
            Settings.from_env(base | {"REDIS_PASSWORD_FILE": str(path)})
        ((variable, problem),) = error.value.problems
        assert variable == "REDIS_PASSWORD_FILE" and problem.endswith(f"({why})")


def test_services_extend_the_settings_with_their_own_variables() -> None:
    class PaymentSettings(Settings):
        provider_timeout_s: Annotated[float, Field(gt=0, le=30), Expect("seconds in (0, 30]")] = 5

    base = {"SERVICE_NAME": "payment", "ENVIRONMENT": "dev", "PORT": "8080"}
    assert PaymentSettings.from_env(base).provider_timeout_s == 5
    assert PaymentSettings.from_env(base | {"PROVIDER_TIMEOUT_S": "2.5"}).provider_timeout_s == 2.5
    with pytest.raises(SettingsError) as error:
        PaymentSettings.from_env(base | {"PROVIDER_TIMEOUT_S": "60"})
    assert error.value.problems == [("PROVIDER_TIMEOUT_S", "expected seconds in (0, 30], got '60'")]


def test_load_prints_the_problems_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("SERVICE_NAME", "ENVIRONMENT", "PORT"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as exited:
        Settings.load()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid environment (3 problems):")
    assert "SERVICE_NAME: missing" in err and "PORT: missing" in err

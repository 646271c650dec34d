"""Typed stack configuration, validated before any resource is created.

`Pulumi.<stack>.yaml` holds sizes and switches only; everything else (the services, their
scaling policies, who may call whom) lives in `stacks/services.py`. The sections a component
takes are that component's own input models (`components.postgres.PostgresConfig`, ...).
This module turns the raw config of a stack into a frozen `StackConfig`, or fails with one
message that names every bad key (`ecommerce:nodePools.apps.minNodes`) and what was expected.

`load_stack_config` is pure so tests and the offline render can feed it a stack file directly;
`from_pulumi` collects the same raw values from the Pulumi engine for `pulumi up`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from email.utils import parseaddr
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from components.cluster import ClusterConfig, NodePools
from components.conf.pgpool import SPARE_CLIENTS
from components.conf.postgres import smallest_quorum
from components.inputs import Inputs, KeyProblem, PositiveInt
from components.memcached import MemcachedConfig
from components.postgres import PostgresConfig
from components.redis import RedisConfig
from components.volume_backups import VolumeBackupConfig
from stacks.services import SERVICES, Dependency, users_of

PROJECT = "ecommerce"
ENVIRONMENTS = ("dev", "staging", "prod")

# Secret config: never in a stack file in clear, set with `pulumi config set --secret KEY`.
SECRET_KEYS = {
    "pagerdutyRoutingKey": "PagerDuty Events v2 routing key for critical alerts",
    "slackWebhookUrl": "Slack incoming-webhook URL for warning alerts",
    "stripeApiKey": "the primary payment provider's secret API key",
    "paypalApiKey": "the secondary payment provider's OAuth2 client credentials, client_id:secret",
    "warehouseApiKey": "the warehouse's API key (fulfilment hands confirmed orders to it)",
    "smtpPassword": "the mail relay's password for smtp.user (password-reset e-mails)",
}


class ConfigError(ValueError):
    """A stack's config is invalid; the message names each bad key and what it expects."""


# --- network and cluster ----------------------------------------------------------------------


class AuthorizedNetwork(Inputs):
    name: str = Field(min_length=1)
    cidr: str

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return str(_ipv4_network(value))


class NetworkConfig(Inputs):
    subnet_cidr: str
    pods_cidr: str
    services_cidr: str
    # The control plane's private range: a /28 that no other range may overlap.
    master_cidr: str
    master_authorized_networks: tuple[AuthorizedNetwork, ...] = Field(min_length=1)
    # Who may reach the gateway's public load balancer.
    gateway_source_ranges: tuple[str, ...] = ("0.0.0.0/0",)

    @field_validator("subnet_cidr", "pods_cidr", "services_cidr", "master_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return str(_ipv4_network(value))

    @model_validator(mode="after")
    def _ranges(self) -> NetworkConfig:
        if ipaddress.ip_network(self.master_cidr).prefixlen != 28:
            raise KeyProblem(
                "masterCidr", f"expected a /28 (GKE's requirement), got {self.master_cidr}"
            )
        ranges = {
            "subnetCidr": self.subnet_cidr,
            "podsCidr": self.pods_cidr,
            "servicesCidr": self.services_cidr,
            "masterCidr": self.master_cidr,
        }
        names = list(ranges)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if ipaddress.ip_network(ranges[a]).overlaps(ipaddress.ip_network(ranges[b])):
                    raise KeyProblem(
                        b,
                        f"expected a range that does not overlap {a} ({ranges[a]}), "
                        f"got {ranges[b]}",
                    )
        return self


# --- data tier --------------------------------------------------------------------------------


class CacheTtls(Inputs):
    """Seconds each kind of cached data lives (seed: sessions 24 h, catalog 1 h, ...)."""

    sessions: PositiveInt = 24 * 3600
    catalog: PositiveInt = 3600
    search: PositiveInt = 15 * 60
    popular_products: PositiveInt = 30 * 60
    carts: PositiveInt = 7 * 24 * 3600


# --- workloads --------------------------------------------------------------------------------


class ServiceOverride(Inputs):
    """Per-stack bounds for a service of the service table (dev runs fewer replicas)."""

    min_replicas: PositiveInt | None = None
    max_replicas: PositiveInt | None = None


class ImagesConfig(Inputs):
    """CI-built images (`repo@sha256:<digest>`) to deploy instead of building them here."""

    service: str | None = None
    gateway: str | None = None
    postgres: str | None = None
    pgpool: str | None = None
    redis: str | None = None
    memcached: str | None = None

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        if value is not None and not re.search(r"@sha256:[0-9a-f]{64}$", value):
            raise ValueError(
                f"expected an image pinned by digest (repo@sha256:<64 hex>), got {value!r}"
            )
        return value

    def prebuilt(self) -> dict[str, str]:
        return {target: ref for target, ref in self.model_dump().items() if ref is not None}


class PaymentProvidersConfig(Inputs):
    """Where the payment service reaches its providers (primary first; it fails over)."""

    stripe: str = Field(default="https://api.stripe.com", pattern=r"^https://\S+$")
    paypal: str = Field(default="https://api-m.paypal.com", pattern=r"^https://\S+$")


class WarehouseConfig(Inputs):
    """The fulfilment partner confirmed orders are handed to (services.order.fulfilment)."""

    url: str = Field(pattern=r"^https://\S+$")


class SmtpConfig(Inputs):
    """The outside relay the user service sends password-reset e-mails through.

    GKE blocks outbound port 25, so: a submission port with authentication (SendGrid's
    relay by default: user `apikey`, the API key as the password, `smtpPassword`)."""

    host: str = Field(
        default="smtp.sendgrid.net",
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$",
    )
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    # starttls: plain connection upgraded with STARTTLS (587); tls: TLS from the start (465).
    security: Literal["starttls", "tls", "none"] = "starttls"
    # The From of the e-mails; the service checks it again (SMTP_FROM).
    sender: str = Field(default="Shop <no-reply@shop.example.com>", alias="from")
    user: str | None = Field(default="apikey", min_length=1)

    @field_validator("sender")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        local, at, domain = parseaddr(value)[1].rpartition("@")
        if not (local and at and "." in domain) or "\n" in value or "\r" in value:
            raise ValueError(
                f"expected an address such as 'Shop <no-reply@shop.example.com>', got {value!r}"
            )
        return value


class AlertingConfig(Inputs):
    slack_channel: str = "#shop-alerts"
    # Warnings reach chat on weekdays 09:00-18:00 in this IANA time zone.
    business_hours_time_zone: str = "Europe/Brussels"

    @field_validator("business_hours_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"expected an IANA time zone such as Europe/Brussels, got {value!r}"
            ) from None
        return value


class StackConfig(Inputs):
    environment: Literal["dev", "staging", "prod"]
    gcp_project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    region: str = Field(pattern=r"^[a-z]+-[a-z]+\d$")
    zones: tuple[str, ...] = Field(min_length=1)
    cost_center: str = Field(pattern=r"^[a-z0-9_-]{1,63}$")
    network: NetworkConfig
    cluster: ClusterConfig = ClusterConfig()
    node_pools: NodePools
    postgres: PostgresConfig = PostgresConfig()
    redis: RedisConfig = RedisConfig()
    memcached: MemcachedConfig = MemcachedConfig()
    volume_backups: VolumeBackupConfig = VolumeBackupConfig()
    cache_ttl: CacheTtls = CacheTtls()
    services: dict[str, ServiceOverride] = {}
    images: ImagesConfig = ImagesConfig()
    alerting: AlertingConfig = AlertingConfig()
    payment_providers: PaymentProvidersConfig = PaymentProvidersConfig()
    warehouse: WarehouseConfig
    smtp: SmtpConfig = SmtpConfig()
    # Advisory budget for the estimated monthly node cost (policy pack).
    monthly_budget_usd: PositiveInt | None = None

    @model_validator(mode="after")
    def _whole_stack(self) -> StackConfig:
        for i, zone in enumerate(self.zones):
            if not zone.startswith(f"{self.region}-"):
                raise KeyProblem(
                    f"zones[{i}]",
                    f"expected a zone of region {self.region} ({self.region}-a, ...), got {zone}",
                )
        if len(set(self.zones)) != len(self.zones):
            raise KeyProblem("zones", f"expected distinct zones, got {list(self.zones)}")
        if self.postgres.backups.secondary_region == self.region:
            raise KeyProblem(
                "postgres.backups.secondaryRegion",
                f"expected another region than the cluster's ({self.region}): the copy is there "
                "for when this region is lost",
            )
        if self.environment == "prod" and len(self.zones) < 3:
            raise KeyProblem(
                "zones", f"expected 3 zones in prod (a regional cluster), got {len(self.zones)}"
            )
        if self.environment == "prod":
            for i, net in enumerate(self.network.master_authorized_networks):
                if ipaddress.ip_network(net.cidr).prefixlen == 0:
                    raise KeyProblem(
                        f"network.masterAuthorizedNetworks[{i}].cidr",
                        "expected a specific range in prod "
                        "(the control plane is never open to 0.0.0.0/0)",
                    )
        if self.environment != "dev" and self.smtp.security == "none":
            raise KeyProblem(
                "smtp.security",
                f"expected starttls or tls in {self.environment} (the relay's password and the "
                "reset tokens would cross the internet in clear), got none",
            )
        for name, override in self.services.items():
            if name not in SERVICES:
                raise KeyProblem(
                    f"services.{name}", f"unknown service; expected one of {', '.join(SERVICES)}"
                )
            spec = SERVICES[name].scaling
            low = override.min_replicas or spec.min_replicas
            high = override.max_replicas or spec.max_replicas
            if low > high:
                raise KeyProblem(
                    f"services.{name}.minReplicas", f"expected <= maxReplicas ({high}), got {low}"
                )
        members = self.postgres.replicas + 1
        quorum = smallest_quorum(members, self.zones)
        if self.postgres.synchronous_standbys > quorum:
            raise KeyProblem(
                "postgres.synchronousStandbys",
                f"expected <= {quorum}: a commit waits for standbys outside the primary's zone, "
                f"and {members} members over zones {list(self.zones)} leave some member only "
                f"{quorum} of those (add zones or replicas, or wait for fewer), got "
                f"{self.postgres.synchronous_standbys}",
            )
        self._check_node_envelope()
        self._check_database_clients()
        return self

    def database_clients_at_max(self) -> dict[str, int]:
        """PostgreSQL connections each service's pods hold at their HPA maximum (maxReplicas x
        the service table's database_connections): what PgPool-II's children must take."""
        return {
            svc.name: self.replicas_for(svc.name)[1] * svc.database_connections
            for svc in users_of(Dependency.POSTGRES)
        }

    def _check_database_clients(self) -> None:
        """Every pooled connection pins one PgPool-II child; a client past the last child
        waits for one to come free, which with pooled connections is for ever. So every pod
        at its maximum, plus the jobs, must fit the children, on purpose and checked here."""
        pgpool = self.postgres.pgpool
        clients = self.database_clients_at_max()
        needed, offered = (
            sum(clients.values()) + SPARE_CLIENTS,
            pgpool.replicas * pgpool.num_init_children,
        )
        if needed > offered:
            biggest = max(clients, key=clients.__getitem__)
            raise KeyProblem(
                "postgres.pgpool.numInitChildren",
                f"expected >= {-(-needed // pgpool.replicas)}: at their maxReplicas the service "
                f"pods hold {sum(clients.values())} connections "
                f"({', '.join(f'{n} {c}' for n, c in clients.items())}) plus {SPARE_CLIENTS} for "
                f"jobs, and {pgpool.replicas} pgpool(s) x numInitChildren offer {offered}; raise "
                f"it, or lower services.{biggest}.maxReplicas, got {pgpool.num_init_children}",
            )

    def _check_node_envelope(self) -> None:
        floor = sum(pool.min_nodes for _, pool in self.node_pools.items())
        ceiling = sum(pool.max_nodes for _, pool in self.node_pools.items())
        if floor < self.cluster.min_nodes:
            raise KeyProblem(
                "nodePools",
                f"expected pool minimums summing to >= cluster.minNodes "
                f"({self.cluster.min_nodes}), got {floor}",
            )
        if ceiling > self.cluster.max_nodes:
            raise KeyProblem(
                "nodePools",
                f"expected pool maximums summing to <= cluster.maxNodes "
                f"({self.cluster.max_nodes}), got {ceiling}",
            )
        if self.environment == "prod" and floor < 2 * len(self.zones):
            raise KeyProblem(
                "nodePools",
                f"expected at least 2 nodes per zone in prod ({2 * len(self.zones)}), got {floor}",
            )
        for name, pool in self.node_pools.items():
            # Zone-pinned data needs a node in every zone.
            if name in ("databases", "caches") and pool.min_nodes < len(self.zones):
                raise KeyProblem(
                    f"nodePools.{name}.minNodes",
                    f"expected >= {len(self.zones)} (one per zone), got {pool.min_nodes}",
                )

    def outside_urls(self) -> dict[str, str]:
        """Every outside party's base URL, by its name in the service table."""
        return {**self.payment_providers.model_dump(), "warehouse": self.warehouse.url}

    def replicas_for(self, service: str) -> tuple[int, int]:
        """The HPA bounds of a service in this stack: the table's, narrowed by the stack file."""
        spec = SERVICES[service].scaling
        override = self.services.get(service, ServiceOverride())
        return (
            override.min_replicas or spec.min_replicas,
            override.max_replicas or spec.max_replicas,
        )


# --- loading ----------------------------------------------------------------------------------


def load_stack_config(
    raw: Mapping[str, Any], stack: str, secrets_present: set[str] | None = None
) -> StackConfig:
    """Validate a stack's raw config: `{"ecommerce:nodePools": {...}, "gcp:project": ...}`.

    Values may be JSON strings (as the Pulumi engine passes objects) or already decoded.
    `secrets_present` names the secret keys the stack has set; a missing one is an error.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        namespace, _, name = key.partition(":")
        if namespace == "gcp" and name in ("project", "region"):
            values["gcpProject" if name == "project" else "region"] = _decode(value)
        elif namespace == PROJECT and name not in SECRET_KEYS:
            values[name] = _decode(value)
    for key, what in SECRET_KEYS.items():
        if secrets_present is not None and key not in secrets_present:
            problems.append(
                f"{PROJECT}:{key}: required secret is missing ({what}); "
                f"set it with `pulumi config set --secret {key} <value> -s {stack}`"
            )
    try:
        config = StackConfig.model_validate(values)
    except ValidationError as err:
        problems[:0] = [_describe(e) for e in err.errors()]
        config = None
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid config for stack {stack!r} (Pulumi.{stack}.yaml):\n{lines}")
    assert config is not None
    return config


def from_pulumi() -> tuple[StackConfig, dict[str, Any]]:
    """Read and validate the running stack's config; returns it with the secret Outputs."""
    import pulumi

    project = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    for field in StackConfig.model_fields.values():
        alias = field.alias or ""
        if alias in ("gcpProject", "region"):
            continue
        value = project.get(alias)
        if value is not None:
            raw[f"{PROJECT}:{alias}"] = value
    gcp = pulumi.Config("gcp")
    for key in ("project", "region"):
        if (value := gcp.get(key)) is not None:
            raw[f"gcp:{key}"] = value
    present = {
        key for key in SECRET_KEYS if pulumi.runtime.get_config(f"{PROJECT}:{key}") is not None
    }
    config = load_stack_config(raw, pulumi.get_stack(), secrets_present=present)
    secrets = {key: project.require_secret(key) for key in SECRET_KEYS}
    return config, secrets


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _describe(error: Any) -> str:
    path = [str(p) if isinstance(p, str) else f"[{p}]" for p in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyProblem):
        path.append(cause.key)
        message = cause.problem
    else:
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key; expected one of {', '.join(_allowed_keys(error['loc'][:-1]))}"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif "input" in error and not isinstance(error["input"], dict | list):
            message = f"{message} (got {error['input']!r})"
    key = ".".join(path).replace(".[", "[")
    namespace = "gcp" if key in ("gcpProject", "region") else PROJECT
    key = {"gcpProject": "project"}.get(key, key)
    return f"{namespace}:{key}: {message}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at `loc` accepts, for naming them in an 'unknown key' error."""
    model: Any = StackConfig
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        field = next(f for n, f in model.model_fields.items() if part in (n, f.alias))
        model = field.annotation
        args = [a for a in getattr(model, "__args__", ()) if isinstance(a, type)]
        if args and not (isinstance(model, type) and issubclass(model, BaseModel)):
            model = args[-1]
    if isinstance(model, type) and issubclass(model, BaseModel):
        keys = [f.alias or n for n, f in model.model_fields.items()]
        # gcp:project and gcp:region are set in the gcp namespace, not ours.
        return [k for k in keys if not (model is StackConfig and k in ("gcpProject", "region"))]
    return []


def _ipv4_network(value: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        raise ValueError(
            f"expected an IPv4 CIDR such as 10.0.0.0/20, got {value!r} ({err})"
        ) from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"expected an IPv4 CIDR, got {value!r}")
    return network

"""Stack config validation: every stack file is valid, and bad config fails before any
resource exists, with one message naming the key and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.config import SECRET_KEYS, ConfigError, StackConfig, load_stack_config
from stacks.services import OUTSIDE_PARTIES, SERVICE_TABLE

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "staging", "prod")


def stack_file(stack: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]


def load(raw: dict[str, Any], stack: str = "prod", secrets: set[str] | None = None) -> StackConfig:
    return load_stack_config(raw, stack, set(SECRET_KEYS) if secrets is None else secrets)


def error_of(raw: dict[str, Any], stack: str = "prod", secrets: set[str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(raw, stack, secrets)
    return str(caught.value)


@pytest.fixture
def prod() -> dict[str, Any]:
    return copy.deepcopy(stack_file("prod"))


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_is_valid(stack: str) -> None:
    config = load(stack_file(stack), stack)
    assert config.environment == stack


def test_objects_may_arrive_as_json_strings_as_the_engine_passes_them(prod: dict[str, Any]) -> None:
    import json

    raw = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in prod.items()}
    assert load(raw) == load(prod)


def test_min_replicas_above_max_names_the_service_key(prod: dict[str, Any]) -> None:
    prod["ecommerce:services"] = {"product": {"minReplicas": 9, "maxReplicas": 4}}
    message = error_of(prod)
    assert "ecommerce:services.product.minReplicas: expected <= maxReplicas (4), got 9" in message


def test_min_replicas_above_the_tables_max_is_caught_too(prod: dict[str, Any]) -> None:
    prod["ecommerce:services"] = {"payment": {"minReplicas": 50}}
    assert (
        "ecommerce:services.payment.minReplicas: expected <= maxReplicas (8), got 50"
        in error_of(prod)
    )


def test_unknown_service_override(prod: dict[str, Any]) -> None:
    prod["ecommerce:services"] = {"shipping": {"minReplicas": 1}}
    message = error_of(prod)
    assert "ecommerce:services.shipping: unknown service; expected one of gateway, user" in message


def test_zone_outside_the_region(prod: dict[str, Any]) -> None:
    prod["ecommerce:zones"][2] = "us-central1-a"
    message = error_of(prod)
    assert "ecommerce:zones[2]: expected a zone of region europe-west1" in message
    assert "got us-central1-a" in message


def test_unknown_node_pool_lists_the_known_ones(prod: dict[str, Any]) -> None:
    prod["ecommerce:nodePools"]["gpu"] = {
        "machineType": "a2-highgpu-1",
        "minNodes": 0,
        "maxNodes": 1,
    }
    message = error_of(prod)
    assert (
        "ecommerce:nodePools.gpu: unknown key; expected one of apps, databases, caches, payments"
        in message
    )


def test_node_pool_min_above_max(prod: dict[str, Any]) -> None:
    prod["ecommerce:nodePools"]["apps"]["minNodes"] = 12
    assert "ecommerce:nodePools.apps.minNodes: expected <= maxNodes (9), got 12" in error_of(prod)


def test_pools_must_fit_the_cluster_envelope(prod: dict[str, Any]) -> None:
    prod["ecommerce:nodePools"]["apps"]["maxNodes"] = 30
    assert (
        "ecommerce:nodePools: expected pool maximums summing to <= cluster.maxNodes (20), got 41"
        in error_of(prod)
    )


def test_zone_pinned_pools_need_a_node_per_zone(prod: dict[str, Any]) -> None:
    prod["ecommerce:nodePools"]["databases"]["minNodes"] = 2
    assert (
        "ecommerce:nodePools.databases.minNodes: expected >= 3 (one per zone), got 2"
        in error_of(prod)
    )


@pytest.mark.parametrize("ttl", ["sessions", "catalog", "search", "popularProducts", "carts"])
def test_negative_ttl(prod: dict[str, Any], ttl: str) -> None:
    prod["ecommerce:cacheTtl"] = {ttl: -5}
    message = error_of(prod)
    assert f"ecommerce:cacheTtl.{ttl}: Input should be greater than 0 (got -5)" in message


def test_missing_secrets_are_named_with_how_to_set_them(prod: dict[str, Any]) -> None:
    message = error_of(prod, secrets={"slackWebhookUrl"})
    assert "ecommerce:pagerdutyRoutingKey: required secret is missing" in message
    assert "pulumi config set --secret pagerdutyRoutingKey <value> -s prod" in message
    assert "slackWebhookUrl" not in message


def test_open_master_network_is_refused_in_prod(prod: dict[str, Any]) -> None:
    prod["ecommerce:network"]["masterAuthorizedNetworks"] = [
        {"name": "anyone", "cidr": "0.0.0.0/0"}
    ]
    message = error_of(prod)
    assert (
        "ecommerce:network.masterAuthorizedNetworks[0].cidr: expected a specific range in prod"
        in message
    )


def test_overlapping_ranges(prod: dict[str, Any]) -> None:
    prod["ecommerce:network"]["servicesCidr"] = "10.10.4.0/22"  # inside subnetCidr
    assert (
        "ecommerce:network.servicesCidr: expected a range that does not overlap subnetCidr"
        in error_of(prod)
    )


def test_bad_cidr(prod: dict[str, Any]) -> None:
    prod["ecommerce:network"]["podsCidr"] = "10.20.0.0/33"
    assert "ecommerce:network.podsCidr: expected an IPv4 CIDR" in error_of(prod)


def test_even_pgpool_count_has_no_quorum(prod: dict[str, Any]) -> None:
    prod["ecommerce:postgres"]["pgpool"]["replicas"] = 2
    assert "ecommerce:postgres.pgpool.replicas: expected 1 or an odd number >= 3" in error_of(prod)


def test_pgpool_is_sized_for_every_pod_at_its_hpa_maximum(prod: dict[str, Any]) -> None:
    """On purpose: the connections of every service's pods at maxReplicas, from the service
    table, plus the jobs', fit PgPool-II's children (prod: 282 + 8 <= 3 x 100)."""
    clients = load(prod).database_clients_at_max()
    assert clients == {"user": 40, "product": 80, "order": 90, "payment": 24, "inventory": 48}
    prod["ecommerce:services"] = {"product": {"maxReplicas": 22}}  # 290 + 8 = 298 <= 300
    assert load(prod).database_clients_at_max()["product"] == 88


def test_pods_at_their_maxima_beyond_pgpool_name_the_keys(prod: dict[str, Any]) -> None:
    prod["ecommerce:services"] = {"order": {"maxReplicas": 18}}  # 300 + 8 > 300
    assert (
        "ecommerce:postgres.pgpool.numInitChildren: expected >= 103: at their maxReplicas the "
        "service pods hold 300 connections (user 40, product 80, order 108, payment 24, "
        "inventory 48) plus 8 for jobs, and 3 pgpool(s) x numInitChildren offer 300; raise it, "
        "or lower services.order.maxReplicas, got 100"
    ) in error_of(prod)


def test_synchronous_standbys_must_leave_a_quorum_outside_every_zone(
    prod: dict[str, Any],
) -> None:
    """4 members over 3 zones: pg-0 and pg-3 share one, so each has 2 standbys outside it."""
    prod["ecommerce:postgres"]["synchronousStandbys"] = 3
    assert (
        "ecommerce:postgres.synchronousStandbys: expected <= 2: a commit waits for standbys "
        "outside the primary's zone"
    ) in error_of(prod)


def test_more_synchronous_standbys_than_replicas(prod: dict[str, Any]) -> None:
    prod["ecommerce:postgres"]["synchronousStandbys"] = 4
    assert "ecommerce:postgres.synchronousStandbys: expected <= replicas (3), got 4" in error_of(
        prod
    )


def test_unknown_top_level_key(prod: dict[str, Any]) -> None:
    prod["ecommerce:replicaCount"] = 3
    message = error_of(prod)
    assert "ecommerce:replicaCount: unknown key; expected one of environment," in message


def test_missing_required_key(prod: dict[str, Any]) -> None:
    del prod["ecommerce:nodePools"]
    assert "ecommerce:nodePools: required key is missing" in error_of(prod)


def test_confidential_nodes_need_an_amd_machine_type(prod: dict[str, Any]) -> None:
    prod["ecommerce:nodePools"]["payments"]["machineType"] = "e2-standard-4"
    message = error_of(prod)
    expected = "ecommerce:nodePools.payments.machineType: expected an n2d/c2d/c3d machine type"
    assert expected in message


def test_prebuilt_image_must_be_pinned_by_digest(prod: dict[str, Any]) -> None:
    prod["ecommerce:images"] = {"service": "europe-docker.pkg.dev/acme/shop/service:latest"}
    assert "ecommerce:images.service: expected an image pinned by digest" in error_of(prod)


def test_every_problem_is_reported_at_once(prod: dict[str, Any]) -> None:
    prod["ecommerce:nodePools"]["apps"]["minNodes"] = 12
    prod["ecommerce:cacheTtl"] = {"search": 0}
    message = error_of(prod, secrets=set())
    assert message.count("\n  - ") == 2 + len(SECRET_KEYS)


def test_replicas_for_narrows_the_table_by_the_stack() -> None:
    assert load(stack_file("prod")).replicas_for("product") == (5, 20)
    assert load(stack_file("dev"), "dev").replicas_for("product") == (1, 2)


def test_the_mail_relay_has_defaults_and_a_stack_may_set_it(prod: dict[str, Any]) -> None:
    smtp = load(prod).smtp
    assert (smtp.host, smtp.port, smtp.security, smtp.user) == (
        "smtp.sendgrid.net",
        587,
        "starttls",
        "apikey",
    )
    prod["ecommerce:smtp"] = {"host": "smtp.mailgun.org", "port": 465, "security": "tls"}
    prod["ecommerce:smtp"] |= {"from": "Acme Shop <shop@acme.example>", "user": "postmaster"}
    smtp = load(prod).smtp
    assert (smtp.host, smtp.port, smtp.sender) == (
        "smtp.mailgun.org",
        465,
        "Acme Shop <shop@acme.example>",
    )


@pytest.mark.parametrize(
    ("smtp", "says"),
    [
        ({"from": "nobody"}, "ecommerce:smtp.from: expected an address such as"),
        ({"port": 0}, "ecommerce:smtp.port: Input should be greater than or equal to 1"),
        ({"security": "ssl"}, "ecommerce:smtp.security: Input should be 'starttls', 'tls' or"),
        ({"security": "none"}, "ecommerce:smtp.security: expected starttls or tls in prod"),
        # The password is secret config (smtpPassword), never a key of the stack file.
        ({"password": "hunter2"}, "ecommerce:smtp.password: unknown key; expected one of host,"),
    ],
)
def test_a_bad_mail_relay_names_the_key(prod: dict[str, Any], smtp: dict, says: str) -> None:
    prod["ecommerce:smtp"] = smtp
    assert says in error_of(prod)


def test_plain_smtp_is_allowed_in_dev_only() -> None:
    dev = copy.deepcopy(stack_file("dev")) | {"ecommerce:smtp": {"security": "none"}}
    assert load(dev, "dev").smtp.security == "none"


def test_every_outside_party_the_services_call_has_a_url_and_a_secret_key(
    prod: dict[str, Any],
) -> None:
    config = load(prod)
    called = {party for service in SERVICE_TABLE for party in service.outside}
    assert called == set(OUTSIDE_PARTIES) == set(config.outside_urls())
    assert all(url.startswith("https://") for url in config.outside_urls().values())
    assert {f"{party}ApiKey" for party in OUTSIDE_PARTIES} <= set(SECRET_KEYS)


@pytest.mark.parametrize(
    ("warehouse", "says"),
    [
        (None, "ecommerce:warehouse: required key is missing"),
        ({"url": "http://wms.example.com"}, "ecommerce:warehouse.url:"),
        ({}, "ecommerce:warehouse.url: required key is missing"),
    ],
)
def test_a_missing_or_plain_http_warehouse_names_the_key(
    prod: dict[str, Any], warehouse: dict[str, str] | None, says: str
) -> None:
    if warehouse is None:
        del prod["ecommerce:warehouse"]
    else:
        prod["ecommerce:warehouse"] = warehouse
    assert says in error_of(prod)


def test_the_warehouse_key_is_a_required_secret(prod: dict[str, Any]) -> None:
    assert "warehouseApiKey" in error_of(prod, secrets=set(SECRET_KEYS) - {"warehouseApiKey"})


def test_a_business_hours_time_zone_that_does_not_exist_names_the_key(
    prod: dict[str, Any],
) -> None:
    prod["ecommerce:alerting"] = {"businessHoursTimeZone": "Europe/Atlantis"}
    assert "ecommerce:alerting.businessHoursTimeZone: expected an IANA time zone" in error_of(prod)
    prod["ecommerce:alerting"] = {"businessHoursTimeZone": "America/New_York"}
    assert load(prod).alerting.business_hours_time_zone == "America/New_York"


def test_the_backups_copy_must_be_in_another_region(prod: dict[str, Any]) -> None:
    prod["ecommerce:postgres"]["backups"]["secondaryRegion"] = "europe-west1"
    message = error_of(prod)
    assert "ecommerce:postgres.backups.secondaryRegion: expected another region" in message


def test_a_coldline_copy_kept_less_than_its_minimum_storage_is_refused(
    prod: dict[str, Any],
) -> None:
    prod["ecommerce:postgres"]["backups"]["secondaryDays"] = 30
    message = error_of(prod)
    assert "ecommerce:postgres.backups.secondaryDays: expected >= 90" in message
    assert "got 30" in message


def test_a_volume_backup_lock_longer_than_its_retention_is_refused(prod: dict[str, Any]) -> None:
    prod["ecommerce:volumeBackups"] = {"retainDays": 3, "deleteLockDays": 7}
    message = error_of(prod)
    assert "ecommerce:volumeBackups.deleteLockDays: expected 0..retainDays (3), got 7" in message

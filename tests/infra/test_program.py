"""The Pulumi program itself, as `pulumi up` runs it: bad config stops it before any resource
is registered, and the error names the key."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pulumi
import pytest
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from stacks.config import PROJECT, SECRET_KEYS, ConfigError
from tests.stacks.test_config import stack_file


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.registered: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.registered.append(args.typ)
        return f"{args.name}-id", {**args.inputs, "name": args.name}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


def run_program(
    raw: dict[str, Any], secrets: dict[str, str]
) -> tuple[Recorder, BaseException | None]:
    # Pulumi's runtime drives its own loop on the main thread; earlier async tests may have
    # closed the default one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    config |= {f"{PROJECT}:{k}": v for k, v in secrets.items()}
    pulumi.runtime.set_all_config(config, [f"{PROJECT}:{k}" for k in secrets])
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack="prod", preview=True)
    from infra.program import main

    try:
        _sync_await(run_pulumi_func(main))
    except BaseException as err:  # the test inspects whatever the engine raised
        return recorder, err
    return recorder, None


ALL_SECRETS = {key: f"test-{key}" for key in SECRET_KEYS}


def test_bad_config_fails_before_any_resource_is_registered() -> None:
    raw = stack_file("prod")
    raw["ecommerce:nodePools"]["apps"]["minNodes"] = 12
    recorder, error = run_program(raw, ALL_SECRETS)
    assert isinstance(error, ConfigError)
    assert "ecommerce:nodePools.apps.minNodes: expected <= maxNodes (9), got 12" in str(error)
    assert recorder.registered == []


def test_a_missing_secret_fails_before_any_resource_is_registered() -> None:
    recorder, error = run_program(stack_file("prod"), {"slackWebhookUrl": "https://hooks.example"})
    assert isinstance(error, ConfigError)
    assert "ecommerce:pagerdutyRoutingKey: required secret is missing" in str(error)
    assert recorder.registered == []


@pytest.mark.slow
def test_good_config_builds_the_platform() -> None:
    recorder, error = run_program(stack_file("dev"), ALL_SECRETS)
    assert error is None
    assert "gcp:container/cluster:Cluster" in recorder.registered
    assert recorder.registered.count("kubernetes:apps/v1:Deployment") == 6

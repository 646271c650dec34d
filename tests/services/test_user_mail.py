"""Password-reset e-mails for real: the user service against the real data tier, the outbox
relay moving its events to Redis Streams, and the shipped SMTP sink (`services.mailsink`)
receiving what its mailer sends. The token is in the e-mail and nowhere else in clear."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import RedisCluster

from services.kit.events import stream
from services.kit.settings import SettingsError
from services.mailsink import MailSink
from services.user.accounts import RESET_TOPIC, reset_token
from services.user.app import UserSettings, init_app
from stacks.local.data_tier import DataTier
from tests.services.mail import mails_to, token_of

PASSWORD = "correct-horse-42"


def email() -> str:
    return f"reset-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
async def client(aiohttp_client, settings_for, mail_env, outbox_relay) -> TestClient:
    settings = settings_for(UserSettings, "user", BCRYPT_ROUNDS="4", **mail_env)
    return await aiohttp_client(init_app(settings))


async def registered(client: TestClient, address: str) -> int:
    """A new account's id."""
    body = {"email": address, "password": PASSWORD}
    assert (await client.post("/api/users/register", json=body)).status == 202
    login = await client.post("/api/users/login", json=body)
    assert login.status == 200
    token = (await login.json())["access_token"]
    me = await client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
    return int((await me.json())["id"])


async def ask_reset(client: TestClient, address: str) -> None:
    assert (await client.post("/api/users/password-reset", json={"email": address})).status == 202


async def mail_counts(client: TestClient) -> dict[str, float]:
    """The app's password_reset_mails_total by result."""
    text = await (await client.get("/metrics")).text()
    return {
        found["result"]: float(found["value"])
        for found in re.finditer(
            r'^password_reset_mails_total\{result="(?P<result>\w+)"\} (?P<value>\S+)$',
            text,
            re.MULTILINE,
        )
    }


async def test_a_reset_mails_one_token_that_works_and_is_stored_nowhere_in_clear(
    client: TestClient, mail_sink: MailSink, platform: DataTier, redis: RedisCluster
) -> None:
    address = email()
    user_id = await registered(client, address)
    await ask_reset(client, address)

    (mail,) = await mails_to(mail_sink, address)
    assert mail.to == [address] and mail.subject == "Reset your password"
    assert re.fullmatch(r"<reset-[\w-]+@shop\.example\.com>", mail.message_id)
    token = token_of(mail)
    confirm = {"token": token, "new_password": "after-reset-99"}
    assert (await client.post("/api/users/password-reset/confirm", json=confirm)).status == 204
    login = {"email": address, "password": "after-reset-99"}
    assert (await client.post("/api/users/login", json=login)).status == 200

    # Nowhere in clear: the outbox row, the stream entry, the reset row.
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        (payload,) = await connection.fetch(
            "SELECT payload::text FROM outbox WHERE topic = $1 AND key = $2",
            RESET_TOPIC,
            str(user_id),
        )
        (reset,) = await connection.fetch(
            "SELECT row_to_json(r)::text AS text, token_hash, mailed_at "
            "FROM password_resets r WHERE user_id = $1",
            user_id,
        )
    finally:
        await connection.close()
    event = json.loads(payload[0])
    assert set(event) == {"reset_id", "user_id", "expires_at"}  # neither token nor address
    assert token not in payload[0] and address not in payload[0]
    assert reset["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in reset["text"] and reset["mailed_at"] is not None
    entries = [
        fields
        for _, fields in await redis.xrevrange(stream(RESET_TOPIC), count=2000)
        if fields[b"key"] == str(user_id).encode()
    ]
    assert len(entries) == 1
    assert json.loads(entries[0][b"payload"]) == event
    assert token.encode() not in b"".join(entries[0].values())

    # At least once, but not twice: a retry interval later there is still one e-mail.
    await asyncio.sleep(2.0)
    assert len(mail_sink.to(address)) == 1


async def test_resets_asked_during_an_smtp_outage_are_mailed_once_it_is_back(
    client: TestClient, mail_sink: MailSink, platform: DataTier
) -> None:
    port = mail_sink.port
    addresses = [email() for _ in range(3)]
    ids = [await registered(client, address) for address in addresses]
    await mail_sink.stop_smtp()  # the relay is down: connections are refused
    for address in addresses:
        await ask_reset(client, address)
    # A reset that expires during the outage needs no e-mail any more.
    mailed = addresses[:-1]
    connection = await asyncpg.connect(platform.postgres.primary_dsn)
    try:
        await connection.execute(
            "UPDATE password_resets SET expires_at = now() - interval '1 min' WHERE user_id = $1",
            ids[-1],
        )
    finally:
        await connection.close()
    deadline = time.monotonic() + 20
    while (await mail_counts(client)).get("failed", 0) < len(mailed):
        assert time.monotonic() < deadline, "the mailer never tried while the relay was down"
        await asyncio.sleep(0.1)

    await mail_sink.start_smtp(port=port or 0)
    for address in mailed:
        (mail,) = await mails_to(mail_sink, address)
        assert token_of(mail)
    await asyncio.sleep(2.0)  # a retry interval: no second copy, and nothing for the expired
    assert [len(mail_sink.to(address)) for address in addresses] == [1, 1, 0]
    counts = await mail_counts(client)
    assert counts["sent"] >= len(mailed) and counts["skipped"] >= 1


def test_the_token_is_the_keyed_hash_of_the_reset_id() -> None:
    key, other = b"k" * 32, b"o" * 32
    token = reset_token(key, "reset-1")
    assert token == reset_token(key, "reset-1") and len(token) == 43
    assert token != reset_token(key, "reset-2") and token != reset_token(other, "reset-1")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)  # URL-safe, no padding


@pytest.mark.parametrize(
    ("overrides", "variable", "says"),
    [
        ({"SMTP_FROM": "not an address"}, "SMTP_FROM", "Shop <no-reply@shop.example.com>"),
        ({"SMTP_FROM": ""}, "SMTP_FROM", "required when SMTP_HOST is set"),
        ({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY", "one of starttls, tls, none"),
        ({"SMTP_PASSWORD_FILE": "/nonexistent"}, "SMTP_PASSWORD_FILE", "no such file"),
        ({"SMTP_PORT": "0"}, "SMTP_PORT", "1..65535"),
    ],
)
async def test_bad_smtp_settings_name_the_variable(
    settings_for, mail_env: dict[str, str], overrides: dict[str, str], variable: str, says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_for(UserSettings, "user", **{**mail_env, **overrides})
    assert [v for v, _ in caught.value.problems] == [variable]
    assert says in str(caught.value)


async def test_a_retry_sooner_than_an_attempt_lasts_and_a_missing_reset_key_are_refused(
    settings_for, mail_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(
        UserSettings,
        "user",
        **{**mail_env, "SMTP_TIMEOUT_SECONDS": "10", "MAIL_RETRY_SECONDS": "5"},
        RESET_KEY_FILE="",
    )
    with pytest.raises(SettingsError) as caught:
        init_app(settings)
    assert [v for v, _ in caught.value.problems] == ["RESET_KEY_FILE", "MAIL_RETRY_SECONDS"]
    short = tmp_path / "short-key"
    short.write_text("too short")
    with pytest.raises(SettingsError, match=r"RESET_KEY_FILE: expected .* at least 32 bytes"):
        settings_for(UserSettings, "user", RESET_KEY_FILE=str(short))

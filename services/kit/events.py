"""The event bus: the transactional outbox, its relay, and Redis Streams consumer groups.

Redis Streams stand in for the seed's Kafka, behind this small interface (`publish`,
`Consumer`): a stream per topic (`events:<topic>`), a consumer group per subscribing service,
at-least-once delivery, and a dead-letter stream for messages that keep failing.

A service never publishes directly while changing state: it writes an `outbox` row in the
same transaction, and the relay moves committed rows to the streams. A crash between the two
loses nothing: the row stays unpublished and is relayed again, so consumers must be idempotent
(every handler here is keyed by the order, the reservation or the payment it acts on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from services.kit.db import Database
from services.kit.logs import get_logger

log = get_logger(__name__)

STREAM_PREFIX = "events:"
DEAD_LETTER_SUFFIX = ":dead"
STREAM_MAX_LENGTH = 1_000_000  # approximate trim: a bound on memory, far beyond any backlog


def stream(topic: str) -> str:
    return f"{STREAM_PREFIX}{topic}"


@dataclass(frozen=True)
class Event:
    topic: str
    key: str
    payload: dict[str, Any]
    id: str = ""  # the stream entry id, once delivered
    deliveries: int = 1


async def publish(
    redis: RedisCluster | Redis, topic: str, key: str, payload: dict[str, Any]
) -> str:
    entry = await redis.xadd(
        stream(topic), _entry(key, payload), maxlen=STREAM_MAX_LENGTH, approximate=True
    )
    return entry.decode() if isinstance(entry, bytes) else entry


def _entry(key: str, payload: dict[str, Any] | str) -> dict[str, str]:
    """A stream entry's fields; an outbox row's payload may come as JSON text already."""
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    return {"key": key, "payload": text}


class OutboxRelay:
    """Moves committed outbox rows to their streams, oldest first, in batches.

    Several relays may run (one per replica): `FOR UPDATE SKIP LOCKED` gives each batch to
    one of them, and a row is marked published only after its entry is in the stream."""

    def __init__(self, db: Database, redis: RedisCluster | Redis, batch: int = 200):
        self.db = db
        self.redis = redis
        self.batch = batch

    async def relay_once(self) -> int:
        async with self.db.transaction() as connection:
            rows = await connection.fetch(
                """SELECT id, topic, key, payload FROM outbox
                   WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
                self.batch,
            )
            if rows:
                # One pipeline for the batch, not a round trip per row. If it fails, every row
                # stays unpublished and is relayed again (at least once, as ever).
                async with self.redis.pipeline(transaction=False) as pipe:
                    for row in rows:
                        pipe.xadd(
                            stream(row["topic"]),
                            _entry(row["key"], row["payload"]),
                            maxlen=STREAM_MAX_LENGTH,
                            approximate=True,
                        )
                    await pipe.execute()
                await connection.execute(
                    "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in rows],
                )
        return len(rows)

    async def run(self, stop: asyncio.Event, idle_s: float = 0.2) -> None:
        while not stop.is_set():
            try:
                moved = await self.relay_once()
            except Exception as error:  # the rows stay unpublished: the next round retries
                log.warning("outbox relay failed", error=str(error))
                moved = 0
            if moved < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle_s)


Handler = Callable[[Event], Awaitable[None]]


class Consumer:
    """One member of a consumer group reading some topics, at least once.

    A handler that raises leaves the message pending; after `retry_after_s` any member of the
    group claims and retries it, and after `max_deliveries` it goes to the topic's dead-letter
    stream (`events:<topic>:dead`) and is acknowledged, so one poisoned message never blocks
    the rest.

    Dead letters are not the end: a dependency down for longer than the retries (a payment
    outage) would otherwise leave its orders stuck half-way for good. Every
    `redrive_after_s` the group's own dead letters are handed to the handler again (the
    others' stay theirs), at most `max_redrives` times each, then they stay for people (the
    `events_dead_letters` gauge counts them)."""

    def __init__(
        self,
        redis: RedisCluster | Redis,
        group: str,
        topics: Sequence[str],
        handler: Handler,
        name: str | None = None,
        max_deliveries: int = 5,
        retry_after_s: float = 5.0,
        block_ms: int = 500,
        redrive_after_s: float = 60.0,
        max_redrives: int = 30,
    ):
        self.redis = redis
        self.group = group
        self.topics = list(topics)
        self.handler = handler
        self.name = name or f"{os.uname().nodename}-{os.getpid()}"
        self.max_deliveries = max_deliveries
        self.retry_after_ms = int(retry_after_s * 1000)
        self.block_ms = block_ms
        self.redrive_after_s = redrive_after_s
        self.max_redrives = max_redrives
        self.dead_letters = 0  # this group's, left after the last re-drive round

    async def ensure_groups(self) -> None:
        for topic in self.topics:
            try:
                await self.redis.xgroup_create(stream(topic), self.group, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):  # the group exists: fine
                    raise

    async def poll(self) -> int:
        """One round over every topic: retry what is overdue, then read new messages. Returns
        how many were handled."""
        handled = 0
        for topic in self.topics:
            handled += await self.poll_topic(topic, self.block_ms // len(self.topics))
        return handled

    async def poll_topic(self, topic: str, block_ms: int) -> int:
        """One round on one topic (each stream lives on its own cluster slot)."""
        handled = await self._reclaim(topic)
        response = await self.redis.xreadgroup(
            self.group, self.name, {stream(topic): ">"}, count=50, block=block_ms
        )
        for _, entries in response or []:
            # A batch is handled concurrently: its entries are independent (one order's
            # next event only exists once this one's step has committed).
            await asyncio.gather(
                *(
                    self._handle(topic, entry_id, fields, deliveries=1)
                    for entry_id, fields in entries
                )
            )
            handled += len(entries)
        return handled

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every topic at its own pace until `stop`: one loop per topic, so a slow
        step (payments) never holds up the others (a flash sale's reservations waited for
        each batch of payments when the topics took turns), and the dead-letter re-drive."""
        await self.ensure_groups()
        await asyncio.gather(
            *(self._follow(topic, stop) for topic in self.topics), self._redrive_every(stop)
        )

    async def _follow(self, topic: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_topic(topic, self.block_ms)
            except Exception as error:
                log.warning("event consumer failed", group=self.group, error=str(error))
                await asyncio.sleep(1.0)

    async def _redrive_every(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.redrive_after_s)
                return
            try:
                await self.redrive()
            except Exception as error:
                log.warning("dead-letter re-drive failed", group=self.group, error=str(error))

    async def redrive(self, now_ms: int | None = None) -> int:
        """Hand this group's dead letters that have rested `redrive_after_s` since their last
        try to the handler once more. Returns how many were handled (and removed)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        handled, left = 0, 0
        for topic in self.topics:
            dead = stream(topic) + DEAD_LETTER_SUFFIX
            for entry_id, fields in await self.redis.xrange(dead, count=1000):
                decoded = {_text(k): _text(v) for k, v in fields.items()}
                if decoded.get("group") != self.group:
                    continue
                redrives = int(decoded.get("redrives", "0"))
                tried_ms = int(_text(entry_id).split("-")[0])  # the entry's id is its last try
                if redrives >= self.max_redrives or now_ms - tried_ms < self.redrive_after_s * 1000:
                    left += 1
                    continue
                event = Event(
                    topic, decoded["key"], json.loads(decoded["payload"]), _text(entry_id)
                )
                try:
                    await self.handler(event)
                except Exception as error:
                    failure: Exception | None = error
                else:
                    failure = None
                # Other members of the group may re-drive the same letter at the same time
                # (handlers are idempotent): only the one whose delete took it puts it back.
                removed = await self.redis.xdel(dead, entry_id)
                if failure is None:
                    log.info("dead letter handled", topic=topic, key=event.key, group=self.group)
                    handled += 1
                    continue
                log.warning(
                    "dead letter failed again", topic=topic, key=event.key, error=str(failure)
                )
                left += 1
                if removed:  # back to the end of the line, counted
                    await self.redis.xadd(dead, {**decoded, "redrives": str(redrives + 1)})
        self.dead_letters = left
        return handled

    async def _reclaim(self, topic: str) -> int:
        """Claim messages another member (or this one) failed or abandoned long enough ago."""
        key = stream(topic)
        pending = await self.redis.xpending_range(
            key, self.group, min="-", max="+", count=50, idle=self.retry_after_ms
        )
        retries = []
        for item in pending:
            entry_id, deliveries = item["message_id"], item["times_delivered"]
            claimed = await self.redis.xclaim(
                key, self.group, self.name, self.retry_after_ms, [entry_id]
            )
            for claimed_id, fields in claimed:
                if fields is None:  # trimmed meanwhile
                    await self.redis.xack(key, self.group, claimed_id)
                    continue
                retries.append(self._handle(topic, claimed_id, fields, deliveries=deliveries + 1))
        # Concurrently, like a fresh batch: after a crash the whole backlog waits here.
        await asyncio.gather(*retries)
        return len(retries)

    async def _handle(
        self, topic: str, entry_id: Any, fields: dict[Any, Any], deliveries: int
    ) -> None:
        key = stream(topic)
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        event = Event(
            topic, decoded["key"], json.loads(decoded["payload"]), _text(entry_id), deliveries
        )
        if deliveries > self.max_deliveries:
            await self.redis.xadd(
                key + DEAD_LETTER_SUFFIX,
                {**decoded, "group": self.group, "deliveries": str(deliveries - 1)},
            )
            await self.redis.xack(key, self.group, entry_id)
            log.error("event dead-lettered", topic=topic, key=event.key, group=self.group)
            return
        try:
            await self.handler(event)
        except Exception as error:  # stays pending: retried after retry_after_s
            log.warning("event handler failed", topic=topic, key=event.key, error=str(error))
            return
        await self.redis.xack(key, self.group, entry_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

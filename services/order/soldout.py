"""Sold-out SKUs, heard on the inventory's stock feed: a purchase that cannot succeed is
refused at the door instead of costing an order row, an outbox event and a saga run.

In a flash sale nearly every attempt comes after the last unit is reserved. Without this,
each one became an order that the saga then cancelled: the platform answered ~80 attempts a
second, all of them busy writing orders doomed to be cancelled.

The inventory service stays the authority (the saga's reservation decides every sale); this
is a hint that can only refuse, and it errs towards letting a purchase through:

- a SKU is sold out while the last level published for it has nothing available (units held
  by checkouts in progress may still come back: then a new level is published);
- a hint is trusted for at most `ttl_s`: the inventory service republishes a SKU's level when
  a reservation fails for lack of it, so a sale that stays sold out refreshes its own hint;
- everything is forgotten whenever the subscription is made again, since levels published
  while it was down were missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from services.inventory.feed import CHANNEL
from services.kit.redis import ChannelListener, RedisStore

HINT_TTL_S = 30.0


class SoldOut(ChannelListener):
    """A dependency of the order app (its check never fails: without the feed, every
    purchase simply takes the saga's way)."""

    name = "stock-feed"

    def __init__(self, redis: RedisStore, ttl_s: float = HINT_TTL_S):
        super().__init__(redis, CHANNEL)
        self.ttl_s = ttl_s
        self._since: dict[str, float] = {}  # sku -> when it was last heard sold out

    def heard(self, level: dict[str, Any]) -> None:
        """A level from the feed: {"sku", "available", "reserved", "version"}."""
        if level["available"] > 0:
            self._since.pop(level["sku"], None)
        else:
            self._since[level["sku"]] = time.monotonic()

    def resubscribed(self) -> None:
        """Levels published while no subscription stood are unknown: trust none."""
        self._since.clear()

    def among(self, skus: Iterable[str]) -> list[str]:
        """The SKUs of `skus` known to be sold out right now, sorted."""
        now = time.monotonic()
        return sorted(sku for sku in skus if now - self._since.get(sku, -math.inf) < self.ttl_s)

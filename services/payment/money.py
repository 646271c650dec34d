"""Amounts in minor units (cents) and the decimal strings some providers speak, and the check
that no card number ever travels in a body: the platform handles provider tokens only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

# ISO 4217 currencies without a minor unit: an amount in "cents" is in whole units for them.
ZERO_DECIMAL = frozenset({"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF"})
ZERO_DECIMAL |= frozenset({"UGX", "VND", "VUV", "XAF", "XOF", "XPF"})

# 13 to 19 digits, optionally grouped by spaces or dashes (how people type card numbers).
_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")


def decimals(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL else 2


def format_amount(amount_cents: int, currency: str) -> str:
    """1234 USD -> "12.34"; 1234 JPY -> "1234"."""
    places = decimals(currency)
    if places == 0:
        return str(amount_cents)
    sign = "-" if amount_cents < 0 else ""
    whole, cents = divmod(abs(amount_cents), 10**places)
    return f"{sign}{whole}.{cents:0{places}d}"


def parse_amount(value: str, currency: str) -> int:
    """ "12.34" USD -> 1234. ValueError for anything else than a plain decimal with at most the
    currency's number of decimal places."""
    if not isinstance(value, str) or not re.fullmatch(r"-?\d{1,15}(\.\d{1,3})?", value):
        raise ValueError(f"{value!r} is not a decimal amount")
    try:
        amount = Decimal(value) * 10 ** decimals(currency)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal amount") from None
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} has too many decimal places for {currency}")
    return int(amount)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        yield str(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def contains_pan(value: Any) -> bool:
    """Whether anything in `value` (a decoded body, nested) looks like a card number: 13-19
    digits, possibly grouped, passing the Luhn check."""
    for text in _strings(value):
        for match in _DIGIT_RUN.finditer(text):
            digits = re.sub(r"[ -]", "", match.group())
            if luhn_valid(digits):
                return True
    return False

"""Voiding authorizations a provider holds although the payment went elsewhere.

When a provider fails transiently after being sent an authorization (a timeout, a 5xx, an
answer lost after it acted), the charge moves on to the next provider, or is given up, and the
first one may still hold the customer's money until the authorization expires (days). The
charge records each such provider (`payment_strays`); this sweeper, once the payment has
settled, replays the very same idempotency key at that provider, which returns the original
authorization if there was one (or makes one, if the request never arrived), and voids it.
"""

from __future__ import annotations

from services.kit.logs import get_logger
from services.kit.resilience import BreakerState
from services.payment.ledger import Ledger
from services.payment.providers import PermanentError, TransientError
from services.payment.resilience import PaymentRouter

log = get_logger(__name__)
# Statuses under which the payment itself is an authorization at `paid_with`.
HELD = ("authorized", "captured", "refunded", "voided")


async def sweep_strays(ledger: Ledger, router: PaymentRouter, pending_grace_s: float) -> int:
    """One round; returns how many strays were resolved. A provider still unwell (breaker
    open, transient errors) is left for a later round."""
    resolved = 0
    for stray in await ledger.settled_strays(pending_grace_s):
        provider, payment_id = stray["provider"], stray["payment_id"]
        if stray["paid_with"] == provider and stray["status"] in HELD:
            # A retry of the charge succeeded on this very provider: the hold is the payment.
            await ledger.resolve_stray(payment_id, provider, "is_the_payment")
            resolved += 1
            continue
        if provider not in router.providers:
            continue  # a provider no longer configured: nobody here can void it
        if router.breakers[provider].state is BreakerState.OPEN:
            continue  # half-open lets this call be the trial that may close it
        key = stray["idempotency_key"]
        try:
            held = await router.authorize_at(
                provider, stray["amount_cents"], stray["currency"], stray["token"], key
            )
            await router.void(provider, held.reference, f"{key}:void")
        except PermanentError:  # declined on replay: nothing was ever held
            await ledger.resolve_stray(payment_id, provider, "nothing_held")
        except TransientError as error:
            log.info("stray authorization not voided yet", provider=provider, code=error.code)
            continue
        else:
            log.info("stray authorization voided", provider=provider, payment=payment_id)
            await ledger.resolve_stray(payment_id, provider, "voided")
        resolved += 1
    return resolved

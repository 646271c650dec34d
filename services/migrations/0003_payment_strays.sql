-- Authorizations a provider may hold although we moved on: the provider failed transiently
-- (timeout, 5xx, lost answer) after perhaps acting, and the charge went to the next one or
-- was given up. The payment service's sweeper replays the same idempotency key there once the
-- payment has settled elsewhere, and voids what it finds, so no customer's money stays held.
CREATE TABLE payment_strays (
    payment_id      uuid NOT NULL REFERENCES payments (id),
    provider        text NOT NULL,
    idempotency_key text NOT NULL,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    currency        char(3) NOT NULL,
    token           text NOT NULL,  -- the provider's payment-method token, never card data
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    outcome         text CHECK (outcome IN ('voided', 'nothing_held', 'is_the_payment')),
    PRIMARY KEY (payment_id, provider)
);
CREATE INDEX payment_strays_open ON payment_strays (created_at) WHERE resolved_at IS NULL;

-- The platform's schema: users, catalog, stock, orders (partitioned by month), payments,
-- the transactional outbox and the inventory audit trail.

-- Trigram similarity for product search (a trusted extension: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Users ---------------------------------------------------------------------------------------

CREATE TABLE users (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email               text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash       text NOT NULL,
    full_name           text NOT NULL DEFAULT '' CHECK (length(full_name) <= 200),
    role                text NOT NULL DEFAULT 'customer' CHECK (role IN ('customer', 'admin')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);
-- One account per address, whatever its case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Single-use password reset tokens; only a hash of the token is stored.
CREATE TABLE password_resets (
    token_hash text PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id);

-- Catalog -------------------------------------------------------------------------------------

CREATE TABLE categories (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug       text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 120),
    parent_id  bigint REFERENCES categories (id) ON DELETE RESTRICT,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL UNIQUE CHECK (sku ~ '^[A-Z0-9][A-Z0-9-]{1,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    category_id bigint NOT NULL REFERENCES categories (id) ON DELETE RESTRICT,
    price_cents integer NOT NULL CHECK (price_cents > 0),
    currency    char(3) NOT NULL DEFAULT 'USD',
    attributes  jsonb NOT NULL DEFAULT '{}',
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Full-text search over name (weight A) and description (weight B), kept in the row.
    search      tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', name), 'A')
        || setweight(to_tsvector('english', description), 'B')
    ) STORED
);
CREATE INDEX products_search ON products USING gin (search);
CREATE INDEX products_name_trgm ON products USING gin (name gin_trgm_ops);
CREATE INDEX products_category_price ON products (category_id, price_cents) WHERE active;
CREATE INDEX products_created ON products (created_at DESC) WHERE active;

-- Stock ---------------------------------------------------------------------------------------

CREATE TABLE inventory (
    sku        text PRIMARY KEY REFERENCES products (sku) ON DELETE RESTRICT,
    available  integer NOT NULL CHECK (available >= 0),
    reserved   integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    low_stock_threshold integer NOT NULL DEFAULT 10 CHECK (low_stock_threshold >= 0),
    version    bigint NOT NULL DEFAULT 0,  -- optimistic locking for admin edits
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every stock change, immutable, written in the same statement or transaction as the change.
CREATE TABLE inventory_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku             text NOT NULL REFERENCES inventory (sku),
    kind            text NOT NULL CHECK (kind IN ('stocked', 'reserved', 'released', 'sold', 'adjusted')),
    delta           integer NOT NULL,
    available_after integer NOT NULL CHECK (available_after >= 0),
    reference       text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inventory_events_sku ON inventory_events (sku, id);

CREATE TABLE reservations (
    id         uuid PRIMARY KEY,
    order_id   bigint NOT NULL,
    sku        text NOT NULL REFERENCES inventory (sku),
    quantity   integer NOT NULL CHECK (quantity > 0),
    status     text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'committed', 'released')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_expiring ON reservations (expires_at) WHERE status = 'held';
CREATE INDEX reservations_order ON reservations (order_id);

-- Carts (Redis holds them; this table backs them so losing Redis loses no cart) -------------

CREATE TABLE carts (
    user_id    bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    items      jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Orders, partitioned by month on created_at ----------------------------------------------

CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    user_id     bigint NOT NULL,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN (
                    'pending', 'stock_reserved', 'paid', 'confirmed', 'shipped',
                    'cancelled', 'refunded')),
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    currency    char(3) NOT NULL DEFAULT 'USD',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- Rows for a month without its own partition land here: an insert never fails for that.
CREATE TABLE orders_default PARTITION OF orders DEFAULT;
CREATE INDEX orders_user ON orders (user_id, created_at DESC);
CREATE INDEX orders_status ON orders (status, created_at) WHERE status IN ('pending', 'stock_reserved', 'paid');

CREATE TABLE order_items (
    order_id         bigint NOT NULL,
    order_created_at timestamptz NOT NULL,
    sku              text NOT NULL,
    product_id       bigint NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_cents integer NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, sku),
    FOREIGN KEY (order_id, order_created_at) REFERENCES orders (id, created_at) ON DELETE CASCADE
);
-- Bought-together recommendations read order items by product.
CREATE INDEX order_items_product ON order_items (product_id, order_id);

-- The same Idempotency-Key twice returns the same order (orders is partitioned, so the key
-- lives in its own table where it can be unique).
CREATE TABLE idempotency_keys (
    user_id          bigint NOT NULL,
    key              text NOT NULL CHECK (length(key) BETWEEN 8 AND 128),
    request_hash     text NOT NULL,
    order_id         bigint,
    order_created_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

-- Payments: provider references and tokens only, never card data ---------------------------

CREATE TABLE payments (
    id              uuid PRIMARY KEY,
    order_id        bigint NOT NULL,
    provider        text NOT NULL,
    provider_ref    text,
    idempotency_key text NOT NULL UNIQUE,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    currency        char(3) NOT NULL,
    status          text NOT NULL CHECK (status IN (
                        'pending', 'authorized', 'captured', 'voided', 'refunded', 'failed')),
    failure_reason  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order ON payments (order_id);

-- Transactional outbox: events written in the same transaction as the state change -------

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text NOT NULL,
    key          text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

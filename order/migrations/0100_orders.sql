-- Orders, their lines, checkout idempotency keys and payment callbacks.
CREATE TABLE orders (
    id              uuid        PRIMARY KEY,
    user_id         text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending_payment', 'paid', 'cancelled')),
    total_cents     bigint      NOT NULL CHECK (total_cents > 0),
    -- The inventory reservation holding the stock; the order id is reused as its id.
    reservation_id  uuid        NOT NULL UNIQUE,
    expires_at      timestamptz NOT NULL,
    -- A payment arrived for an order that was already cancelled: money to give back.
    refund_required boolean     NOT NULL DEFAULT false,
    cancel_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz,
    cancelled_at    timestamptz,
    CONSTRAINT orders_paid_has_time CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CONSTRAINT orders_cancelled_has_time CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_expiring_idx ON orders (expires_at) WHERE status = 'pending_payment';

CREATE TABLE order_items (
    order_id         uuid   NOT NULL REFERENCES orders (id),
    sku_id           bigint NOT NULL CHECK (sku_id > 0),
    quantity         bigint NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents > 0),
    PRIMARY KEY (order_id, sku_id)
);

-- One row per (user, Idempotency-Key): the request's hash, the order id chosen for it, and,
-- once known, the answer given, so a repeat gets the same answer and never a second order.
CREATE TABLE idempotency_keys (
    user_id         text        NOT NULL,
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_hash    text        NOT NULL,
    order_id        uuid        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('in_progress', 'done', 'failed')),
    response_status smallint,
    response_body   jsonb,
    locked_until    timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

CREATE TABLE payments (
    payment_id   text        PRIMARY KEY CHECK (length(payment_id) BETWEEN 1 AND 200),
    order_id     uuid        NOT NULL,
    amount_cents bigint      NOT NULL,
    status       text        NOT NULL CHECK (status IN ('succeeded', 'failed')),
    -- applied: the order became paid; late: it was already cancelled (refund); ignored: a
    -- failed payment, or one for an order that was already paid; mismatch: wrong amount.
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'late', 'ignored', 'mismatch', 'unknown_order')),
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order_idx ON payments (order_id);

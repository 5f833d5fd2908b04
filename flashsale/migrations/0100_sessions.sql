-- Flash-sale sessions and their items. Postgres is the record; Redis holds the live counters
-- (loaded by the warm-up) and the admissions, the hot path never reads these tables.
CREATE TABLE sessions (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    -- creating: items being reserved at inventory; active: on sale (or waiting for its start);
    -- failed: a reservation was refused, whatever was reserved is released; settled: ended and
    -- every item's unsold units are back in inventory.
    status     text        NOT NULL CHECK (status IN ('creating', 'active', 'failed', 'settled')),
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    warmed_at  timestamptz,
    settled_at timestamptz,
    CONSTRAINT sessions_window CHECK (ends_at > starts_at)
);
CREATE INDEX sessions_open_idx ON sessions (starts_at) WHERE status IN ('creating', 'active');

CREATE TABLE session_items (
    session_id     bigint NOT NULL REFERENCES sessions (id),
    sku_id         bigint NOT NULL CHECK (sku_id > 0),
    price_cents    bigint NOT NULL CHECK (price_cents > 0),
    quantity       bigint NOT NULL CHECK (quantity > 0),
    per_user_limit bigint NOT NULL CHECK (per_user_limit > 0 AND per_user_limit <= quantity),
    -- The inventory reservation holding the item's units; its id is chosen here, before the
    -- call, so a retried call cannot reserve twice.
    reservation_id uuid   NOT NULL UNIQUE,
    released_at    timestamptz,
    PRIMARY KEY (session_id, sku_id)
);

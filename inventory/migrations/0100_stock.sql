-- Stock per SKU, reservations, and a ledger row for every movement.
-- The CHECKs make the invariants the database's job: no counter below zero, and
-- available + reserved + sold = received for every SKU, after every statement.
CREATE TABLE stock (
    sku_id     bigint      PRIMARY KEY CHECK (sku_id > 0),
    available  bigint      NOT NULL DEFAULT 0 CONSTRAINT stock_available_non_negative CHECK (available >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CONSTRAINT stock_reserved_non_negative CHECK (reserved >= 0),
    sold       bigint      NOT NULL DEFAULT 0 CONSTRAINT stock_sold_non_negative CHECK (sold >= 0),
    received   bigint      NOT NULL DEFAULT 0 CONSTRAINT stock_received_non_negative CHECK (received >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_balanced CHECK (available + reserved + sold = received)
);

-- A reservation holds stock for one order (or one flash-sale session item). Its id is chosen by
-- the caller, so asking twice with the same id reserves once.
CREATE TABLE reservations (
    id         uuid        PRIMARY KEY,
    owner      text        NOT NULL CHECK (owner IN ('order', 'flashsale')),
    reference  text        NOT NULL CHECK (length(reference) BETWEEN 1 AND 200),
    status     text        NOT NULL CHECK (status IN ('reserved', 'confirmed', 'released')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_expiring_idx ON reservations (expires_at) WHERE status = 'reserved';

CREATE TABLE reservation_items (
    reservation_id uuid   NOT NULL REFERENCES reservations (id),
    sku_id         bigint NOT NULL REFERENCES stock (sku_id),
    quantity       bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku_id)
);

CREATE TABLE ledger (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku_id         bigint      NOT NULL REFERENCES stock (sku_id),
    movement       text        NOT NULL CHECK (movement IN ('receive', 'reserve', 'confirm', 'release')),
    quantity       bigint      NOT NULL CHECK (quantity > 0),
    reservation_id uuid        REFERENCES reservations (id),
    reason         text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_sku_idx ON ledger (sku_id, id DESC);

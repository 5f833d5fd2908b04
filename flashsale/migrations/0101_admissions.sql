-- The book of admissions: a purchase is answered 202 only once its row (and the event that hands
-- it to order, in the outbox) is committed here, so a buyer told 202 gets the order whatever
-- Redis loses. Redis keeps the live counters; after a loss they are rebuilt from this table.
ALTER TABLE session_items
    -- Bumped each time the item is (re)loaded into Redis; an admission whose script ran against
    -- an older load is refused here (see `store::book::record`), so a rebuild never misses one.
    ADD COLUMN redis_epoch bigint NOT NULL DEFAULT 0 CHECK (redis_epoch >= 0);

CREATE TABLE admissions (
    order_id    uuid        PRIMARY KEY,
    session_id  bigint      NOT NULL,
    sku_id      bigint      NOT NULL,
    user_id     text        NOT NULL,
    request_id  text        NOT NULL,
    quantity    bigint      NOT NULL CHECK (quantity > 0),
    admitted_at timestamptz NOT NULL,
    -- The outbox row carrying `flashsale.admitted`; sent once its `sent_at` is set.
    event_id    uuid        NOT NULL UNIQUE,
    -- The order was cancelled and its units went back on sale.
    returned_at timestamptz,
    FOREIGN KEY (session_id, sku_id) REFERENCES session_items (session_id, sku_id)
);
CREATE INDEX admissions_item_idx ON admissions (session_id, sku_id);

-- Platform tables every event-publishing / event-consuming service owns in its own schema.
-- outbox: events written in the same transaction as the state change they announce; a relay
--         publishes them with publisher confirms and stamps sent_at only after the broker's ack.
-- inbox:  ids of events a consumer has applied, written in the same transaction as the effect,
--         so a redelivered event is recognised and skipped.
CREATE TABLE outbox (
    id           uuid        PRIMARY KEY,
    -- Events of one aggregate (an order, a SKU) are relayed in created order.
    aggregate_id text        NOT NULL,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    payload      jsonb       NOT NULL,
    -- Trace context (traceparent, b3) captured when the event was written.
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   text
);
CREATE INDEX outbox_unsent_idx ON outbox (created_at) WHERE sent_at IS NULL;

CREATE TABLE inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

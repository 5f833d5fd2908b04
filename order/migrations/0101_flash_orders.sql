-- Orders created from flash-sale admissions. Their id is the one the flash-sale script handed
-- the buyer, and their reservation is carved out of the session item's reservation, so the
-- order's own reservation id is still the order id.
ALTER TABLE orders ADD COLUMN source text NOT NULL DEFAULT 'checkout'
    CHECK (source IN ('checkout', 'flashsale'));
ALTER TABLE orders ADD COLUMN flash_session_id bigint;
ALTER TABLE orders ADD CONSTRAINT orders_flash_has_session
    CHECK ((source = 'flashsale') = (flash_session_id IS NOT NULL));

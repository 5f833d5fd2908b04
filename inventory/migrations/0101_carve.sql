-- Flash sales: a session item holds one reservation (the parent); each flash order carves its
-- units out of it into a reservation of its own (the child), which is then confirmed or
-- released like any order's. Carving moves units between reservations, never between the stock
-- counters, so available + reserved + sold = received is untouched.
ALTER TABLE reservations ADD COLUMN parent_id uuid REFERENCES reservations (id);
CREATE INDEX reservations_parent_idx ON reservations (parent_id) WHERE parent_id IS NOT NULL;

-- A parent line may be carved down to zero.
ALTER TABLE reservation_items DROP CONSTRAINT reservation_items_quantity_check;
ALTER TABLE reservation_items ADD CONSTRAINT reservation_items_quantity_check CHECK (quantity >= 0);

-- carve: units moved from a parent into a child; return: a released child's units moved back
-- into its parent (the unit stays for sale in the flash session).
ALTER TABLE ledger DROP CONSTRAINT ledger_movement_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_movement_check
    CHECK (movement IN ('receive', 'reserve', 'confirm', 'release', 'carve', 'return'));

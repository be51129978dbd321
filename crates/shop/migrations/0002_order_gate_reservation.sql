-- The stock gate's reservation that an order was placed under, so the
-- reconciler can tell a completed reservation from an abandoned one.
ALTER TABLE orders ADD COLUMN gate_reservation uuid;
CREATE UNIQUE INDEX orders_gate_reservation_key ON orders (gate_reservation) WHERE gate_reservation IS NOT NULL;

-- Stock that comes back outside an order's take (a cancelled or expired
-- order's units, an admin's new level), written in the transaction that
-- changes the stock, for the Redis stock gate (`STOCK_STRATEGY=redis-gate`)
-- to learn of at least once: right after the commit, or from here if the
-- instance died or Redis did not answer then. `version` is the product row's
-- version the change produced.
CREATE TABLE stock_gate_changes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id bigint      NOT NULL REFERENCES products (id),
    delta      bigint      NOT NULL,
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX stock_gate_changes_created_idx ON stock_gate_changes (created_at);

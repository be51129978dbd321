-- Takes `quantities[i]` units of `product_ids[i]` from products read
-- without a lock, if every one still has them; else takes nothing and
-- raises serialization_failure (the caller decides again under locks).
-- The order batch writer sends it in the same message as its COMMIT, so a
-- hot product's row is held for one round trip (`Tx::commit_after`).
CREATE FUNCTION take_stock(product_ids bigint[], quantities bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    taken bigint;
BEGIN
    -- Every order placement locks its products in ascending id order.
    PERFORM 1 FROM products WHERE id = ANY (product_ids) ORDER BY id FOR NO KEY UPDATE;
    UPDATE products p SET stock = p.stock - t.quantity, version = p.version + 1
    FROM unnest(product_ids, quantities) AS t(id, quantity)
    WHERE p.id = t.id AND p.stock >= t.quantity;
    GET DIAGNOSTICS taken = ROW_COUNT;
    IF taken <> cardinality(product_ids) THEN
        RAISE EXCEPTION 'the stock was taken since it was read' USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

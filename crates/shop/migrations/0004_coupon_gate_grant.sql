-- The Redis coupon gate's grant a coupon was written under (the grant's time
-- in Redis, in ms, unique per user and campaign), so the reconciler can tell
-- a grant's own coupon from one the user held before — whose grant was then
-- refused — without comparing two servers' clocks. NULL: not through the gate.
ALTER TABLE coupons ADD COLUMN gate_grant bigint;

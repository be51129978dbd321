-- The running instances, each with the last time it said it was alive.
-- An Idempotency-Key claimed by an instance that has gone quiet (killed
-- mid-request, say) is taken over by the client's retry within seconds,
-- rather than after the minute any request could run: its request can
-- no longer commit, since the claim is saved in the effect's transaction.
CREATE TABLE instances (
    id         uuid        PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

-- No foreign key: instances long gone are forgotten, their claims kept.
ALTER TABLE idempotency_keys ADD COLUMN claimed_by uuid;

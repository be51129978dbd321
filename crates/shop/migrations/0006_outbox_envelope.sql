-- Outbox events as delivered: each order's events numbered 1, 2, … (the
-- order's row lock serializes the transactions that record them), the
-- envelope's exact bytes (the same on every attempt), and the sinks that
-- already acknowledged it (a retry goes to the others only).
ALTER TABLE outbox_events
    ADD COLUMN sequence integer,
    ADD COLUMN body text,
    ADD COLUMN delivered_to text[] NOT NULL DEFAULT '{}';

-- Events recorded before this migration: numbered in the order they were
-- written, enveloped from what they recorded.
UPDATE outbox_events e SET sequence = numbered.n,
    body = json_build_object(
        'eventId', e.event_id, 'type', e.event_type, 'orderId', e.order_id, 'sequence', numbered.n,
        'occurredAt', e.created_at, 'data', e.payload)::text
FROM (SELECT id, row_number() OVER (PARTITION BY order_id ORDER BY id) AS n FROM outbox_events) numbered
WHERE numbered.id = e.id;

ALTER TABLE outbox_events
    ALTER COLUMN sequence SET NOT NULL,
    ALTER COLUMN body SET NOT NULL,
    ADD CONSTRAINT outbox_events_order_sequence_key UNIQUE (order_id, sequence);
-- Due events, oldest first, for the relay.
CREATE INDEX outbox_events_due_idx ON outbox_events (next_attempt_at, id) WHERE status = 'PENDING';

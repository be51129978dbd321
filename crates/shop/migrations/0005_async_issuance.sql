-- Asynchronous coupon issuance: the pending requests, oldest first, for the
-- sweep that requeues those the queue lost.
CREATE INDEX coupon_issue_requests_pending_idx ON coupon_issue_requests (requested_at) WHERE status = 'PENDING';

-- The whole shop contract (see API.md). Money is bigint won. Constraints are
-- named so the application maps a violation to its API error code, and they
-- are the last line of defence: whatever a concurrency strategy gets wrong,
-- these states cannot be stored.

CREATE TABLE users (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text        NOT NULL,
    name          text        NOT NULL,
    password_hash text        NOT NULL,
    role          text        NOT NULL DEFAULT 'user',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    -- Emails are stored lower-cased, which makes the UNIQUE above case-insensitive.
    CONSTRAINT users_email_lower CHECK (email = lower(email)),
    CONSTRAINT users_role_check CHECK (role IN ('user', 'admin'))
);

-- One wallet per user, created with the user. The charge counters live on the
-- same row as the balance so that one conditional UPDATE can enforce the
-- charge limits together with the balance change.
CREATE TABLE point_wallets (
    user_id          bigint  PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance          bigint  NOT NULL DEFAULT 0,
    -- Optimistic concurrency: bumped by every write.
    version          bigint  NOT NULL DEFAULT 0,
    -- Highest fencing token of a Redis lease holder that wrote this row.
    fence            bigint  NOT NULL DEFAULT 0,
    -- Day (in the shop's time zone) of the last charge and how many that day.
    charge_day       date,
    charges_on_day   integer NOT NULL DEFAULT 0,
    -- First day of the month of the last charge and how many that month.
    charge_month     date,
    charges_in_month integer NOT NULL DEFAULT 0,
    CONSTRAINT point_wallets_balance_check CHECK (balance >= 0),
    CONSTRAINT point_wallets_counters_check CHECK (charges_on_day >= 0 AND charges_in_month >= 0)
);

CREATE TABLE products (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL,
    price       bigint      NOT NULL,
    stock       bigint      NOT NULL,
    -- Units ever made available: initial stock plus admin changes. Every unit
    -- is either in stock or held by an order that is not CANCELLED/EXPIRED.
    stock_total bigint      NOT NULL,
    category    text        NOT NULL,
    version     bigint      NOT NULL DEFAULT 0,
    fence       bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_price_check CHECK (price > 0),
    CONSTRAINT products_stock_check CHECK (stock >= 0 AND stock <= stock_total)
);
CREATE INDEX products_category_idx ON products (category, id);

CREATE TABLE coupon_types (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code             text        NOT NULL,
    kind             text        NOT NULL,
    value            bigint      NOT NULL,
    min_order_amount bigint      NOT NULL DEFAULT 0,
    total_quantity   bigint      NOT NULL,
    issued_quantity  bigint      NOT NULL DEFAULT 0,
    valid_days       integer     NOT NULL,
    issue_starts_at  timestamptz,
    issue_ends_at    timestamptz,
    version          bigint      NOT NULL DEFAULT 0,
    fence            bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT coupon_types_code_key UNIQUE (code),
    CONSTRAINT coupon_types_code_check CHECK (code ~ '^[A-Z0-9_]{1,64}$'),
    CONSTRAINT coupon_types_value_check CHECK (
        (kind = 'PERCENT' AND value BETWEEN 1 AND 100)
        OR (kind = 'FIXED' AND value BETWEEN 1 AND 1000000)),
    CONSTRAINT coupon_types_min_order_check CHECK (min_order_amount >= 0),
    CONSTRAINT coupon_types_quantity_check CHECK (total_quantity BETWEEN 1 AND 10000000),
    -- Never over-issued, whatever the issuing strategy.
    CONSTRAINT coupon_types_issued_check CHECK (issued_quantity BETWEEN 0 AND total_quantity),
    CONSTRAINT coupon_types_valid_days_check CHECK (valid_days BETWEEN 1 AND 365),
    CONSTRAINT coupon_types_window_check CHECK (issue_starts_at < issue_ends_at)
);

CREATE TABLE coupons (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    coupon_type_id bigint      NOT NULL REFERENCES coupon_types (id),
    user_id        bigint      NOT NULL REFERENCES users (id),
    issued_at      timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    -- EXPIRED is not stored: it is AVAILABLE past expires_at.
    status         text        NOT NULL DEFAULT 'AVAILABLE',
    -- The order holding the coupon while RESERVED or USED.
    order_id       bigint,
    CONSTRAINT coupons_user_type_key UNIQUE (user_id, coupon_type_id),
    CONSTRAINT coupons_status_check CHECK (status IN ('AVAILABLE', 'RESERVED', 'USED')),
    CONSTRAINT coupons_holder_check CHECK ((status = 'AVAILABLE') = (order_id IS NULL))
);

CREATE TABLE orders (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES users (id),
    status          text        NOT NULL DEFAULT 'PENDING',
    total_amount    bigint      NOT NULL,
    discount_amount bigint      NOT NULL DEFAULT 0,
    final_amount    bigint      NOT NULL,
    coupon_id       bigint      REFERENCES coupons (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    paid_at         timestamptz,
    cancelled_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_status_check CHECK (status IN
        ('PENDING', 'PAID', 'CANCELLED', 'EXPIRED', 'SHIPPED', 'DELIVERED', 'COMPLETED')),
    CONSTRAINT orders_total_check CHECK (total_amount >= 1000),
    -- A discount never exceeds half the total.
    CONSTRAINT orders_discount_check CHECK (discount_amount >= 0 AND discount_amount * 2 <= total_amount),
    CONSTRAINT orders_final_check CHECK (final_amount = total_amount - discount_amount)
);
CREATE INDEX orders_user_idx ON orders (user_id, id DESC);
CREATE INDEX orders_pending_expiry_idx ON orders (expires_at) WHERE status = 'PENDING';
CREATE INDEX orders_paid_at_idx ON orders (paid_at) WHERE paid_at IS NOT NULL;
-- A coupon is held by at most one live order.
CREATE UNIQUE INDEX orders_coupon_live_key ON orders (coupon_id)
    WHERE coupon_id IS NOT NULL AND status NOT IN ('CANCELLED', 'EXPIRED');

ALTER TABLE coupons
    ADD CONSTRAINT coupons_order_fkey FOREIGN KEY (order_id) REFERENCES orders (id);

CREATE TABLE order_items (
    order_id     bigint  NOT NULL REFERENCES orders (id),
    product_id   bigint  NOT NULL REFERENCES products (id),
    product_name text    NOT NULL,
    quantity     integer NOT NULL,
    unit_price   bigint  NOT NULL,
    PRIMARY KEY (order_id, product_id),
    CONSTRAINT order_items_quantity_check CHECK (quantity BETWEEN 1 AND 10),
    CONSTRAINT order_items_price_check CHECK (unit_price > 0)
);
CREATE INDEX order_items_product_idx ON order_items (product_id);

CREATE TABLE payments (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   bigint      NOT NULL REFERENCES orders (id),
    user_id    bigint      NOT NULL REFERENCES users (id),
    amount     bigint      NOT NULL,
    status     text        NOT NULL DEFAULT 'SUCCESS',
    paid_at    timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz,
    -- Only successful payments are recorded, so this is "paid at most once".
    CONSTRAINT payments_order_key UNIQUE (order_id),
    CONSTRAINT payments_amount_check CHECK (amount >= 0),
    CONSTRAINT payments_status_check CHECK (status IN ('SUCCESS', 'REFUNDED')),
    CONSTRAINT payments_refund_check CHECK ((status = 'REFUNDED') = (refunded_at IS NOT NULL))
);

-- Append-only: balance = sum(amount) per user.
CREATE TABLE point_ledger (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id),
    kind          text        NOT NULL,
    amount        bigint      NOT NULL,
    balance_after bigint      NOT NULL,
    order_id      bigint      REFERENCES orders (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT point_ledger_kind_check CHECK (kind IN ('CHARGE', 'USE', 'REFUND')),
    CONSTRAINT point_ledger_sign_check CHECK ((kind = 'USE') = (amount < 0) AND amount <> 0),
    CONSTRAINT point_ledger_order_check CHECK ((kind = 'CHARGE') = (order_id IS NULL)),
    CONSTRAINT point_ledger_balance_check CHECK (balance_after >= 0)
);
CREATE INDEX point_ledger_user_idx ON point_ledger (user_id, id DESC);

-- Idempotency-Key records, per user. A row without a response is a claim by
-- a request still running; the response is written in the same transaction
-- as the request's effect, so "effect without stored answer" cannot exist.
CREATE TABLE idempotency_keys (
    user_id         bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key             text        NOT NULL,
    request_method  text        NOT NULL,
    request_path    text        NOT NULL,
    request_hash    bytea       NOT NULL,
    claim_token     uuid        NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key),
    CONSTRAINT idempotency_keys_response_check CHECK ((response_status IS NULL) = (response_body IS NULL))
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE coupon_issue_requests (
    id             uuid        PRIMARY KEY,
    user_id        bigint      NOT NULL REFERENCES users (id),
    coupon_type_id bigint      NOT NULL REFERENCES coupon_types (id),
    status         text        NOT NULL DEFAULT 'PENDING',
    coupon_id      bigint      REFERENCES coupons (id),
    reason         text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    processed_at   timestamptz,
    CONSTRAINT coupon_issue_requests_status_check CHECK (status IN ('PENDING', 'ISSUED', 'REJECTED')),
    CONSTRAINT coupon_issue_requests_reason_check CHECK (
        reason IN ('SOLD_OUT', 'ALREADY_ISSUED', 'NOT_OPEN', 'USER_NOT_FOUND')),
    CONSTRAINT coupon_issue_requests_outcome_check CHECK (
        (status = 'PENDING' AND coupon_id IS NULL AND reason IS NULL AND processed_at IS NULL)
        OR (status = 'ISSUED' AND coupon_id IS NOT NULL AND reason IS NULL AND processed_at IS NOT NULL)
        OR (status = 'REJECTED' AND coupon_id IS NULL AND reason IS NOT NULL AND processed_at IS NOT NULL))
);
-- At most one pending request per user and type.
CREATE UNIQUE INDEX coupon_issue_requests_pending_key ON coupon_issue_requests (user_id, coupon_type_id)
    WHERE status = 'PENDING';

-- Transactional outbox: events written with the change they describe and
-- delivered to the data platform at least once, in order per order.
CREATE TABLE outbox_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    order_id        bigint      NOT NULL REFERENCES orders (id),
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'PENDING',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CONSTRAINT outbox_events_event_id_key UNIQUE (event_id),
    CONSTRAINT outbox_events_status_check CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED'))
);
CREATE INDEX outbox_events_undelivered_idx ON outbox_events (order_id, id) WHERE status <> 'DELIVERED';

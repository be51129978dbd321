-- Logins. Each holds the one refresh token that is good now (its `jti`);
-- a refresh swaps it for the next in one statement, so a token is good for
-- one refresh, and presenting an older one (a stolen copy, a replay)
-- revokes the login: every token descended from it stops working. Every
-- instance reads the same rows, so a revocation holds everywhere at once.
CREATE TABLE sessions (
    id               uuid        PRIMARY KEY,
    user_id          bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_token_id uuid        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    refreshed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    revoked_at       timestamptz,
    revoked_because  text,
    CONSTRAINT sessions_revoked_check CHECK (
        (revoked_at IS NULL AND revoked_because IS NULL)
        OR (revoked_at IS NOT NULL AND revoked_because IN ('LOGOUT', 'LOGOUT_ALL', 'REUSED')))
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- firstkey: identity additions (accounts, e-mail verification, rate limits).

-- One-time e-mail verification links of homeowner sign-up. Like invitations, only the SHA-256 of the
-- secret in the link is stored. Using the link enrols a passkey and activates the account.
CREATE TABLE email_verifications (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    secret_hash     bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    FOREIGN KEY (municipality_id, user_id) REFERENCES users (municipality_id, id) ON DELETE CASCADE,
    CHECK (expires_at > created_at)
);
CREATE INDEX email_verifications_user ON email_verifications (municipality_id, user_id);

CREATE INDEX invitations_by_email ON invitations (municipality_id, lower(email));
CREATE INDEX webauthn_ceremonies_user ON webauthn_ceremonies (user_id, created_at) WHERE user_id IS NOT NULL;

-- Fixed-window counters shared by every replica. `bucket` names what is counted, e.g.
-- `sign_in:addr:203.0.113.7` or `sign_in:fail:<user id>`; it never holds an e-mail address in clear.
CREATE TABLE auth_rate_limits (
    bucket       text PRIMARY KEY CHECK (length(bucket) BETWEEN 1 AND 200),
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL CHECK (hits >= 0),
    last_hit_at  timestamptz NOT NULL
);
CREATE INDEX auth_rate_limits_age ON auth_rate_limits (last_hit_at);

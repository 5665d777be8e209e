-- One request per token (issue 14 §1). Token challenges are not stored when they are handed out:
-- each is authenticated by an HMAC under a key derived from the data KEK (src/auth/proof.rs). What
-- is stored is each challenge's *use*, inside the transaction that issues the token, so an
-- assertion over it is accepted once even from a passkey whose signature counter stays 0. A row
-- is worthless once its challenge has expired; the offline sweeper deletes those.
CREATE TABLE used_token_challenges (
    tag             bytea PRIMARY KEY CHECK (octet_length(tag) = 32),
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX used_token_challenges_expiry ON used_token_challenges (expires_at);

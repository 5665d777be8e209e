-- firstkey: emergency-entry additions (incidents, grants, tokens, keys, CAD).

-- The newest live issuer key of a municipality (token minting, bundles).
CREATE INDEX signing_keys_municipality ON signing_keys (municipality_id, created_at DESC);

-- CAD credentials of a municipality (listing, revocation).
CREATE INDEX api_credentials_municipality ON api_credentials (municipality_id) WHERE revoked_at IS NULL;

-- Pruning old idempotency records by age.
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

-- The live grants naming a responder (token requests, the responder's grant list).
CREATE INDEX grants_live_window ON grants (municipality_id, ends_at) WHERE status = 'live';

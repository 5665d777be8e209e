-- V18: what the dispatcher console and staff enrolment in a browser need.
--
-- 1. Attestation key pins: a municipality may trust an attestation *key* by the SHA-256 of its
--    SubjectPublicKeyInfo (for authenticators whose attestation certificate is self-signed, such as
--    Chromium's virtual authenticator in test configurations), beside its attestation CAs.
-- 2. The demo municipality's mode in which staff keys need not carry a trusted attestation; only a
--    demo municipality (`demo-city`, `demo-city-<n>`) can be put in it.
-- 3. `issued_tokens.pushed_at`: when a session of the lock sent the token over the agent channel.
-- 4. Grant-state notifications: every change the console shows (a grant's status, a token issued,
--    pushed, acknowledged, used, a receipt for a token of a grant) notifies `firstkey_grant_state`
--    with '<municipality id> <incident id>' when its transaction commits.

CREATE TABLE attestation_key_pins (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    spki_sha256     bytea NOT NULL CHECK (length(spki_sha256) = 32),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    added_at        timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, spki_sha256)
);

ALTER TABLE municipalities ADD COLUMN staff_attestation_optional boolean NOT NULL DEFAULT false;
ALTER TABLE municipalities ADD CONSTRAINT municipalities_only_demo_skips_attestation
    CHECK (NOT staff_attestation_optional OR slug ~ '^demo-city(-[0-9]+)?$');

ALTER TABLE issued_tokens ADD COLUMN pushed_at timestamptz;

CREATE FUNCTION firstkey_notify_grant_state(municipality uuid, incident uuid) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('firstkey_grant_state', municipality::text || ' ' || incident::text)
$$;

CREATE FUNCTION firstkey_grant_state_of_grant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM firstkey_notify_grant_state(NEW.municipality_id, NEW.incident_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER grants_notify_state AFTER INSERT OR UPDATE OF status, approved_by ON grants
    FOR EACH ROW EXECUTE FUNCTION firstkey_grant_state_of_grant();

CREATE FUNCTION firstkey_grant_state_of_token() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM firstkey_notify_grant_state(g.municipality_id, g.incident_id)
       FROM grants g WHERE g.id = NEW.grant_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER issued_tokens_notify_state AFTER INSERT OR UPDATE OF status, pushed_at ON issued_tokens
    FOR EACH ROW EXECUTE FUNCTION firstkey_grant_state_of_token();

CREATE FUNCTION firstkey_grant_state_of_receipt() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.token_hash IS NOT NULL THEN
        PERFORM firstkey_notify_grant_state(g.municipality_id, g.incident_id)
           FROM issued_tokens t JOIN grants g ON g.id = t.grant_id
          WHERE t.lock_id = NEW.lock_id AND t.token_hash = NEW.token_hash;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER receipts_notify_state AFTER INSERT ON receipts
    FOR EACH ROW EXECUTE FUNCTION firstkey_grant_state_of_receipt();

-- firstkey: offline keypad codes (issue 11 §2; firmware-agent/PROTOCOL.md, "Keypad codes").
--
-- A lock's code secret is never stored: every replica derives it from the data key (KEK) and the
-- lock id with its generation number, so a database dump alone cannot make a code. The inbox
-- carries only the generation; the channel derives the secret when it sends it.

-- The generation of the lock's code secret queued for it (NULL: none yet).
ALTER TABLE locks
    ADD COLUMN keypad_secret_generation integer CHECK (keypad_secret_generation IS NULL OR keypad_secret_generation >= 1);

-- New inbox kinds. The list is no longer spelled out here, so that migrations adding kinds do not
-- overwrite each other's lists; the server ignores kinds it does not know.
ALTER TABLE lock_inbox DROP CONSTRAINT IF EXISTS lock_inbox_kind_check;
ALTER TABLE lock_inbox ADD CONSTRAINT lock_inbox_kind_known CHECK (kind ~ '^[a-z_]{1,32}$');

-- Every code issued: who was given it (incident and grant, or a trusted party), for which lock and
-- window. Never the digits: `code_id` is the HMAC-derived id the lock writes into its receipts.
CREATE TABLE keypad_codes (
    id               uuid NOT NULL PRIMARY KEY,
    municipality_id  uuid NOT NULL,
    lock_id          uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('incident', 'standing')),
    code_id          bytea NOT NULL CHECK (length(code_id) = 16),
    secret_generation integer NOT NULL CHECK (secret_generation >= 1),
    grant_id         uuid,
    incident_id      uuid,
    trusted_party_id uuid,
    slot_index       smallint NOT NULL CHECK (slot_index BETWEEN 0 AND 99),
    not_before       timestamptz NOT NULL,
    not_after        timestamptz NOT NULL CHECK (not_after > not_before),
    issued_by        uuid NOT NULL,
    issued_at        timestamptz NOT NULL,
    revoked_at       timestamptz,
    UNIQUE (lock_id, code_id),
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id),
    CHECK ((kind = 'incident') = (grant_id IS NOT NULL AND incident_id IS NOT NULL)),
    CHECK (kind = 'incident' OR trusted_party_id IS NOT NULL)
);
CREATE INDEX keypad_codes_grant ON keypad_codes (grant_id) WHERE grant_id IS NOT NULL;
-- One incident code per (lock, window, index digit).
CREATE UNIQUE INDEX keypad_codes_incident_slot ON keypad_codes (lock_id, not_before, not_after, slot_index)
    WHERE kind = 'incident';

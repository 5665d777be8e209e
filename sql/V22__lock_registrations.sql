-- firstkey: a pending lock registration no longer reserves the lock id (issue 8, item 13(b)).
--
-- Until now registering a lock inserted its `locks` row at once (and a `lock_pairings` row with the
-- code's hash), so whoever registered a lock id first, in any municipality, blocked the genuine
-- owner with a 409. Now a registration lives in its own row, each with its own code hash, property,
-- municipality and expiry; several may name the same lock id. At the lock's first handshake the
-- server pairs the lock with the one registration whose code the lock's proven key derives; only
-- then does the `locks` row (and with it `lock_inbox`, `receipts`, … keyed on the lock id) come
-- into being, and the other registrations naming that id are closed.
CREATE TABLE lock_registrations (
    id               uuid NOT NULL,
    municipality_id  uuid NOT NULL,
    property_id      uuid NOT NULL,
    lock_id          uuid NOT NULL,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- Who registered it (told when it closes); counted for the per-account bounds.
    registered_by    uuid NOT NULL,
    -- SHA-256 of the normalised pairing code the homeowner typed; gone once the registration closes.
    code_hash        bytea CHECK (code_hash IS NULL OR length(code_hash) = 32),
    -- pending: waiting for the lock; paired: the lock paired with this one; paired_elsewhere: the
    -- lock paired with another registration; code_mismatch: the lock connected and its code is not
    -- the one typed here; contested: the lock's code was typed into more than one registration, so
    -- it paired with none; cancelled: by the homeowner; expired: nobody paired it in time.
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'paired', 'paired_elsewhere', 'code_mismatch', 'contested',
                                      'cancelled', 'expired')),
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL CHECK (expires_at > created_at),
    closed_at        timestamptz,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, registered_by) REFERENCES users (municipality_id, id),
    CHECK ((state = 'pending') = (closed_at IS NULL)),
    CHECK ((state = 'pending') = (code_hash IS NOT NULL))
);
-- A home waits for a given lock once, and its waiting registrations have distinct names.
CREATE UNIQUE INDEX lock_registrations_pending_lock_of_property
    ON lock_registrations (property_id, lock_id) WHERE state = 'pending';
CREATE UNIQUE INDEX lock_registrations_pending_name_of_property
    ON lock_registrations (property_id, name) WHERE state = 'pending';
-- The handshake's look-up: the pending registrations naming a lock id, in any municipality.
CREATE INDEX lock_registrations_pending_by_lock ON lock_registrations (lock_id) WHERE state = 'pending';
-- The per-account bound (registrations made in the last day) and the owner's page.
CREATE INDEX lock_registrations_by_account ON lock_registrations (municipality_id, registered_by, created_at);
CREATE INDEX lock_registrations_by_property ON lock_registrations (municipality_id, property_id, created_at);

-- Registrations waiting today become pending registrations (registered by the property's owner,
-- the only one who could register a lock there); their locks rows, never paired, go, with what
-- was queued for them (trust bundles pushed while they waited; the server pushes the newest again
-- at pairing) and trusted-party terms naming them.
INSERT INTO lock_registrations (id, municipality_id, property_id, lock_id, name, registered_by, code_hash,
                                state, created_at, expires_at, closed_at)
SELECT gen_random_uuid(), l.municipality_id, l.property_id, l.id, l.name, p.owner_id, lp.code_hash,
       'pending', lp.created_at, GREATEST(lp.expires_at, lp.created_at + interval '1 second'), NULL
FROM locks l
JOIN lock_pairings lp ON lp.lock_id = l.id
JOIN properties p ON p.id = l.property_id
WHERE l.pairing_state = 'unpaired';

DELETE FROM lock_inbox WHERE lock_id IN (SELECT id FROM locks WHERE pairing_state = 'unpaired');
DELETE FROM trusted_party_locks WHERE lock_id IN (SELECT id FROM locks WHERE pairing_state = 'unpaired');
DROP TABLE lock_pairings;
DELETE FROM locks WHERE pairing_state = 'unpaired';

-- A locks row is now a paired (or retired) lock.
ALTER TABLE locks DROP CONSTRAINT locks_pairing_state_check;
ALTER TABLE locks ALTER COLUMN pairing_state SET DEFAULT 'paired';
ALTER TABLE locks ADD CONSTRAINT locks_pairing_state_check CHECK (pairing_state IN ('paired', 'retired'));

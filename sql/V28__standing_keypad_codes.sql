-- firstkey: standing keypad codes for trusted parties (issue 11 §2; firmware-agent/PROTOCOL.md,
-- "Keypad codes", standing codes).
--
-- The homeowner gives a trusted party keypad codes besides tokens, rotated every
-- `code_rotation_days` (default 7). Each (party, lock) holds one standing slot (0‥99) at the lock;
-- the lock learns the slot's schedule over the channel (`keypad_standing` inbox entries) and
-- recomputes each period's code itself, so a rotation needs no message to the lock: the server
-- only issues (records, audits, mails) each period's code when the period starts. The digits are
-- never stored; `keypad_codes` holds one row per issued period, as for incident codes.

ALTER TABLE trusted_parties ADD COLUMN keypad_codes boolean NOT NULL DEFAULT false;
ALTER TABLE trusted_parties ADD COLUMN code_rotation_days smallint NOT NULL DEFAULT 7
    CHECK (code_rotation_days BETWEEN 1 AND 90);

-- The lock's standing slot of one trusted party. A cleared slot (paused, revoked, edited, window
-- over) keeps its row as the record; the slot number is free again at that lock.
CREATE TABLE keypad_standing_slots (
    id               uuid NOT NULL PRIMARY KEY,
    municipality_id  uuid NOT NULL,
    trusted_party_id uuid NOT NULL,
    lock_id          uuid NOT NULL,
    slot             smallint NOT NULL CHECK (slot BETWEEN 0 AND 99),
    -- The schedule as sent to the lock: period k's code is valid in
    -- [epoch + k·period, epoch + (k+1)·period + overlap), capped at `until`.
    epoch            timestamptz NOT NULL,
    period_secs      integer NOT NULL CHECK (period_secs >= 3600),
    overlap_secs     integer NOT NULL CHECK (overlap_secs >= 0 AND overlap_secs < period_secs),
    until            timestamptz NOT NULL CHECK (until > epoch),
    -- The last period whose code was issued (-1: none yet), and when the next one is due.
    issued_through   integer NOT NULL DEFAULT -1 CHECK (issued_through >= -1),
    next_due_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    cleared_at       timestamptz,
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id),
    FOREIGN KEY (municipality_id, trusted_party_id) REFERENCES trusted_parties (municipality_id, id)
);
-- One live slot per (party, lock) and per (lock, slot number).
CREATE UNIQUE INDEX keypad_standing_slots_party_lock ON keypad_standing_slots (trusted_party_id, lock_id)
    WHERE cleared_at IS NULL;
CREATE UNIQUE INDEX keypad_standing_slots_lock_slot ON keypad_standing_slots (lock_id, slot)
    WHERE cleared_at IS NULL;
-- What the rotation loop claims.
CREATE INDEX keypad_standing_slots_due ON keypad_standing_slots (next_due_at) WHERE cleared_at IS NULL;

-- A standing code's record names its slot row; `shown_at` is when the trusted party's page showed
-- it without asking for a fresh assertion (once).
ALTER TABLE keypad_codes ADD COLUMN standing_slot_id uuid REFERENCES keypad_standing_slots (id);
ALTER TABLE keypad_codes ADD COLUMN shown_at timestamptz;
ALTER TABLE keypad_codes ADD CONSTRAINT keypad_codes_standing_slot
    CHECK ((kind = 'standing') = (standing_slot_id IS NOT NULL));
CREATE INDEX keypad_codes_trusted_party ON keypad_codes (trusted_party_id) WHERE trusted_party_id IS NOT NULL;

-- When a keypad receipt first showed the code opening the door (incident codes: their one use;
-- the dispatcher's page says used / expired / revoked).
ALTER TABLE keypad_codes ADD COLUMN used_at timestamptz;
CREATE INDEX keypad_codes_incident ON keypad_codes (incident_id) WHERE incident_id IS NOT NULL;

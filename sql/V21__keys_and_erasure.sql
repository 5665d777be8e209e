-- firstkey: "my security keys" (a name per credential; removal keeps the row, as sessions and
-- tokens refer to it) and crypto-shredding of personal details in audit entries (docs/audit-log.md).

-- A name the holder gives a key ("blue YubiKey"), and when it was removed.
ALTER TABLE webauthn_credentials ADD COLUMN name text
    CHECK (name IS NULL OR (length(name) BETWEEN 1 AND 100 AND name !~ '[[:cntrl:]]'));
ALTER TABLE webauthn_credentials ADD COLUMN removed_at timestamptz;
ALTER TABLE webauthn_credentials DROP CONSTRAINT webauthn_credentials_status_check;
ALTER TABLE webauthn_credentials ADD CONSTRAINT webauthn_credentials_status_check
    CHECK (status IN ('active', 'suspended', 'removed'));
ALTER TABLE webauthn_credentials ADD CONSTRAINT webauthn_credentials_removed_when
    CHECK ((status = 'removed') = (removed_at IS NOT NULL));

-- Data keys (V1's audit_data_keys) are per property and per calendar month of the entries they
-- cover, so a home's retention period erases old months while later ones stay readable. One live
-- key per (property, month) (after an erasure, later entries of that month get a new one);
-- `erase_after` is the month's end plus the plan's retention when the key was made.
ALTER TABLE audit_data_keys ADD COLUMN period date;
CREATE UNIQUE INDEX audit_data_keys_property_period
    ON audit_data_keys (municipality_id, property_id, period)
    WHERE property_id IS NOT NULL AND period IS NOT NULL AND erased_at IS NULL;
-- Erasure destroys the wrapped key; the rest of the row stays as the record that it happened.
-- Nothing else about a key may change, and a key is never deleted (entries refer to it).
CREATE FUNCTION firstkey_data_key_erase_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL
       AND NEW.wrapped_key IS NULL
       AND (OLD.id, OLD.municipality_id, OLD.property_id, OLD.created_at, OLD.erase_after, OLD.period)
           IS NOT DISTINCT FROM
           (NEW.id, NEW.municipality_id, NEW.property_id, NEW.created_at, NEW.erase_after, NEW.period)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'firstkey: % on % is not allowed (a data key may only be erased)',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_data_keys_erase_only BEFORE UPDATE OR DELETE ON audit_data_keys
    FOR EACH ROW EXECUTE FUNCTION firstkey_data_key_erase_only();

-- firstkey: the homeowner deletes their account (issue 10, item 9), and free text that identifies
-- people leaves the tables it was typed into when a home's personal details are erased.
--
-- The audit log itself is never touched: its personal details are crypto-shredded (V21's data
-- keys). What this adds is the erasure of the *operational* copies: the account's address and
-- name, the home's address, the personal parts of its plan versions (responder notes, contacts),
-- grant justifications, trusted parties' labels. Rows stay (grants, tokens, receipts and audit
-- entries refer to them); their personal columns are overwritten and the time recorded.

-- A deleted account: its row stays (as actor of entries and grants), anonymised, never active again.
ALTER TABLE users ADD COLUMN deleted_at timestamptz;
ALTER TABLE users ADD CONSTRAINT users_deleted_is_disabled
    CHECK (deleted_at IS NULL OR (status = 'disabled' AND disabled_at IS NOT NULL));

-- A deleted account's home: address overwritten, out of dispatch search, no new grants.
ALTER TABLE properties ADD COLUMN deleted_at timestamptz;

-- A grant's justification (free text a dispatcher typed) once erased.
ALTER TABLE grants ADD COLUMN justification_erased_at timestamptz;

-- A trusted party's label ("Sam at no. 12") once erased.
ALTER TABLE trusted_parties ADD COLUMN label_erased_at timestamptz;

-- Plan versions stay immutable, except that the personal parts of a version (its responder notes
-- and contacts) may be erased, once. The conditions (agencies, approval rules, retention: what
-- grants were decided under) stay for the reconciliation of past grants. Compared as whole rows
-- minus the erasable columns, so columns added later are protected as well.
ALTER TABLE access_plans ADD COLUMN erased_at timestamptz;
CREATE FUNCTION firstkey_plan_erase_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.erased_at IS NULL AND NEW.erased_at IS NOT NULL
       AND NEW.notes_ciphertext IS NULL AND NEW.notes_wrapped_key IS NULL AND NEW.notes_kek_id IS NULL
       AND NEW.contacts = '[]'::jsonb
       AND (to_jsonb(OLD) - 'notes_ciphertext' - 'notes_wrapped_key' - 'notes_kek_id' - 'contacts' - 'erased_at')
           = (to_jsonb(NEW) - 'notes_ciphertext' - 'notes_wrapped_key' - 'notes_kek_id' - 'contacts' - 'erased_at')
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'firstkey: % on % is not allowed (append-only table; a version''s notes and contacts may only be erased)',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;
DROP TRIGGER access_plans_immutable ON access_plans;
CREATE TRIGGER access_plans_immutable BEFORE UPDATE OR DELETE ON access_plans
    FOR EACH ROW EXECUTE FUNCTION firstkey_plan_erase_only();

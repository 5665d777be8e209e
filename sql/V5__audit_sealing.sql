-- Audit appends no longer serialise writers. A writer inserts its entry *pending* (no position,
-- no hashes) inside its own transaction; a sealer assigns positions and hashes in order, in batches,
-- under a per-municipality lock, as a Certificate Transparency log integrates queued entries.
-- A sealed entry is immutable; a pending entry may be sealed exactly once and changes nothing else.

ALTER TABLE audit_entries DROP CONSTRAINT audit_entries_pkey;
ALTER TABLE audit_entries ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE audit_entries ADD PRIMARY KEY (id);
ALTER TABLE audit_entries ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE audit_entries ALTER COLUMN leaf_hash DROP NOT NULL;
ALTER TABLE audit_entries ALTER COLUMN chain_hash DROP NOT NULL;
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_position UNIQUE (municipality_id, seq);
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_sealed_whole
    CHECK ((seq IS NULL) = (leaf_hash IS NULL) AND (seq IS NULL) = (chain_hash IS NULL));
CREATE INDEX audit_entries_pending ON audit_entries (municipality_id, id) WHERE seq IS NULL;

CREATE FUNCTION firstkey_audit_seal_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL
       AND (OLD.municipality_id, OLD.recorded_at, OLD.actor_id, OLD.action, OLD.outcome, OLD.subject_kind,
            OLD.subject_id, OLD.property_id, OLD.incident_id, OLD.policy_set_hash, OLD.public_details,
            OLD.private_details, OLD.data_key_id, OLD.id)
           IS NOT DISTINCT FROM
           (NEW.municipality_id, NEW.recorded_at, NEW.actor_id, NEW.action, NEW.outcome, NEW.subject_kind,
            NEW.subject_id, NEW.property_id, NEW.incident_id, NEW.policy_set_hash, NEW.public_details,
            NEW.private_details, NEW.data_key_id, NEW.id)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'firstkey: % on % is not allowed (append-only table; pending entries may only be sealed)',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER audit_entries_immutable ON audit_entries;
CREATE TRIGGER audit_entries_immutable BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION firstkey_audit_seal_only();

-- firstkey: issue 12's remainders. The physical key and key box in the plan, homeowner-set offline
-- periods, lock alarm ids, and the alarm rules each plan version was written under.

-- Where a physical key or key box is and who holds a key (shown on the dispatcher's summary), and
-- the key box code, sealed like the notes (its own data key, wrapped by the key-encryption key,
-- bound to the plan row and to its purpose) and shown only through the audited reveal.
-- `alarm_rules` is the homeowner's alarm rules in force when the version was written (NULL: a
-- version written before rules were recorded with plans). Columns added with a default write no
-- row, so the immutability trigger does not fire.
ALTER TABLE access_plans
    ADD COLUMN physical_key        jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(physical_key) = 'object'),
    ADD COLUMN key_box_ciphertext  bytea,
    ADD COLUMN key_box_wrapped_key bytea,
    ADD COLUMN alarm_rules         jsonb CHECK (alarm_rules IS NULL OR jsonb_typeof(alarm_rules) = 'array'),
    ADD CONSTRAINT access_plans_key_box_sealed CHECK ((key_box_ciphertext IS NULL) = (key_box_wrapped_key IS NULL));

-- How long a lock may be out of touch before its homeowner is mailed: the property's period
-- (default 24 h), or the lock's own. Seconds, so the sweep can be exercised against a real, stopped
-- agent; the homeowner's pages and JSON take minutes (at least 10, beyond the channel's
-- status-write interval, so a connected lock is never "offline").
ALTER TABLE properties
    ADD COLUMN offline_after_seconds integer NOT NULL DEFAULT 86400
        CHECK (offline_after_seconds BETWEEN 1 AND 2592000);
ALTER TABLE locks
    ADD COLUMN offline_after_seconds integer CHECK (offline_after_seconds IS NULL OR offline_after_seconds BETWEEN 1 AND 2592000);
UPDATE locks SET offline_after_seconds = offline_after_minutes * 60 WHERE offline_after_minutes <> 1440;
-- `offline_after_minutes` is no longer read; it stays while replicas of the previous release may
-- still run (rolling upgrades, docs/operations.md) and goes in a later release.
COMMENT ON COLUMN locks.offline_after_minutes IS 'unused since V32 (offline_after_seconds); drop in a later release';

-- The id a lock gives its alarm (`AgentMessage::Alarm.id`): the same alarm offered again, at any
-- time, is recognised and acted on once.
ALTER TABLE alarms ADD COLUMN source_alarm_id uuid;
CREATE UNIQUE INDEX alarms_source_alarm ON alarms (municipality_id, source, source_ref, source_alarm_id)
    WHERE source_alarm_id IS NOT NULL;

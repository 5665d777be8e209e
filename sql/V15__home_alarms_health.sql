-- firstkey: the home talks back (issue 12): alarms from monitoring centres and locks, what the
-- homeowner's plan says to do about each alarm kind, battery history and health alerts, door events.

-- A monitoring account (at the provider holding an API credential) linked by the homeowner to a
-- property: an alarm names the account, never the property.
CREATE TABLE monitoring_accounts (
    id              uuid NOT NULL,
    municipality_id uuid NOT NULL,
    property_id     uuid NOT NULL,
    key_id          text NOT NULL REFERENCES api_credentials (key_id),
    account         text NOT NULL CHECK (length(account) BETWEEN 1 AND 100),
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (key_id, account),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, created_by) REFERENCES users (municipality_id, id)
);

-- The homeowner's rule per alarm kind: nothing, an incident for dispatch, or an incident and an
-- automatic grant for a named agency for `minutes`. No row: the alarm is only audited.
CREATE TABLE alarm_rules (
    municipality_id uuid NOT NULL,
    property_id     uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('smoke', 'co', 'medical', 'intrusion')),
    action          text NOT NULL CHECK (action IN ('nothing', 'incident', 'incident_and_grant')),
    agency_id       uuid,
    minutes         integer CHECK (minutes IS NULL OR minutes BETWEEN 1 AND 1440),
    updated_by      uuid NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (property_id, kind),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, agency_id) REFERENCES agencies (municipality_id, id),
    FOREIGN KEY (municipality_id, updated_by) REFERENCES users (municipality_id, id),
    CHECK ((action = 'nothing') = (agency_id IS NULL)),
    CHECK ((action = 'incident_and_grant') = (minutes IS NOT NULL))
);

-- Every alarm received. A duplicate (same property and kind within the burst window of an alarm
-- that opened an incident) names that incident and opens none.
CREATE TABLE alarms (
    id              uuid NOT NULL,
    municipality_id uuid NOT NULL,
    property_id     uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('smoke', 'co', 'medical', 'intrusion')),
    source          text NOT NULL CHECK (source IN ('monitoring', 'lock')),
    -- The credential's key id, or the lock's id.
    source_ref      text NOT NULL CHECK (length(source_ref) BETWEEN 1 AND 100),
    confirmed       boolean NOT NULL,
    detector        text CHECK (detector IS NULL OR length(detector) BETWEEN 1 AND 100),
    received_at     timestamptz NOT NULL,
    incident_id     uuid,
    grant_id        uuid,
    duplicate       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, incident_id) REFERENCES incidents (municipality_id, id),
    FOREIGN KEY (municipality_id, grant_id) REFERENCES grants (municipality_id, id)
);
CREATE INDEX alarms_burst ON alarms (property_id, kind, received_at DESC) WHERE incident_id IS NOT NULL;
CREATE INDEX alarms_incident ON alarms (incident_id) WHERE incident_id IS NOT NULL;

-- A grant made by the homeowner's standing alarm rule (granted_by is then the homeowner).
ALTER TABLE grants ADD COLUMN alarm_id uuid;

-- Battery and health. `battery_alert_level` is the lowest threshold already mailed for the current
-- discharge (reset when the level climbs back above 30 %), so each crossing is mailed once;
-- `offline_alerted_at` is set when the "not seen" mail went out and cleared when the lock is seen.
ALTER TABLE locks
    ADD COLUMN battery_millivolts   integer CHECK (battery_millivolts IS NULL OR battery_millivolts BETWEEN 0 AND 100000),
    ADD COLUMN battery_alert_level  smallint CHECK (battery_alert_level IS NULL OR battery_alert_level IN (30, 15, 5)),
    ADD COLUMN offline_after_minutes integer NOT NULL DEFAULT 1440 CHECK (offline_after_minutes BETWEEN 10 AND 43200),
    ADD COLUMN offline_alerted_at   timestamptz;

-- Battery history: one row per change of level (a lock reporting the same level writes none).
CREATE TABLE lock_battery_history (
    lock_id         uuid NOT NULL REFERENCES locks (id),
    at              timestamptz NOT NULL,
    percent         smallint NOT NULL CHECK (percent BETWEEN 0 AND 100),
    millivolts      integer CHECK (millivolts IS NULL OR millivolts BETWEEN 0 AND 100000),
    PRIMARY KEY (lock_id, at)
);

-- The offline sweep: paired locks not seen for a while and not yet mailed about.
CREATE INDEX locks_offline_sweep ON locks (last_seen_at)
    WHERE pairing_state = 'paired' AND offline_alerted_at IS NULL;

-- Door events (key override, forced, held open, jammed) are receipts in the lock's chain with
-- decision 'event' and the event as the reason.
ALTER TABLE receipts DROP CONSTRAINT receipts_decision_check;
ALTER TABLE receipts ADD CONSTRAINT receipts_decision_check CHECK (decision IN ('allow', 'deny', 'event'));

-- firstkey: access hardening (issue 8: plan re-decision at approval, incident↔property links,
-- pairing failures per window, pairing registrations scoped by proof).

-- A grant that waited for a second approval records the plan version in force when it was approved
-- (the approval re-decides against it); `plan_id` stays the version it was requested under.
ALTER TABLE grants ADD COLUMN approved_plan_id uuid;
ALTER TABLE grants ADD CONSTRAINT grants_approved_plan
    FOREIGN KEY (municipality_id, approved_plan_id) REFERENCES access_plans (municipality_id, id);
ALTER TABLE grants ADD CONSTRAINT grants_approved_plan_with_approver
    CHECK (approved_plan_id IS NULL OR approved_by IS NOT NULL);

-- An explicit tie between an incident and a property, made by a dispatcher of the incident's agency
-- with step-up. With a grant for the property, it is what lets that agency's dispatchers reveal the
-- home's responder notes (an address match is no tie).
CREATE TABLE incident_properties (
    municipality_id uuid NOT NULL,
    incident_id     uuid NOT NULL,
    property_id     uuid NOT NULL,
    linked_by       uuid,
    linked_at       timestamptz NOT NULL,
    PRIMARY KEY (incident_id, property_id),
    FOREIGN KEY (municipality_id, incident_id) REFERENCES incidents (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, linked_by) REFERENCES users (municipality_id, id)
);
CREATE INDEX incident_properties_property ON incident_properties (municipality_id, property_id);

-- Wrong pairing codes are limited per time window, not for good: three impostor connections that
-- know only a lock id could otherwise use up its attempts and lock the genuine agent out forever.
-- `failed_attempts` now counts the failures of the window that started at `failure_window_start`.
ALTER TABLE lock_pairings ADD COLUMN failure_window_start timestamptz;

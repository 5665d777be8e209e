-- firstkey: access hardening (issue 8: plan re-decision at approval, incident↔property links,
-- pairing failures per window, pairing registrations scoped by proof).

-- A grant that waited for a second approval records the plan version in force when it was approved
-- (the approval re-decides against it); `plan_id` stays the version it was requested under.
ALTER TABLE grants ADD COLUMN approved_plan_id uuid;
ALTER TABLE grants ADD CONSTRAINT grants_approved_plan
    FOREIGN KEY (municipality_id, approved_plan_id) REFERENCES access_plans (municipality_id, id);
ALTER TABLE grants ADD CONSTRAINT grants_approved_plan_with_approver
    CHECK (approved_plan_id IS NULL OR approved_by IS NOT NULL);

-- V30: live consent (issue 11 §3). Where the plan asks for it, a grant for a home first asks its
-- owner, who approves or refuses it from a mailed one-time link with a fresh passkey assertion;
-- without an answer in time the plan's fallback applies (proceed, or a second dispatcher).

-- The plan's rule: {"timeout_seconds": 15…1800, "fallback": "proceed" | "second_dispatcher"}, or
-- NULL for "do not ask". Plans stay immutable (access_plans_immutable).
ALTER TABLE access_plans ADD COLUMN live_consent jsonb
    CHECK (live_consent IS NULL OR jsonb_typeof(live_consent) = 'object');

-- The grant's state machine gains `awaiting_consent` (before any approval) and `refused` (the
-- homeowner said no: ended, never live, no token).
ALTER TABLE grants DROP CONSTRAINT grants_status_check;
ALTER TABLE grants ADD CONSTRAINT grants_status_check
    CHECK (status IN ('awaiting_consent', 'awaiting_approval', 'live', 'refused', 'revoked', 'ended'));
ALTER TABLE grants DROP CONSTRAINT grants_end_reason_check;
ALTER TABLE grants ADD CONSTRAINT grants_end_reason_check
    CHECK (end_reason IS NULL OR end_reason IN ('revoked', 'incident_closed', 'expired', 'consent_refused'));
ALTER TABLE grants DROP CONSTRAINT grants_check2;
ALTER TABLE grants ADD CONSTRAINT grants_ended_when_ended
    CHECK ((status IN ('refused', 'revoked', 'ended')) = (ended_at IS NOT NULL));

-- One request for consent per grant that needed one. The link's secret is kept only as its
-- SHA-256; the request is answered once (status leaves `pending`), and not after `expires_at`,
-- when the background loop (every replica, rows claimed with SKIP LOCKED) applies `fallback`.
CREATE TABLE grant_consents (
    grant_id        uuid NOT NULL,
    municipality_id uuid NOT NULL,
    property_id     uuid NOT NULL,
    -- The homeowner asked (the property's owner when the grant was made).
    owner_id        uuid NOT NULL,
    secret_hash     bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    status          text NOT NULL
        CHECK (status IN ('pending', 'approved', 'refused', 'timed_out', 'cancelled')),
    -- What the grant becomes once consent is given (as it would have been without asking).
    then_status     text NOT NULL CHECK (then_status IN ('live', 'awaiting_approval')),
    timeout_seconds integer NOT NULL CHECK (timeout_seconds BETWEEN 15 AND 1800),
    fallback        text NOT NULL CHECK (fallback IN ('proceed', 'second_dispatcher')),
    asked_at        timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    PRIMARY KEY (grant_id),
    UNIQUE (municipality_id, grant_id),
    FOREIGN KEY (municipality_id, grant_id) REFERENCES grants (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, owner_id) REFERENCES users (municipality_id, id),
    CHECK (expires_at = asked_at + make_interval(secs => timeout_seconds)),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
CREATE INDEX grant_consents_due ON grant_consents (expires_at) WHERE status = 'pending';

-- The dispatcher console shows the consent state live: a change notifies the incident's consoles
-- as a grant's change does (V18).
CREATE FUNCTION firstkey_grant_state_of_consent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM firstkey_notify_grant_state(g.municipality_id, g.incident_id)
       FROM grants g WHERE g.id = NEW.grant_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER grant_consents_notify_state AFTER INSERT OR UPDATE OF status ON grant_consents
    FOR EACH ROW EXECUTE FUNCTION firstkey_grant_state_of_consent();

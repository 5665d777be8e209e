-- firstkey: trusted parties with standing access (issue 11 §1) and the homeowner's remote unlock (§3).
--
-- A homeowner invites a neighbour, relative, home-care agency or security firm by e-mail for one
-- property: which locks, a window of at most 90 days (renewable), an optional weekly schedule and a
-- number of entries per day. The invitee accepts through the one-time invitation link (enrolling a
-- security key) and then asks for tokens as a responder does; `issued_tokens` records them with
-- the trusted party instead of a grant.

ALTER TABLE user_roles DROP CONSTRAINT user_roles_role_check;
ALTER TABLE user_roles ADD CONSTRAINT user_roles_role_check
    CHECK (role IN ('municipal_admin', 'dispatcher', 'responder', 'auditor', 'homeowner', 'trusted_party'));

ALTER TABLE invitations DROP CONSTRAINT invitations_role_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_role_check
    CHECK (role IN ('municipal_admin', 'dispatcher', 'responder', 'auditor', 'trusted_party'));

CREATE TABLE trusted_parties (
    id                  uuid NOT NULL,
    municipality_id     uuid NOT NULL,
    property_id         uuid NOT NULL,
    -- The account the invitation enrols (pending until accepted).
    user_id             uuid NOT NULL,
    invitation_id       uuid NOT NULL UNIQUE REFERENCES invitations (id),
    invited_by          uuid NOT NULL,
    -- What the homeowner calls them ("Sam at no. 12"); shown to the homeowner and, if shared, to dispatch.
    label               text NOT NULL CHECK (length(label) BETWEEN 1 AND 200),
    status              text NOT NULL CHECK (status IN ('invited', 'active', 'paused', 'revoked')),
    starts_at           timestamptz NOT NULL,
    ends_at             timestamptz NOT NULL,
    -- Weekly schedule: ISO weekdays as bits (Monday = 1, …, Sunday = 64) and minutes of the day
    -- [from, until) in UTC; NULL days = any time within the window.
    schedule_days       smallint CHECK (schedule_days IS NULL OR schedule_days BETWEEN 1 AND 127),
    schedule_from       smallint CHECK (schedule_from IS NULL OR schedule_from BETWEEN 0 AND 1439),
    schedule_until      smallint CHECK (schedule_until IS NULL OR schedule_until BETWEEN 1 AND 1440),
    uses_per_day        smallint NOT NULL CHECK (uses_per_day BETWEEN 1 AND 50),
    -- Mail the homeowner each time a token is issued to them.
    notify_on_use       boolean NOT NULL,
    -- Dispatch may be told that this party holds access (shown on the plan summary).
    share_with_dispatch boolean NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    revoked_at          timestamptz,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, user_id) REFERENCES users (municipality_id, id),
    FOREIGN KEY (municipality_id, invited_by) REFERENCES users (municipality_id, id),
    CHECK (ends_at > starts_at AND ends_at <= starts_at + interval '90 days'),
    CHECK ((schedule_days IS NULL) = (schedule_from IS NULL) AND (schedule_days IS NULL) = (schedule_until IS NULL)),
    CHECK (schedule_from IS NULL OR schedule_until > schedule_from),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX trusted_parties_property ON trusted_parties (municipality_id, property_id);
CREATE INDEX trusted_parties_user ON trusted_parties (municipality_id, user_id);

-- The locks of the property a trusted party may open.
CREATE TABLE trusted_party_locks (
    municipality_id  uuid NOT NULL,
    trusted_party_id uuid NOT NULL,
    lock_id          uuid NOT NULL,
    PRIMARY KEY (trusted_party_id, lock_id),
    FOREIGN KEY (municipality_id, trusted_party_id) REFERENCES trusted_parties (municipality_id, id) ON DELETE CASCADE,
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id)
);

-- A token is minted under exactly one of: a grant (responders), a trusted party, or the
-- homeowner's remote unlock (issue 11 §3; `responder_id` is then the homeowner, and the token has
-- the `remote_open` scope and travels only over the lock's channel).
ALTER TABLE issued_tokens ALTER COLUMN grant_id DROP NOT NULL;
ALTER TABLE issued_tokens ADD COLUMN trusted_party_id uuid;
ALTER TABLE issued_tokens ADD COLUMN remote_open boolean NOT NULL DEFAULT false;
ALTER TABLE issued_tokens ADD CONSTRAINT issued_tokens_trusted_party
    FOREIGN KEY (municipality_id, trusted_party_id) REFERENCES trusted_parties (municipality_id, id);
ALTER TABLE issued_tokens ADD CONSTRAINT issued_tokens_one_holder
    CHECK (num_nonnulls(grant_id, trusted_party_id) + remote_open::int = 1);
CREATE INDEX issued_tokens_trusted_party ON issued_tokens (municipality_id, trusted_party_id, issued_at)
    WHERE trusted_party_id IS NOT NULL;

-- The homeowner's remote unlock travels as its own inbox entry kind (PROTOCOL.md, "Remote open").
ALTER TABLE lock_inbox DROP CONSTRAINT lock_inbox_kind_check;
ALTER TABLE lock_inbox ADD CONSTRAINT lock_inbox_kind_check
    CHECK (kind IN ('token', 'revocation', 'trust_bundle', 'remote_open'));

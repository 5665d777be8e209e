-- firstkey: the whole domain of DESIGN.md in one schema.
--
-- Tenancy: every tenant-owned row carries `municipality_id`, and every reference between tenant-owned
-- rows is a composite foreign key `(municipality_id, x_id)`, so the database itself refuses a row of
-- municipality A that points at a row of municipality B.
--
-- Immutability: access-plan versions, receipts, audit entries, checkpoints and inbox payloads are
-- append-only; `firstkey_forbid_change()` refuses UPDATE and DELETE on them for every role that does
-- not disable triggers (i.e. everyone but a superuser acting deliberately).

CREATE FUNCTION firstkey_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'firstkey: % on % is not allowed (append-only table)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- ---------------------------------------------------------------- tenants, agencies, people

CREATE TABLE municipalities (
    id              uuid PRIMARY KEY,
    slug            text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Attestation CAs (PEM) admitted for hardware security keys, besides webauthn-rs's strict list.
    attestation_cas jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(attestation_cas) = 'array'),
    -- SHA-256 of the municipality's own Cedar policy set; NULL means the shipped default.
    policy_set_hash bytea CHECK (policy_set_hash IS NULL OR length(policy_set_hash) = 32),
    root_public_key bytea CHECK (root_public_key IS NULL OR length(root_public_key) = 32),
    created_at      timestamptz NOT NULL
);

CREATE TABLE agencies (
    id              uuid NOT NULL,
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    kind            text NOT NULL CHECK (kind IN ('fire', 'ems', 'police', 'other')),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    UNIQUE (municipality_id, name)
);

CREATE TABLE users (
    id                uuid NOT NULL,
    municipality_id   uuid NOT NULL REFERENCES municipalities (id),
    agency_id         uuid,
    email             text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 320),
    display_name      text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('pending', 'active', 'disabled')),
    email_verified_at timestamptz,
    -- Radio unit or call sign, e.g. "Engine 7" (responders).
    unit              text CHECK (unit IS NULL OR length(unit) BETWEEN 1 AND 100),
    created_at        timestamptz NOT NULL,
    disabled_at       timestamptz,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, agency_id) REFERENCES agencies (municipality_id, id),
    CHECK ((status = 'disabled') = (disabled_at IS NOT NULL))
);
CREATE UNIQUE INDEX users_email_per_municipality ON users (municipality_id, lower(email));
CREATE INDEX users_agency ON users (municipality_id, agency_id) WHERE agency_id IS NOT NULL;

CREATE TABLE user_roles (
    municipality_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    role            text NOT NULL CHECK (role IN ('municipal_admin', 'dispatcher', 'responder', 'auditor', 'homeowner')),
    granted_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, role),
    FOREIGN KEY (municipality_id, user_id) REFERENCES users (municipality_id, id) ON DELETE CASCADE
);
CREATE INDEX user_roles_by_role ON user_roles (municipality_id, role);

CREATE TABLE invitations (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL,
    agency_id       uuid,
    role            text NOT NULL CHECK (role IN ('municipal_admin', 'dispatcher', 'responder', 'auditor')),
    email           text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    -- SHA-256 of the one-time secret in the link; the secret itself is never stored.
    secret_hash     bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    FOREIGN KEY (municipality_id, agency_id) REFERENCES agencies (municipality_id, id),
    FOREIGN KEY (municipality_id, created_by) REFERENCES users (municipality_id, id),
    CHECK (expires_at > created_at)
);

-- ---------------------------------------------------------------- WebAuthn and sessions

CREATE TABLE webauthn_credentials (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    credential_id   bytea NOT NULL UNIQUE CHECK (length(credential_id) BETWEEN 16 AND 1023),
    kind            text NOT NULL CHECK (kind IN ('security_key', 'passkey')),
    -- webauthn-rs's serialised credential (public key, counter, flags).
    credential      jsonb NOT NULL,
    public_key_cose bytea NOT NULL,
    attestation_ca  text,
    sign_count      bigint NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    backup_eligible boolean NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz,
    suspended_at    timestamptz,
    FOREIGN KEY (municipality_id, user_id) REFERENCES users (municipality_id, id),
    UNIQUE (municipality_id, id),
    -- Hardware security keys for responders and dispatchers are never synced credentials.
    CHECK (NOT (kind = 'security_key' AND backup_eligible))
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (municipality_id, user_id);

-- Ceremony state: single-use (deleted when consumed) and short-lived.
CREATE TABLE webauthn_ceremonies (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    user_id         uuid,
    kind            text NOT NULL CHECK (kind IN ('registration', 'authentication')),
    state           jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    FOREIGN KEY (municipality_id, user_id) REFERENCES users (municipality_id, id),
    CHECK (expires_at > created_at AND expires_at <= created_at + interval '5 minutes')
);
CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at);

CREATE TABLE sessions (
    id                  uuid PRIMARY KEY,
    municipality_id     uuid NOT NULL,
    user_id             uuid NOT NULL,
    -- SHA-256 of the cookie secret.
    secret_hash         bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at          timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    -- Time of the last fresh WebAuthn assertion (step-up) and the credential used for it.
    stepped_up_at       timestamptz,
    step_up_credential  uuid,
    ended_at            timestamptz,
    FOREIGN KEY (municipality_id, user_id) REFERENCES users (municipality_id, id),
    FOREIGN KEY (municipality_id, step_up_credential) REFERENCES webauthn_credentials (municipality_id, id),
    CHECK (absolute_expires_at > created_at)
);
CREATE INDEX sessions_user_live ON sessions (user_id) WHERE ended_at IS NULL;

-- ---------------------------------------------------------------- properties, locks, plans

CREATE TABLE properties (
    id              uuid NOT NULL,
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    owner_id        uuid NOT NULL,
    address         text NOT NULL CHECK (length(address) BETWEEN 1 AND 500),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, owner_id) REFERENCES users (municipality_id, id)
);
CREATE INDEX properties_owner ON properties (municipality_id, owner_id);
CREATE INDEX properties_address ON properties (municipality_id, lower(address));

CREATE TABLE locks (
    id                    uuid NOT NULL,
    municipality_id       uuid NOT NULL,
    property_id           uuid NOT NULL,
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    pairing_state         text NOT NULL DEFAULT 'unpaired' CHECK (pairing_state IN ('unpaired', 'paired', 'retired')),
    device_public_key     bytea UNIQUE CHECK (device_public_key IS NULL OR length(device_public_key) = 32),
    paired_at             timestamptz,
    last_seen_at          timestamptz,
    battery_percent       smallint CHECK (battery_percent BETWEEN 0 AND 100),
    -- Inbox sequence numbers: the next one to hand out, and the last one the agent acknowledged.
    inbox_next_seq        bigint NOT NULL DEFAULT 1 CHECK (inbox_next_seq >= 1),
    inbox_acked_seq       bigint NOT NULL DEFAULT 0 CHECK (inbox_acked_seq >= 0 AND inbox_acked_seq < inbox_next_seq),
    trust_bundle_version  bigint,
    created_at            timestamptz NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    UNIQUE (property_id, name),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    CHECK ((pairing_state = 'paired') = (device_public_key IS NOT NULL AND paired_at IS NOT NULL)
           OR pairing_state = 'retired')
);
CREATE INDEX locks_property ON locks (municipality_id, property_id);

-- A pairing attempt: the homeowner typed the code the agent printed; the agent proves its device key
-- when it connects.
CREATE TABLE lock_pairings (
    lock_id           uuid PRIMARY KEY,
    municipality_id   uuid NOT NULL,
    code_hash         bytea NOT NULL CHECK (length(code_hash) = 32),
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id) ON DELETE CASCADE
);

-- Access plans are versioned and immutable: an edit inserts version n+1; a grant records the version
-- it was decided under.
CREATE TABLE access_plans (
    id                   uuid NOT NULL,
    municipality_id      uuid NOT NULL,
    property_id          uuid NOT NULL,
    version              integer NOT NULL CHECK (version >= 1),
    created_at           timestamptz NOT NULL,
    created_by           uuid NOT NULL,
    -- Agencies and their conditions, incident types, approval rules: the Cedar entity attributes.
    rules                jsonb NOT NULL CHECK (jsonb_typeof(rules) = 'object'),
    max_grant_minutes    integer NOT NULL CHECK (max_grant_minutes BETWEEN 1 AND 1440),
    -- Responder notes, envelope-encrypted: a data key wrapped by the configured key-encryption key.
    notes_ciphertext     bytea,
    notes_wrapped_key    bytea,
    notes_kek_id         text,
    contacts             jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(contacts) = 'array'),
    notifications        jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(notifications) = 'object'),
    retention_days       integer NOT NULL CHECK (retention_days BETWEEN 1 AND 3650),
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    UNIQUE (property_id, version),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, created_by) REFERENCES users (municipality_id, id),
    CHECK ((notes_ciphertext IS NULL) = (notes_wrapped_key IS NULL))
);
CREATE TRIGGER access_plans_immutable BEFORE UPDATE OR DELETE ON access_plans
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- ---------------------------------------------------------------- incidents and grants

CREATE TABLE incidents (
    id              uuid NOT NULL,
    municipality_id uuid NOT NULL,
    agency_id       uuid NOT NULL,
    cad_number      text NOT NULL CHECK (length(cad_number) BETWEEN 1 AND 64),
    kind            text NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
    address         text NOT NULL CHECK (length(address) BETWEEN 1 AND 500),
    opened_by       uuid,
    opened_at       timestamptz NOT NULL,
    closed_at       timestamptz,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    UNIQUE (municipality_id, cad_number),
    FOREIGN KEY (municipality_id, agency_id) REFERENCES agencies (municipality_id, id),
    FOREIGN KEY (municipality_id, opened_by) REFERENCES users (municipality_id, id),
    CHECK (closed_at IS NULL OR closed_at >= opened_at)
);
CREATE INDEX incidents_open ON incidents (municipality_id) WHERE closed_at IS NULL;

CREATE TABLE grants (
    id               uuid NOT NULL,
    municipality_id  uuid NOT NULL,
    incident_id      uuid NOT NULL,
    property_id      uuid NOT NULL,
    -- The plan version this grant was decided under.
    plan_id          uuid NOT NULL,
    granted_by       uuid NOT NULL,
    approved_by      uuid,
    unit             text CHECK (unit IS NULL OR length(unit) BETWEEN 1 AND 100),
    justification    text NOT NULL CHECK (length(justification) BETWEEN 1 AND 2000),
    status           text NOT NULL CHECK (status IN ('awaiting_approval', 'live', 'revoked', 'ended')),
    policy_set_hash  bytea NOT NULL CHECK (length(policy_set_hash) = 32),
    created_at       timestamptz NOT NULL,
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    ended_at         timestamptz,
    end_reason       text CHECK (end_reason IS NULL OR end_reason IN ('revoked', 'incident_closed', 'expired')),
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, incident_id) REFERENCES incidents (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, plan_id) REFERENCES access_plans (municipality_id, id),
    FOREIGN KEY (municipality_id, granted_by) REFERENCES users (municipality_id, id),
    FOREIGN KEY (municipality_id, approved_by) REFERENCES users (municipality_id, id),
    CHECK (ends_at > starts_at),
    CHECK (approved_by IS NULL OR approved_by <> granted_by),
    CHECK ((status IN ('revoked', 'ended')) = (ended_at IS NOT NULL))
);
CREATE INDEX grants_live_by_property ON grants (municipality_id, property_id) WHERE status = 'live';
CREATE INDEX grants_incident ON grants (municipality_id, incident_id);

-- The responders a grant names (a grant to a unit names its members at the time of the grant).
CREATE TABLE grant_responders (
    municipality_id uuid NOT NULL,
    grant_id        uuid NOT NULL,
    responder_id    uuid NOT NULL,
    PRIMARY KEY (grant_id, responder_id),
    FOREIGN KEY (municipality_id, grant_id) REFERENCES grants (municipality_id, id),
    FOREIGN KEY (municipality_id, responder_id) REFERENCES users (municipality_id, id)
);
CREATE INDEX grant_responders_by_responder ON grant_responders (municipality_id, responder_id);

-- ---------------------------------------------------------------- keys, tokens, the lock channel

-- Public halves of issuer signing keys; private halves live in the key directory, never here.
CREATE TABLE signing_keys (
    kid             text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    public_key      bytea NOT NULL CHECK (length(public_key) = 32),
    created_at      timestamptz NOT NULL,
    retired_at      timestamptz
);

CREATE TABLE trust_bundles (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    version         bigint NOT NULL CHECK (version >= 1),
    bundle          bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, version)
);
CREATE TRIGGER trust_bundles_immutable BEFORE UPDATE OR DELETE ON trust_bundles
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- Metadata of every override token ever minted (never the token's signature-bearing bytes in logs).
CREATE TABLE issued_tokens (
    cti             bytea PRIMARY KEY CHECK (length(cti) = 16),
    municipality_id uuid NOT NULL,
    grant_id        uuid NOT NULL,
    lock_id         uuid NOT NULL,
    responder_id    uuid NOT NULL,
    credential_id   uuid,
    kid             text NOT NULL REFERENCES signing_keys (kid),
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    issued_at       timestamptz NOT NULL,
    not_before      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'issued' CHECK (status IN ('issued', 'delivered', 'used', 'revoked', 'expired')),
    revoked_at      timestamptz,
    FOREIGN KEY (municipality_id, grant_id) REFERENCES grants (municipality_id, id),
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id),
    FOREIGN KEY (municipality_id, responder_id) REFERENCES users (municipality_id, id),
    FOREIGN KEY (municipality_id, credential_id) REFERENCES webauthn_credentials (municipality_id, id),
    CHECK (expires_at > not_before)
);
CREATE INDEX issued_tokens_grant ON issued_tokens (municipality_id, grant_id);
CREATE INDEX issued_tokens_lock_live ON issued_tokens (lock_id, expires_at) WHERE status IN ('issued', 'delivered');

-- The per-lock durable, ordered inbox. Rows are immutable; the agent's acknowledgement moves
-- locks.inbox_acked_seq, and rows at or below it may be pruned by retention.
CREATE TABLE lock_inbox (
    lock_id         uuid NOT NULL,
    seq             bigint NOT NULL CHECK (seq >= 1),
    municipality_id uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('token', 'revocation', 'trust_bundle')),
    payload         bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (lock_id, seq),
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id)
);
CREATE TRIGGER lock_inbox_no_update BEFORE UPDATE ON lock_inbox
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- Signed tap decisions from the locks, hash-chained per lock. Upload is idempotent on (lock_id, seq).
CREATE TABLE receipts (
    lock_id         uuid NOT NULL,
    seq             bigint NOT NULL CHECK (seq >= 0),
    municipality_id uuid NOT NULL,
    receipt         bytea NOT NULL,
    receipt_hash    bytea NOT NULL UNIQUE CHECK (length(receipt_hash) = 32),
    prev_hash       bytea NOT NULL CHECK (length(prev_hash) = 32),
    decision        text NOT NULL CHECK (decision IN ('allow', 'deny')),
    reason          text NOT NULL,
    token_hash      bytea CHECK (token_hash IS NULL OR length(token_hash) = 32),
    decided_at      timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (lock_id, seq),
    FOREIGN KEY (municipality_id, lock_id) REFERENCES locks (municipality_id, id)
);
CREATE TRIGGER receipts_immutable BEFORE UPDATE OR DELETE ON receipts
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- ---------------------------------------------------------------- audit

-- Per-subject data keys for crypto-shredding: deleting a key erases the personal data of every entry
-- encrypted under it, while the entries' hashes (and so the Merkle tree) stay verifiable.
CREATE TABLE audit_data_keys (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    property_id     uuid,
    wrapped_key     bytea,
    created_at      timestamptz NOT NULL,
    erase_after     timestamptz NOT NULL,
    erased_at       timestamptz,
    UNIQUE (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    CHECK ((erased_at IS NULL) = (wrapped_key IS NOT NULL))
);
CREATE INDEX audit_data_keys_due ON audit_data_keys (erase_after) WHERE erased_at IS NULL;

-- One immutable record per access and decision. `leaf_hash` is the RFC 9162 leaf hash of the entry's
-- canonical bytes (which include the ciphertext, not the plaintext, of personal data); `chain_hash`
-- links each entry to the previous one of the same municipality.
CREATE TABLE audit_entries (
    municipality_id  uuid NOT NULL REFERENCES municipalities (id),
    seq              bigint NOT NULL CHECK (seq >= 0),
    recorded_at      timestamptz NOT NULL,
    actor_id         uuid,
    action           text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{1,63}$'),
    outcome          text NOT NULL CHECK (outcome IN ('allow', 'deny', 'info')),
    subject_kind     text,
    subject_id       uuid,
    property_id      uuid,
    incident_id      uuid,
    policy_set_hash  bytea CHECK (policy_set_hash IS NULL OR length(policy_set_hash) = 32),
    public_details   jsonb NOT NULL DEFAULT '{}'::jsonb,
    private_details  bytea,
    data_key_id      uuid,
    leaf_hash        bytea NOT NULL CHECK (length(leaf_hash) = 32),
    chain_hash       bytea NOT NULL CHECK (length(chain_hash) = 32),
    PRIMARY KEY (municipality_id, seq),
    FOREIGN KEY (municipality_id, actor_id) REFERENCES users (municipality_id, id),
    FOREIGN KEY (municipality_id, property_id) REFERENCES properties (municipality_id, id),
    FOREIGN KEY (municipality_id, incident_id) REFERENCES incidents (municipality_id, id),
    FOREIGN KEY (municipality_id, data_key_id) REFERENCES audit_data_keys (municipality_id, id),
    CHECK ((private_details IS NULL) = (data_key_id IS NULL))
);
CREATE INDEX audit_entries_property ON audit_entries (municipality_id, property_id, seq) WHERE property_id IS NOT NULL;
CREATE INDEX audit_entries_actor ON audit_entries (municipality_id, actor_id, seq) WHERE actor_id IS NOT NULL;
CREATE TRIGGER audit_entries_immutable BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- Signed heads of each municipality's audit log, as in Certificate Transparency.
CREATE TABLE audit_checkpoints (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    tree_size       bigint NOT NULL CHECK (tree_size >= 1),
    root_hash       bytea NOT NULL CHECK (length(root_hash) = 32),
    kid             text NOT NULL,
    signature       bytea NOT NULL CHECK (length(signature) = 64),
    signed_at       timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, tree_size)
);
CREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- ---------------------------------------------------------------- integration and notification

-- Per-municipality API credentials for CAD systems (HMAC-signed requests).
CREATE TABLE api_credentials (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    key_id          text NOT NULL UNIQUE CHECK (key_id ~ '^[A-Za-z0-9_-]{8,64}$'),
    name            text NOT NULL,
    -- The HMAC secret, wrapped by the configured key-encryption key.
    wrapped_secret  bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);

-- Idempotency keys of CAD calls: a retried call returns the stored response and does nothing twice.
CREATE TABLE idempotency_keys (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_hash    bytea NOT NULL CHECK (length(request_hash) = 32),
    response_status smallint NOT NULL,
    response_body   jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, key)
);

-- The durable notification outbox: mail is written in the same transaction as the event, and a
-- worker delivers it with retries; `dedupe_key` makes delivery of one event happen once.
CREATE TABLE notification_outbox (
    id              uuid PRIMARY KEY,
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    dedupe_key      text NOT NULL UNIQUE,
    kind            text NOT NULL,
    recipient       text NOT NULL CHECK (recipient ~ '^[^@\s]+@[^@\s]+$'),
    subject         text NOT NULL,
    body_text       text NOT NULL,
    body_html       text NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    sent_at         timestamptz,
    last_error      text
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at) WHERE sent_at IS NULL;

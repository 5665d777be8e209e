-- firstkey: identity hardening (ceremonies bound to their client, decoy sign-ins, what disabling an
-- account and suspending a key take away).

-- Every ceremony is bound to what started it: `client_hash` is the SHA-256 of the binding (the
-- ceremony cookie of a sign-in, the session of a step-up, the link of an enrolment). Finishing
-- needs the same binding, and the cap on pending ceremonies is per binding, so nobody can evict
-- another client's ceremonies.
ALTER TABLE webauthn_ceremonies ADD COLUMN client_hash bytea
    CHECK (client_hash IS NULL OR length(client_hash) = 32);
CREATE INDEX webauthn_ceremonies_client ON webauthn_ceremonies (client_hash, created_at)
    WHERE client_hash IS NOT NULL;
-- A decoy sign-in (an address without a usable account, possibly of an unknown municipality) is
-- stored like a real one, without user and possibly without municipality: its finish fails as a
-- wrong key does.
ALTER TABLE webauthn_ceremonies ALTER COLUMN municipality_id DROP NOT NULL;

-- The credential whose assertion opened a session (sign-in or enrolment); a credential suspended
-- for a counter regression ends the sessions it opened.
ALTER TABLE sessions ADD COLUMN opened_with uuid;
ALTER TABLE sessions ADD CONSTRAINT sessions_opened_with_fkey
    FOREIGN KEY (municipality_id, opened_with) REFERENCES webauthn_credentials (municipality_id, id);
-- Sessions made by a sign-in or an enrolment start stepped up with the credential that opened them.
UPDATE sessions SET opened_with = step_up_credential
    WHERE step_up_credential IS NOT NULL AND stepped_up_at = created_at;
CREATE INDEX sessions_opened_with_live ON sessions (opened_with) WHERE ended_at IS NULL;
CREATE INDEX sessions_step_up_credential_live ON sessions (step_up_credential) WHERE ended_at IS NULL;

-- An invitation withdrawn before use (its inviter was disabled).
ALTER TABLE invitations ADD COLUMN revoked_at timestamptz;
CREATE INDEX invitations_open_by_creator ON invitations (municipality_id, created_by)
    WHERE used_at IS NULL AND revoked_at IS NULL;

-- The live tokens of a responder (revoked when the account is disabled).
CREATE INDEX issued_tokens_responder_live ON issued_tokens (municipality_id, responder_id)
    WHERE status IN ('issued', 'delivered');

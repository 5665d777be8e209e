-- V31: trusted parties sign in with passkeys, as homeowners do (issue 11).
--
-- Until now a trusted party's invitation ran the staff ceremony, so their credentials are stored as
-- `security_key` (attested, hardware-bound, user verification required). From now on an account
-- whose roles are only `homeowner` and/or `trusted_party` signs in and steps up with its passkeys
-- (`CredentialKind::for_roles`), so such an account's existing keys become passkeys: the same
-- credential (webauthn-rs stores one shape for both), still user-verifying; nothing is lost and
-- nobody has to enrol again. Staff accounts (any other role) keep security keys.
UPDATE webauthn_credentials c SET kind = 'passkey'
 WHERE c.kind = 'security_key'
   AND EXISTS (SELECT 1 FROM user_roles r WHERE r.user_id = c.user_id AND r.role = 'trusted_party')
   AND NOT EXISTS (SELECT 1 FROM user_roles r
                    WHERE r.user_id = c.user_id AND r.role NOT IN ('homeowner', 'trusted_party'));

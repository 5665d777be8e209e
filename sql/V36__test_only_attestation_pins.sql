-- V36: an attestation key pin says whether it is for a test authenticator.
--
-- Chromium's virtual authenticator cannot honour an enforced credProtect policy, so registrations in
-- a municipality that pins it must ask for credProtect without enforcing it. That relaxation is now
-- kept to demo municipalities and to municipalities holding a pin marked `test_only`; a pin for a real
-- batch attestation key (not test-only) no longer relaxes it.
ALTER TABLE attestation_key_pins ADD COLUMN test_only boolean NOT NULL DEFAULT false;

-- Pins made before this migration were made for the test authenticator (the only documented use);
-- keep those municipalities' enrolments working as they did.
UPDATE attestation_key_pins SET test_only = true;

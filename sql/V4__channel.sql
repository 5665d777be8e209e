-- firstkey: the agent channel's server side (firmware-agent/PROTOCOL.md).

-- Wrong pairing codes presented at a lock's first handshake, counted so that the 50-bit code stays
-- out of reach of online guessing: at the limit the pairing is refused until the homeowner
-- registers the lock again.
ALTER TABLE lock_pairings
    ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0);

-- The lock's monotonic time floor (Unix seconds) as last reported in its Status.
ALTER TABLE locks
    ADD COLUMN time_floor bigint CHECK (time_floor IS NULL OR time_floor >= 0);

-- Counting recent denials at a lock (the repeated-denials mail).
CREATE INDEX receipts_lock_denials ON receipts (lock_id, decided_at) WHERE decision = 'deny';

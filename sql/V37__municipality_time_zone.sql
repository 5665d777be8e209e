-- V37: the municipality's time zone (IANA name), in which pages show and read times. UTC until its
-- admin sets one; the server checks the name against its zone database before storing it.
ALTER TABLE municipalities ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC'
    CHECK (length(time_zone) BETWEEN 1 AND 64 AND time_zone ~ '^[A-Za-z0-9_+/-]+$');

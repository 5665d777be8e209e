-- firstkey: a battery report writes one row, and door events are a typed column.

-- The recent battery trend (the last 100 changes of level, for the days-left estimate and the
-- homeowner's page) lives on the lock's own row, appended by the same UPDATE that records the
-- report, instead of a history row per change (which made a report cost 1.1 rows on average). The history rows so far are carried over.
ALTER TABLE locks
    ADD COLUMN battery_trend_at      timestamptz[] NOT NULL DEFAULT '{}',
    ADD COLUMN battery_trend_percent smallint[]    NOT NULL DEFAULT '{}',
    ADD CONSTRAINT locks_battery_trend_pairs
        CHECK (cardinality(battery_trend_at) = cardinality(battery_trend_percent) AND cardinality(battery_trend_at) <= 100);

UPDATE locks l SET battery_trend_at = h.ats, battery_trend_percent = h.percents
FROM (
    SELECT lock_id, array_agg(at ORDER BY at) AS ats, array_agg(percent ORDER BY at) AS percents
    FROM (SELECT lock_id, at, percent,
                 row_number() OVER (PARTITION BY lock_id ORDER BY at DESC) AS n
          FROM lock_battery_history) newest
    WHERE n <= 100
    GROUP BY lock_id
) h
WHERE h.lock_id = l.id;

-- No longer written or read; kept while replicas of the previous release may still run (rolling
-- upgrades, docs/operations.md), dropped in a later release.
COMMENT ON TABLE lock_battery_history IS 'unused since V33 (locks.battery_trend_*); drop in a later release';

-- Door events as a typed column: from the receipt's typed `door_event` field, or the `door:` reason
-- of a receipt written before it. Receipts stored before V33 keep their reason (still read by it);
-- the table is immutable, so they are not backfilled.
ALTER TABLE receipts
    ADD COLUMN door_event text CHECK (door_event IS NULL OR door_event IN ('key_override', 'forced', 'held_open', 'jammed')),
    ADD COLUMN door_event_seconds bigint CHECK (door_event_seconds IS NULL OR door_event_seconds BETWEEN 0 AND 4294967295),
    ADD CONSTRAINT receipts_door_event_decision CHECK ((door_event IS NULL) OR decision = 'event');

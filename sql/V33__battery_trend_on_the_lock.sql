-- firstkey: a battery report writes one row. The recent trend (the last 100 changes of level, for
-- the days-left estimate and the homeowner's page) lives on the lock's own row, appended by the
-- same UPDATE that records the report, instead of a history row per change (which made a report
-- cost 1.1 rows on average).
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

DROP TABLE lock_battery_history;

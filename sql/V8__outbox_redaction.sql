-- Sent mail keeps no body: a delivered invitation or verification mail must not leave its one-time
-- link readable in the database. The delivery record (recipient, subject, kind, times) stays.
ALTER TABLE notification_outbox ALTER COLUMN body_text DROP NOT NULL;
ALTER TABLE notification_outbox ALTER COLUMN body_html DROP NOT NULL;
UPDATE notification_outbox SET body_text = NULL, body_html = NULL WHERE sent_at IS NOT NULL;
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_sent_has_no_body
    CHECK (sent_at IS NULL OR (body_text IS NULL AND body_html IS NULL));

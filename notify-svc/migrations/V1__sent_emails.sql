-- One row per event that was emailed (or definitively refused by the SMTP
-- server). The primary key is what makes a redelivered event a no-op.
CREATE TABLE sent_emails (
    event_id   text        PRIMARY KEY,
    kind       text        NOT NULL,
    recipient  text        NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('sent', 'rejected')),
    detail     text,
    created_at timestamptz NOT NULL DEFAULT now()
);

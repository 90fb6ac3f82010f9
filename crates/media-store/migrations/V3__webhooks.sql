-- Webhooks (media_store::webhooks): the endpoints users register, and one
-- delivery per (endpoint, event), written in the transaction of the
-- transition whose outcome it tells (or by a test), then attempted by
-- notify-svc until the endpoint answers 2xx or the retries run out.
CREATE TABLE webhook_endpoints (
    id          text        COLLATE "C" PRIMARY KEY CHECK (id ~ '^wh_[0-9a-f]{32}$'),
    owner_id    text        NOT NULL,
    url         text        NOT NULL CHECK (length(url) <= 2048),
    description text        NOT NULL DEFAULT '' CHECK (length(description) <= 1024),
    -- "whsec_" + base64: needed in clear to sign, so never shown after
    -- creation and never logged.
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at DESC);

CREATE TABLE webhook_deliveries (
    id              text        COLLATE "C" PRIMARY KEY,
    endpoint_id     text        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    owner_id        text        NOT NULL,
    -- The webhook-id header: the event's id, the same on every attempt.
    message_id      text        NOT NULL,
    event_type      text        NOT NULL,
    job_id          text,
    -- The message's "data"; notify-svc adds what only it knows (the public
    -- download URL) when it sends.
    data            jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    state           text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'retrying', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    response_status integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- An outcome announced again (the janitor) makes no second delivery.
    UNIQUE (endpoint_id, message_id)
);

-- The user's delivery log, newest first; and the retention sweep.
CREATE INDEX webhook_deliveries_owner ON webhook_deliveries (owner_id, created_at DESC);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

-- One row per upload: the job's state machine (see media_store::jobs). The
-- bytes (the video, the MP3) are in GridFS under the job's id; everything
-- that decides who may do what to a job is here, in one row, changed by one
-- conditional statement at a time.
CREATE TABLE jobs (
    -- The video's GridFS id: a MongoDB ObjectId in hex, so ids sort by time.
    id               text        COLLATE "C" PRIMARY KEY CHECK (id ~ '^[0-9a-f]{24}$'),
    owner_id         text        NOT NULL,
    owner_email      text        NOT NULL,
    filename         text        NOT NULL,
    content_type     text        NOT NULL,
    size_bytes       bigint      NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    state            text        NOT NULL
        CHECK (state IN ('uploading', 'queued', 'converting', 'done', 'failed', 'deleted')),
    options          jsonb       NOT NULL,
    mp3_id           text,
    mp3_size_bytes   bigint,
    duration_seconds double precision,
    failure_reason   text,
    failure_kind     text,
    -- What the user should know about a done job (a second audio track left
    -- out, say).
    notes            text[]      NOT NULL DEFAULT '{}',
    progress         double precision,
    -- The converter converting it, until when (renewed while it works).
    lease_holder     text,
    lease_until      timestamptz,
    -- A converter converting the upload as it arrives, until when.
    live_holder      text,
    live_until       timestamptz,
    -- How often the janitor put the job's event out again.
    republished      integer     NOT NULL DEFAULT 0,
    -- notify-svc's receipt came back: the user was told of the outcome.
    notified         boolean     NOT NULL DEFAULT false,
    -- When the outcome was last put in the outbox, and how often again.
    announced_at     timestamptz,
    reannounced      integer     NOT NULL DEFAULT 0,
    source_deleted   boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- When the MP3 (and the job) go.
    expires_at       timestamptz,
    CHECK ((state = 'converting') = (lease_holder IS NOT NULL AND lease_until IS NOT NULL)),
    CHECK (state = 'uploading' OR live_holder IS NULL),
    CHECK (state <> 'done' OR mp3_id IS NOT NULL)
);

-- A user's jobs, newest first (ListJobs, WatchJobs) and their quotas.
CREATE INDEX jobs_owner ON jobs (owner_id, id DESC);
-- The janitor's rounds: by state, oldest change first.
CREATE INDEX jobs_state_updated ON jobs (state, updated_at);
CREATE INDEX jobs_expiring ON jobs (expires_at) WHERE state = 'done';
CREATE INDEX jobs_unnotified ON jobs (announced_at)
    WHERE state IN ('done', 'failed') AND NOT notified;

-- Events that follow a transition, written in the transition's transaction
-- and published (with confirms) by the relay, which marks them sent.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    queue      text        NOT NULL,
    kind       text        NOT NULL,
    event_id   text        NOT NULL,
    job_id     text,
    payload    bytea       NOT NULL,
    -- W3C trace context of the transition, so the consumer continues its trace.
    trace      jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text
);

CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_unsent_job ON outbox (job_id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Named leases: whoever holds one may act (one janitor at a time).
CREATE TABLE leases (
    name   text        PRIMARY KEY,
    holder text        NOT NULL,
    until  timestamptz NOT NULL
);

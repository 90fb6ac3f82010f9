-- Resumable uploads (tus, MediaService.CreateUpload/AppendUpload): the bytes
-- arrive over several requests, possibly on several gateway replicas, so what
-- a streaming upload keeps in its own memory is kept here.
ALTER TABLE jobs
    -- The size the client declared at creation; NULL for a streaming upload.
    ADD COLUMN upload_length     bigint CHECK (upload_length > 0),
    -- Bytes durably stored in GridFS (chunks beyond are scratch).
    ADD COLUMN received_bytes    bigint NOT NULL DEFAULT 0
        CHECK (received_bytes >= 0 AND received_bytes <= coalesce(upload_length, received_bytes)),
    -- A resumable upload not continued by then is removed with its chunks.
    ADD COLUMN upload_expires_at timestamptz,
    -- The request appending to it, until when (renewed while it works):
    -- one writer at a time, whichever replica it is on.
    ADD COLUMN writer            text,
    ADD COLUMN writer_until      timestamptz,
    ADD CHECK ((upload_length IS NULL) = (upload_expires_at IS NULL)),
    ADD CHECK (state = 'uploading' OR writer IS NULL);

-- The janitor's expiry round.
CREATE INDEX jobs_resumable_expiring ON jobs (upload_expires_at)
    WHERE state = 'uploading' AND upload_length IS NOT NULL;

-- A resumable upload's bytes past its last full GridFS chunk, recorded with
-- its offset: the chunks hold whole chunks only, so an append never has to
-- find a partial chunk again (a query by (files_id, n) that a server without
-- the compound index answers by reading the whole file).
ALTER TABLE jobs ADD COLUMN upload_tail bytea;

-- Tokens that can be taken back.
--
-- `disabled`: an admin locked the account; its tokens stop validating and
-- its logins are refused like a wrong password.
-- `token_version`: every token carries the version it was issued under (its
-- "ver" claim; 0 when absent). Bumping it (password change, disable, logout of
-- a token without an id) ends every earlier token of the user at once, with no
-- clock comparison to get wrong within a second.
ALTER TABLE users
    ADD COLUMN disabled      boolean NOT NULL DEFAULT false,
    ADD COLUMN token_version integer NOT NULL DEFAULT 0 CHECK (token_version >= 0);

-- Single tokens ended by Logout, by their "jti". A row is only needed until
-- the token would have expired anyway: `expires_at` is the token's expiry plus
-- the verifier's leeway, and a periodic cleanup deletes older rows (the index
-- keeps that a range scan).
CREATE TABLE revoked_tokens (
    jti        uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

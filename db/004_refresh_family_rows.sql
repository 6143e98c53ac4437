-- Issue 14: the refresh ledger keeps one row per family instead of one per refresh token.
--
-- Expand only: columns and indexes are added, nothing is dropped or rewritten, so gateways of
-- the previous version keep running against this schema during a rolling upgrade. Families
-- created before it keep generation NULL (the "old form": one row per token in
-- refresh_token_family) until their next rotation by a new gateway moves them to the new form.
-- refresh_token_family is dropped by a later, separate migration once no old gateway runs and
-- every old-format token has expired (docs/SECURITY.md, "Rolling upgrade of the ledger").
-- Idempotent: safe to apply again.

ALTER TABLE refresh_session
    -- rotations so far; every refresh token carries its own generation in `gen`
    ADD COLUMN IF NOT EXISTS generation integer,
    -- SHA-256 of the newest token's random secret part, and of the one it replaced; never the
    -- secret itself (a dump of this table does not let anyone refresh)
    ADD COLUMN IF NOT EXISTS current_digest bytea,
    ADD COLUMN IF NOT EXISTS previous_digest bytea,
    -- random bytes of the last rotation: the successor's secret part is
    -- HMAC(previous secret part, nonce), rebuilt for a retry by whoever presents that token
    ADD COLUMN IF NOT EXISTS rotation_nonce bytea,
    ADD COLUMN IF NOT EXISTS rotated_at timestamptz,
    -- the newest token's other claims, so a retry re-signs the identical token
    ADD COLUMN IF NOT EXISTS current_jti text,
    ADD COLUMN IF NOT EXISTS current_issued_at timestamptz,
    ADD COLUMN IF NOT EXISTS current_expires_at timestamptz;

-- A rotation updates only columns no index covers, so PostgreSQL can rewrite the row in place on
-- its own page (a HOT update) if the page has room: leave some.
ALTER TABLE refresh_session SET (fillfactor = 80);

-- families revoked recently (revocation-set rebuild at start-up) and revoked long ago (prune)
CREATE INDEX IF NOT EXISTS refresh_session_revoked_idx
    ON refresh_session (revoked_at) WHERE revoked_at IS NOT NULL;
-- families past their absolute lifetime (prune)
CREATE INDEX IF NOT EXISTS refresh_session_expiry_idx
    ON refresh_session (absolute_expires_at);

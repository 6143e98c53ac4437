-- The gateway's refresh-token ledger. One row per login in refresh_session (the "family", whose
-- id is the tokens' sid), one row per refresh token ever issued in refresh_token_family.
-- Tokens are never stored: only their jti and the claims needed to re-sign the identical
-- successor (HS256 is deterministic) when a rotation is retried within the grace window.
-- Idempotent: safe to apply again.

CREATE TABLE IF NOT EXISTS refresh_session (
    family_id           uuid PRIMARY KEY,
    user_id             uuid NOT NULL,
    roles               text[] NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz NOT NULL DEFAULT now(),
    absolute_expires_at timestamptz NOT NULL,
    user_agent          text,
    ip                  text,
    revoked_at          timestamptz,
    revoked_reason      text
);

CREATE TABLE IF NOT EXISTS refresh_token_family (
    jti            text PRIMARY KEY,
    family_id      uuid NOT NULL REFERENCES refresh_session (family_id) ON DELETE CASCADE,
    user_id        uuid NOT NULL,
    parent_jti     text,
    issued_at      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    -- the successor issued when this token was rotated; a retry within the grace window
    -- re-signs exactly that token from its row (jti, issued_at, expires_at)
    child_jti      text,
    revoked_at     timestamptz,
    revoked_reason text
);

-- family-wide revocation and "the live token of this family"
CREATE INDEX IF NOT EXISTS refresh_token_family_family_idx
    ON refresh_token_family (family_id);
-- per-user listing and logout-all over live sessions only
CREATE INDEX IF NOT EXISTS refresh_session_user_live_idx
    ON refresh_session (user_id, created_at DESC) WHERE revoked_at IS NULL;
-- one successor per token, enforced by the database as well as by the row lock
CREATE UNIQUE INDEX IF NOT EXISTS refresh_token_family_parent_idx
    ON refresh_token_family (parent_jti) WHERE parent_jti IS NOT NULL;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_gateway') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON refresh_session, refresh_token_family
            TO tokengate_gateway;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_backend') THEN
        REVOKE ALL ON refresh_session, refresh_token_family FROM tokengate_backend;
    END IF;
END
$$;

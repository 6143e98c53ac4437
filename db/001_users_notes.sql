-- The backend's data: users with their credentials, and notes owned by users.
-- Idempotent: safe to apply again.

CREATE TABLE IF NOT EXISTS users (
    id            uuid PRIMARY KEY,
    -- stored normalised (trimmed, case-folded) by backend.emails; the unique index on lower()
    -- also protects against rows written by other tools
    email         text NOT NULL,
    password_hash text NOT NULL,
    roles         text[] NOT NULL DEFAULT '{user}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254)
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_idx ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_created_idx ON users (created_at, id);

CREATE TABLE IF NOT EXISTS notes (
    id         uuid PRIMARY KEY,
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title      text NOT NULL,
    body       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notes_owner_created_idx ON notes (owner_id, created_at DESC, id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_backend') THEN
        GRANT USAGE ON SCHEMA public TO tokengate_backend;
        GRANT SELECT, INSERT, UPDATE, DELETE ON users, notes TO tokengate_backend;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokengate_gateway') THEN
        GRANT USAGE ON SCHEMA public TO tokengate_gateway;
        REVOKE ALL ON users, notes FROM tokengate_gateway;
    END IF;
END
$$;

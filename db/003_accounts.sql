-- Accounts and sessions move together (issue 9). Idempotent: safe to apply again.
--
-- email_normal: the address in the one normal form of servicekit.emails
-- (NFKC(casefold(NFKC(s))).strip()). PostgreSQL has no casefold, so the value is computed in
-- Python: `tokengate migrate` fills it right after this file, in the same transaction, stops
-- and lists the rows if two of them collide under the new form, and only then makes the column
-- NOT NULL and unique (tokengate/email_backfill.py). Until that step has run, no lookup finds
-- a row without it: the backend matches on email_normal alone, so it fails closed.
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_normal text;

-- The per-user epochs, in whole Unix seconds: a token or family is valid only if it was issued
-- at or after the epoch (iat >= epoch). A change at time T sets the epoch to ceil(T), so every
-- token minted before the change has iat <= floor(T) < epoch, and the gateway waits out the
-- rest of that second before minting for a user whose epoch is still ahead of its clock.
--   session_epoch: refresh families created before it never refresh again (disable, password
--                  change, operator revocation).
--   token_epoch:   access tokens issued before it are refused (everything above, and role
--                  changes, which leave the families alone so the next refresh reads the new
--                  roles). Always >= session_epoch.
ALTER TABLE users ADD COLUMN IF NOT EXISTS session_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN IF NOT EXISTS token_epoch bigint NOT NULL DEFAULT 0;
-- gateways reload "epochs moved within one access-token lifetime" at start-up and reconnect
CREATE INDEX IF NOT EXISTS users_token_epoch_idx ON users (token_epoch) WHERE token_epoch > 0;

-- Least privilege is unchanged: the backend role's table-level grants on users cover the new
-- columns; the gateway role still has nothing on users (db/001) and the backend nothing on the
-- ledger (db/002).

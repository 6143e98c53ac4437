-- DPoP key binding of a refresh family (RFC 9449): the RFC 7638 thumbprint of the client's public
-- key, set at login when the client sent a proof. NULL = an unbound (cookie-only) family.
-- Every rotation and logout of a bound family must come with a proof signed by this key.
-- Expand-only and idempotent: older gateways ignore the column; safe to apply again.

ALTER TABLE refresh_session ADD COLUMN IF NOT EXISTS dpop_jkt text;

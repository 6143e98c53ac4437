"""An example service behind the gateway, as a team would add one (issue 20, README "Adding a
service"): FastAPI, internal tokens verified with ``internal_auth`` only, the public key only."""

"""internal_auth: EdDSA internal tokens between a gateway and the services behind it."""

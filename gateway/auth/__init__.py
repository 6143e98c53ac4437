"""The gateway's own ``/api/v1/auth/*`` routes and what they stand on.

Access and refresh tokens (:mod:`.tokens`), the memo of verified access tokens
(:mod:`.verified_tokens`), the ``Authorization`` header (:mod:`.bearer`), the refresh cookie and
``Origin`` checks (:mod:`.cookies`), login rate limits (:mod:`.ratelimit`), the identity service's
internal calls (:mod:`.backend_client`) and the route handlers (:mod:`.routes`).
"""

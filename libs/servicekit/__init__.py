"""servicekit: the run-time helpers both services share, one implementation each.

Library layer: it imports nothing from ``gateway``, ``backend`` or ``tokengate`` (a test walks the
tree and fails when an import goes the wrong way). Modules:

- :mod:`servicekit.config`: settings from the environment, ``*_FILE`` forms, :class:`ConfigError`;
- :mod:`servicekit.logs`: structured JSON log lines and the request id context;
- :mod:`servicekit.http_errors`: the JSON error body ``{"error": {"code", "message"}}``;
- :mod:`servicekit.bodies`: request framing, the body-size limit, media type and strict JSON;
- :mod:`servicekit.db`: the bounded PostgreSQL pool and the one list of "database is down"
  exception classes, mapped to 503 in both apps.
- :mod:`servicekit.state`: the base of each service's typed ``app.state`` and its narrowing;
- :mod:`servicekit.redis_url`: ``REDIS_URL`` (plain or Sentinel) parsed once, and every Redis
  pool built from it (master only, ``READONLY`` drops the connection);
- :mod:`servicekit.pg_url`: the host list of a ``DATABASE_URL`` naming a primary and standbys.
"""

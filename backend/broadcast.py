"""Tell every gateway that a user's epochs moved (``tokengate users ...``).

The database change is the durable part and has already committed when this runs; the
broadcast only makes it take effect on live access tokens within a second instead of at the
gateways' next epoch reload (``EPOCH_RELOAD_INTERVAL``, 30 s by default). So a Redis that cannot
be reached is reported, not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.exceptions import RedisError
from servicekit import epochs, redis_url
from servicekit.config import ConfigError

from backend.users import User


async def publish(environ: Mapping[str, str], user: User) -> str | None:
    """Publish the user's epochs on ``REDIS_URL``; return why not, or ``None`` when sent."""
    if not environ.get("REDIS_URL"):
        return "REDIS_URL is not set"
    try:
        target = redis_url.from_env(environ)
    except ConfigError as exc:
        return str(exc)
    prefix = environ.get("REDIS_KEY_PREFIX") or "tokengate:"
    message = epochs.encode(epochs.EpochUpdate(str(user.id), user.session_epoch, user.token_epoch))
    client = redis_url.async_client(target, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        await client.publish(epochs.channel(prefix), message)
    except (RedisError, OSError) as exc:
        return f"Redis unreachable ({type(exc).__name__})"
    finally:
        await client.aclose()
    return None

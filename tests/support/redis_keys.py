"""Make Redis forget one stack's keys, as a restart without persistence would: only under the
given prefix, because the server is shared with every other test run on this machine."""

from __future__ import annotations

import redis.asyncio as aioredis


async def forget_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; return how many there were."""
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()

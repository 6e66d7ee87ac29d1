"""The worker's hot-path connection against the real embedded Redis."""

from __future__ import annotations

import pytest
import redis

from lab.infra.broker import Broker
from lab.runtime.wire import WireConnection


@pytest.mark.asyncio
async def test_calls_scripts_and_reloads_after_script_flush(broker: Broker) -> None:
    wire = WireConnection(broker.url)
    try:
        assert await wire.call("PING") == "PONG"
        sha = wire.script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}")
        assert await wire.evalsha(sha, ["k"], ["v", 21]) == ["k", "v", 42]
        await wire.call("SCRIPT", "FLUSH")  # as after a broker restart: NOSCRIPT, then reload
        assert await wire.evalsha(sha, ["k"], ["w", 1]) == ["k", "w", 2]
        with pytest.raises(redis.ResponseError, match="unknown command"):
            await wire.call("NO-SUCH-COMMAND")
        assert await wire.call("PING") == "PONG"  # still in step after an error reply
    finally:
        wire.close()


@pytest.mark.asyncio
async def test_unreachable_broker_is_a_connection_error() -> None:
    wire = WireConnection("redis://127.0.0.1:1/0")
    with pytest.raises(redis.ConnectionError, match="cannot connect to the broker"):
        await wire.call("PING")

"""The worker's hot-path connection against the real embedded Redis."""

from __future__ import annotations

import asyncio
import uuid

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


@pytest.mark.asyncio
async def test_pipelined_commands_get_their_replies_in_order(broker: Broker) -> None:
    wire = WireConnection(broker.url)
    key = f"wire-{uuid.uuid4().hex}"
    try:
        await wire.connect()
        replies: list[object] = []
        for _ in range(200):  # all written before the first reply is read
            wire.send(("INCR", key), replies.append)
        assert wire.in_flight == 200
        assert await wire.call("GET", key) == "200"  # the last reply comes after all the others
        assert replies == list(range(1, 201)) and wire.in_flight == 0
    finally:
        await wire.call("DEL", key)
        wire.close()


@pytest.mark.asyncio
async def test_a_lost_connection_fails_the_pending_replies_and_can_reopen(broker: Broker) -> None:
    wire = WireConnection(broker.url)
    key = f"wire-{uuid.uuid4().hex}"
    try:
        await wire.connect()
        my_id = await wire.call("CLIENT", "ID")
        replies: list[object] = []
        wire.send(("BLPOP", key, 5), replies.append)  # blocks on the server...
        wire.send(("PING",), replies.append)  # ...so this one waits behind it
        with broker.client() as other:
            other.client_kill_filter(_id=my_id)
        for _ in range(100):
            if len(replies) == 2:
                break
            await asyncio.sleep(0.01)
        assert [type(r) for r in replies] == [redis.ConnectionError, redis.ConnectionError]
        assert not wire.connected
        wire.send(("PING",), replies.append)  # while disconnected: an error reply, not a raise
        await asyncio.sleep(0)
        assert isinstance(replies[-1], redis.ConnectionError)
        await wire.connect()
        assert await wire.call("PING") == "PONG"
    finally:
        wire.close()

"""The queue protocol on Redis: enqueue, claim, ack, retry, dead letter, crash recovery.

Keys of queue `q` (all under `lab:{q}:`):

| key               | type | holds                                                          |
|-------------------|------|----------------------------------------------------------------|
| pending           | list | payloads waiting; LPUSH at the tail, RPOP at the head (FIFO)   |
| scheduled         | zset | retries waiting for their backoff, scored by due time (epoch s)|
| dead              | list | payloads that used up `max_attempts`, with their last error     |
| events            | list | one JSON record per finished attempt (see `JobEvent`)          |
| stats             | hash | counters: enqueued, done, retried, dead, recovered, released   |
| instances         | set  | worker instance ids that may hold jobs                         |
| hb:{instance}     | str  | heartbeat, expires after the instance's TTL                    |
| proc:{instance}   | hash | job id -> payload, claimed by the instance and not yet acked   |
| inbox:{instance}  | list | payloads a blocked BLMOVE handed to the instance, not yet seen |
| runtime           | list | one JSON record per stopped instance: its slot gaps and exchange round trips (`lab.runtime.telemetry`) |

At-least-once: a job moves atomically from `pending` into the claiming instance's `proc` hash and
leaves it only when its outcome is written (ack, retry or dead letter, in the same script). When
an instance's heartbeat expires, any worker's reaper moves its `proc` and `inbox` back to the
head of `pending`. A job can therefore run twice after a crash (never zero times); duplicates
show as two `ok` events with the same job id.

A payload is `"<job id> <json>"`: the id prefix lets the Lua scripts index a claimed job without
decoding JSON. The JSON holds `job` (handler name), `args`, `enq` (enqueue or scheduled arrival
time, epoch seconds) and `att` (the attempt this delivery is, from 1).
"""

from __future__ import annotations

import itertools
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

#: Format of the event records (JSON arrays, encoded with orjson: on the worker's hot path it is
#: ~20x cheaper than the json module). History: 1 = [id, job, instance, enq, start, end, attempt,
#: outcome, items, error, extra].
EVENT_FORMAT_VERSION = 1

#: Outcomes of one attempt.
OK, RETRY, DEAD = "ok", "retry", "dead"

_CHUNK = 1000  # values per Redis command when moving many; well under Lua's unpack limit

# Shared Lua helper: call `cmd key v[from..to]` in chunks, since unpack() has a small limit.
_LUA_BULK = """
local function bulk(cmd, key, list, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    redis.call(cmd, key, unpack(list, i, j))
    i = j + 1
  end
end
"""

# KEYS: pending, proc, inbox, scheduled, dead, events, stats
# ARGV: now, want, n_ack, n_event, n_retry, n_dead, then ack ids, events, (id, due, payload)
#       triples, (id, payload) pairs.
# Returns {claimed payloads, score of the next scheduled retry or false}.
EXCHANGE_LUA = (
    _LUA_BULK
    + """
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local n_ack, n_ev = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_retry, n_dead = tonumber(ARGV[5]), tonumber(ARGV[6])
local i = 7
if n_ack > 0 then
  bulk('HDEL', KEYS[2], ARGV, i, i + n_ack - 1)
  redis.call('HINCRBY', KEYS[7], 'done', n_ack)
  i = i + n_ack
end
if n_ev > 0 then
  bulk('RPUSH', KEYS[6], ARGV, i, i + n_ev - 1)
  i = i + n_ev
end
for _ = 1, n_retry do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('ZADD', KEYS[4], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
if n_retry > 0 then redis.call('HINCRBY', KEYS[7], 'retried', n_retry) end
for _ = 1, n_dead do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('RPUSH', KEYS[5], ARGV[i + 1])
  i = i + 2
end
if n_dead > 0 then redis.call('HINCRBY', KEYS[7], 'dead', n_dead) end
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  bulk('ZREM', KEYS[4], due, 1, #due)
  bulk('LPUSH', KEYS[1], due, 1, #due)
end
local claimed = {}
if want > 0 then
  local got = redis.call('LPOP', KEYS[3], want)
  if got then for _, p in ipairs(got) do claimed[#claimed + 1] = p end end
  if #claimed < want then
    got = redis.call('RPOP', KEYS[1], want - #claimed)
    if got then for _, p in ipairs(got) do claimed[#claimed + 1] = p end end
  end
  for _, p in ipairs(claimed) do
    redis.call('HSET', KEYS[2], string.match(p, '^(%S+)'), p)
  end
end
local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
return {claimed, nxt[2] or false}
"""
)

# KEYS: instances, pending, stats. ARGV: key prefix, instance id or '' for "every dead one",
# counter name. Moves the jobs of instances whose heartbeat is gone (or of the named instance,
# on a graceful stop) back to the head of `pending`. Returns how many jobs moved.
RELEASE_LUA = (
    _LUA_BULK
    + """
local prefix, only, counter = ARGV[1], ARGV[2], ARGV[3]
local members = {only}
if only == '' then members = redis.call('SMEMBERS', KEYS[1]) end
local moved = 0
for _, inst in ipairs(members) do
  if only ~= '' or redis.call('EXISTS', prefix .. 'hb:' .. inst) == 0 then
    local proc, inbox = prefix .. 'proc:' .. inst, prefix .. 'inbox:' .. inst
    local jobs = redis.call('HVALS', proc)
    local waiting = redis.call('LRANGE', inbox, 0, -1)
    for _, p in ipairs(waiting) do jobs[#jobs + 1] = p end
    if #jobs > 0 then bulk('RPUSH', KEYS[2], jobs, 1, #jobs) end
    redis.call('DEL', proc, inbox)
    redis.call('SREM', KEYS[1], inst)
    if only ~= '' then redis.call('DEL', prefix .. 'hb:' .. inst) end
    moved = moved + #jobs
  end
end
if moved > 0 then redis.call('HINCRBY', KEYS[3], counter, moved) end
return moved
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def key_prefix(queue: str) -> str:
    return f"lab:{{{queue}}}:"


class QueueKeys:
    """The Redis key names of one queue, for the harness and for one worker instance."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.prefix = key_prefix(queue)
        self.pending = self.prefix + "pending"
        self.scheduled = self.prefix + "scheduled"
        self.dead = self.prefix + "dead"
        self.events = self.prefix + "events"
        self.stats = self.prefix + "stats"
        self.instances = self.prefix + "instances"
        self.runtime = self.prefix + "runtime"

    def heartbeat(self, instance: str) -> str:
        return f"{self.prefix}hb:{instance}"

    def processing(self, instance: str) -> str:
        return f"{self.prefix}proc:{instance}"

    def inbox(self, instance: str) -> str:
        return f"{self.prefix}inbox:{instance}"


def encode_job(
    job_id: str, job: str, args: Mapping[str, Any], enqueued_at: float, attempt: int = 1
) -> str:
    """The payload string stored in Redis (see the module docstring)."""
    body = orjson.dumps({"job": job, "args": args, "enq": enqueued_at, "att": attempt})
    return f"{job_id} {body.decode()}"


def decode_job(payload: str) -> tuple[str, dict[str, Any]]:
    """(job id, message) from a payload."""
    job_id, _, body = payload.partition(" ")
    return job_id, orjson.loads(body)


@dataclass(frozen=True)
class JobEvent:
    """One finished attempt of one job. Times are epoch seconds (comparable across processes)."""

    job_id: str
    job: str
    instance: str
    enqueued_at: float
    started_at: float
    finished_at: float
    attempt: int
    outcome: str  # OK, RETRY or DEAD
    items: int
    error: str | None
    extra: dict[str, Any] | None

    @property
    def queue_wait_s(self) -> float:
        """From enqueue (or the scheduled arrival) to this attempt's start, retries included."""
        return self.started_at - self.enqueued_at

    @property
    def service_s(self) -> float:
        return self.finished_at - self.started_at

    @property
    def latency_s(self) -> float:
        """End to end: from enqueue (or scheduled arrival) to the end of this attempt."""
        return self.finished_at - self.enqueued_at

    @classmethod
    def decode(cls, record: bytes | str) -> JobEvent:
        fields = orjson.loads(record)
        return cls(*fields)

    def encode(self) -> bytes:
        return encode_event(
            self.job_id, self.job, self.instance, self.enqueued_at, self.started_at,
            self.finished_at, self.attempt, self.outcome, self.items, self.error, self.extra,
        )  # fmt: skip


def encode_event(
    job_id: str, job: str, instance: str, enqueued_at: float, started_at: float,
    finished_at: float, attempt: int, outcome: str, items: int, error: str | None,
    extra: Mapping[str, Any] | None,
) -> bytes:  # fmt: skip
    """An event record (JobEvent's fields, in order), without building a JobEvent: the worker
    writes one per attempt."""
    return orjson.dumps(
        [job_id, job, instance, enqueued_at, started_at, finished_at, attempt, outcome, items,
         error, extra]
    )  # fmt: skip


class Queue:
    """The harness's side of a queue: enqueue, observe, clean up. Synchronous, for CLIs and tests.

    Worker instances use the same keys and scripts through `lab.runtime.worker`.
    """

    def __init__(self, client: redis.Redis, name: str = "default") -> None:
        self.client = client
        self.name = name
        self.keys = QueueKeys(name)
        self._release = client.register_script(RELEASE_LUA)

    # -- producing ------------------------------------------------------------------------------

    def enqueue(
        self, job: str, args: Mapping[str, Any] | None = None, *, enqueued_at: float | None = None
    ) -> str:
        """Put one job at the tail of the queue; returns its id."""
        job_id = uuid.uuid4().hex
        payload = encode_job(
            job_id, job, args or {}, time.time() if enqueued_at is None else enqueued_at
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.keys.pending, payload)
        pipe.hincrby(self.keys.stats, "enqueued", 1)
        pipe.execute()
        return job_id

    def enqueue_many(
        self,
        job: str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        enqueued_at: Iterable[float] | None = None,
    ) -> list[str]:
        """Enqueue one job per args mapping, pipelined in chunks; returns the ids in order.

        Without `enqueued_at`, each chunk is stamped when it is sent, so a large backlog's queue
        wait starts when it really entered the queue. An open-loop producer passes each job's
        scheduled arrival instead, so that lateness of its own counts as latency too.
        """
        prefix = secrets.token_hex(5)
        ids: list[str] = []
        counter = itertools.count()
        args_iter = iter(args_list)
        stamps = iter(enqueued_at) if enqueued_at is not None else None
        while chunk := list(itertools.islice(args_iter, _CHUNK)):
            now = time.time()
            payloads = []
            for args in chunk:
                job_id = f"{prefix}-{next(counter)}"
                ids.append(job_id)
                payloads.append(encode_job(job_id, job, args, next(stamps) if stamps else now))
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(self.keys.pending, *payloads)
            pipe.hincrby(self.keys.stats, "enqueued", len(payloads))
            pipe.execute()
        return ids

    # -- observing ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """The queue's counters (enqueued, done, retried, dead, recovered, released)."""
        raw = self.client.hgetall(self.keys.stats)
        return {_text(k): int(v) for k, v in raw.items()}

    def outstanding(self) -> int:
        """Jobs not finished: pending, scheduled for retry, or held by an instance."""
        instances = list(self.registered_instances())
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.keys.pending)
        pipe.zcard(self.keys.scheduled)
        for inst in instances:
            pipe.hlen(self.keys.processing(inst))
            pipe.llen(self.keys.inbox(inst))
        return sum(int(n) for n in pipe.execute())

    def live_instances(self) -> set[str]:
        """Registered instances whose heartbeat is current (a worker is ready once it is here)."""
        instances = list(self.registered_instances())
        pipe = self.client.pipeline(transaction=False)
        for inst in instances:
            pipe.exists(self.keys.heartbeat(inst))
        return {inst for inst, alive in zip(instances, pipe.execute(), strict=True) if alive}

    def registered_instances(self) -> set[str]:
        """Instances that may hold jobs: alive, or dead and not yet recovered (jobs not put back)."""
        return {_text(m) for m in self.client.smembers(self.keys.instances)}

    def events(self, start: int = 0) -> list[JobEvent]:
        """Finished attempts recorded so far, from index `start` on."""
        out: list[JobEvent] = []
        while batch := self.client.lrange(self.keys.events, start, start + 10 * _CHUNK - 1):
            out += [JobEvent.decode(r) for r in batch]
            start += len(batch)
        return out

    def runtime_stats(self) -> list[dict[str, Any]]:
        """The records stopped instances wrote about their own cost (`lab.runtime.telemetry`)."""
        return [orjson.loads(r) for r in self.client.lrange(self.keys.runtime, 0, -1)]

    def dead_letters(self) -> list[tuple[str, dict[str, Any]]]:
        return [decode_job(_text(p)) for p in self.client.lrange(self.keys.dead, 0, -1)]

    # -- maintenance ----------------------------------------------------------------------------

    def recover(self) -> int:
        """Put back the jobs of every instance whose heartbeat expired; returns how many."""
        keys = [self.keys.instances, self.keys.pending, self.keys.stats]
        return int(self._release(keys=keys, args=[self.keys.prefix, "", "recovered"]))

    def purge(self) -> None:
        """Delete every key of this queue: a fresh queue state, for a new trial."""
        keys = list(self.client.scan_iter(match=self.keys.prefix + "*", count=1000))
        for i in range(0, len(keys), _CHUNK):
            self.client.delete(*keys[i : i + _CHUNK])

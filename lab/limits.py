"""Every upper bound on what the lab accepts, with the reason a user reads when one is hit.

A scenario, a mock's spec or a run folder is input: without bounds, a typo (`items: 10000000000`)
or a hostile file runs out of memory, overflows a float or loops for ever before anything says
what is wrong. Each bound below fits what ONE machine can run, and is named in the error message
with its reason. Raise one only with a reason as concrete as the one it replaces.
"""

from __future__ import annotations

# -- files the lab reads --------------------------------------------------------------------------

SCENARIO_BYTES_MAX = 256 * 1024
"""Largest scenario file: the shipped ones are under 3 KiB; parsing more would take seconds."""

YAML_NODES_MAX = 20_000
"""YAML nodes after alias expansion: a large scenario has a few thousand; aliases nested on
aliases (a "billion laughs" file) would otherwise expand without end."""

YAML_DEPTH_MAX = 32
"""Nesting depth of a YAML document: a scenario nests 6 deep; the YAML composer recurses."""

JSON_BYTES_MAX = 16 * 1024 * 1024
"""Largest JSON file read back from a run folder (manifest.json holds the planned trial ids)."""

SERVICES_JSON_BYTES_MAX = 64 * 1024 * 1024
"""One trial's services/<trial>.json (SAMPLES_CAP_MAX samples and an hour of series, pretty)."""

CSV_BYTES_MAX = 64 * 1024 * 1024
"""Largest trials.csv read back: TRIALS_MAX rows of ~2 KiB, with room to spare."""

PARQUET_BYTES_MAX = 256 * 1024 * 1024
"""One trial's job events read back (ITEMS_MAX events are ~60 MB compressed)."""

SPEC_BYTES_MAX = 1024 * 1024
"""Largest mock spec (`--spec-file`, `--spec-json`): a spec with every list full is ~20 KiB."""

# -- names ------------------------------------------------------------------------------------------

NAME_CHARS_MAX = 64
NAME_WHY = "it names a folder, a log file and a process argument"
TEXT_CHARS_MAX = 4_000
"""A scenario's free text (description)."""
URL_CHARS_MAX = 2_048
JOB_NAME_CHARS_MAX = 200
INDEX_BYTES_MAX = 255
"""OpenSearch's own limit on an index name, in UTF-8 bytes."""

# -- the grid ---------------------------------------------------------------------------------------

SERVICES_MAX = 16
SERVICES_WHY = "each service is a mock process on this host"
INSTANCES_MAX = 256
INSTANCES_WHY = "worker processes on one host"
NUM_WORKERS_MAX = 4_096
NUM_WORKERS_WHY = "slots of one process; each may hold an HTTP connection, a file descriptor"
CONCURRENCY_MAX = 65_536
CONCURRENCY_WHY = (
    "every slot may hold a connection to the service: one file descriptor each in one mock"
)
BATCH_SIZE_MAX = 100_000
BATCH_SIZE_WHY = (
    "a bulk of 100,000 documents is ~10 MB, well within a mock's 100 MiB bulk body limit"
)
AXIS_VALUES_MAX = 64
REPEATS_MAX = 100
TRIALS_MAX = 10_000
TRIALS_WHY = "each trial costs seconds of start-up alone, and the run's manifest lists every one"

# -- work -------------------------------------------------------------------------------------------

ITEMS_MAX = 1_000_000
ITEMS_WHY = "per trial; the producer, Redis and the mock hold every item in memory"
RATE_PER_S_MAX = 100_000.0
RATE_WHY = "items per second one producer thread can enqueue"
DURATION_S_MAX = 3_600.0
DURATION_WHY = "one trial's arrivals; the mocks keep one hour of time series"
TIMEOUT_S_MAX = 86_400.0
TIMEOUT_WHY = "a day"
CPU_MS_PER_ITEM_MAX = 10_000.0
USERS_MAX = 10_000
USERS_WHY = "Locust users in one process"
JOBS_PER_REQUEST_MAX = 1_000
MAX_ATTEMPTS_MAX = 100
BACKOFF_MS_MAX = 3_600_000.0
BACKOFF_WHY = "an hour"
SEED_MAX = 2**32 - 1
SLO_MS_MAX = 86_400_000.0

# -- mock services ----------------------------------------------------------------------------------

CAPACITY_MAX = 1_000_000
CAPACITY_WHY = "requests one mock process serves at once"
QUEUE_MAX = 1_000_000
LATENCY_MS_MAX = 3_600_000.0
LATENCY_WHY = "an hour for one request"
PER_ITEM_MS_MAX = 60_000.0
PARETO_ALPHA_MIN = 0.1
PARETO_ALPHA_WHY = "below it one draw overflows a float"
SHARDS_MAX = 1_024
RATE_LIMIT_MAX = 1_000_000.0
BROWNOUTS_MAX = 32
BROWNOUTS_WHY = "windows per service; use every_s to repeat one"
WINDOW_S_MAX = 86_400.0
LATENCY_X_MAX = 1_000.0
CONNECTIONS_MAX = 100_000
SPEC_SEED_MAX = 2**63 - 1
STATS_INTERVAL_MS_MIN = 1.0
STATS_INTERVAL_WHY = "a shorter period would keep the mock's event loop busy sampling"
STATS_INTERVAL_MS_MAX = 60_000.0
SAMPLES_CAP_MAX = 1_000_000

# -- request bodies a mock accepts ------------------------------------------------------------------

BODY_BYTES_MAX = 1024 * 1024
"""A mock's request body limit (aiohttp's default), except on bulk-shaped routes."""

BULK_BODY_BYTES_MAX = 100 * 1024 * 1024
"""`_bulk` and `/_lab/seed`: OpenSearch's own default `http.max_content_length` (100mb)."""

SEED_IDS_PER_REQUEST = 10_000
"""Ids per `/_lab/seed` request when a trial puts a delete workload's documents in place."""

# -- faults -----------------------------------------------------------------------------------------

FAULTS_MAX = 100
"""Faults injected into one trial: each is a signal, a restart or a pause the drain loop applies."""
HEARTBEAT_TTL_S_MIN = 0.1
HEARTBEAT_TTL_WHY = "a worker beats every TTL/3 and each beat is a Redis round trip"
STATE_BYTES_MAX = 256 * 1024 * 1024
"""A restarted mock's state: ITEMS_MAX ids with versions and write counts (~60 MB of JSON),
its samples and its time series."""

"""A queueing model of a run, fitted from its own trials: what ANY configuration would do.

A backlog is a closed network: `num_workers x instances` jobs in flight (or as many as there
are jobs), each visiting, per job:

    service     the target: `capacity` servers (fewer under a connection limit), demand
                requests_per_job x S(k), S(k) = fixed_ms + per_item_ms x k for k items a request
    worker_cpu  one core per instance: demand cpu_ms_per_job + cpu_ms_per_item x batch_size
    broker      Redis, one core: its CPU per job (the claim/ack round trips)
    harness     this machine's cores, shared by all of the above plus the mock and the producer
                (only when predicting for this machine: `cores=None` lifts it)
    delay       the client's own time per request (loopback, HTTP client) that holds no server

solved by exact Mean Value Analysis (multi-server stations by Seidmann's approximation: a
queue of D/m plus a delay of D(m-1)/m). A rate limit caps requests per second (after its burst).
Open-loop arrivals: the arrival rate, where the network keeps up. Which bound binds is the
tightest of the stations' ceilings (capacity/demand) and the concurrency ceiling
(jobs in flight / time per job alone).

Parameters come from the run's trials (the mocks' own service-time samples, the sampled CPU of
workers, Redis, mocks and producer), except what the scenario states exactly: the service's
capacity, rate limit and connection limit, and the per-item cost when only one batch size was
measured (one point cannot split fixed from per-item cost). `Fit.sources` says which is which.
Not modelled: retries and Retry-After waits (a rate-limited trial past its limit loses more
than the model says), brown-outs, injected errors.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from lab.analysis.configs import NOISE_MARGIN, preference_key
from lab.configuration import Configuration, label
from lab.mocks.spec import ServiceSpec
from lab.results import RunFolder
from lab.runtime.jobs import job_type
from lab.scenario.spec import Backlog, LocustArrival, Scenario, fixed_values

if TYPE_CHECKING:
    from lab.analysis.configs import Run

#: The bound words (lab.analysis.attribution's vocabulary, the ones a model can predict).
BOUNDS = (
    "concurrency", "service_capacity", "rate_limit", "connection_limit", "worker_cpu", "broker",
    "harness", "arrivals",
)  # fmt: skip


@dataclass(frozen=True)
class Fit:
    """The model's parameters, in ms (per request, per job or per item) unless named otherwise."""

    fixed_ms: float  # service time of one request, fixed part
    per_item_ms: float  # ... and per item it carries
    client_ms: float  # per request, spent outside the service without holding a server
    client_per_item_ms: float  # ... and per item it carries (the body sent, parsed)
    service_sd_ms: float  # the spread of one request's service time (its standard deviation)
    capacity: int
    rate_limit_per_s: float | None
    burst: int
    connection_limit: int | None
    worker_cpu_ms_per_job: float
    worker_cpu_ms_per_item: float
    broker_cpu_ms_per_job: float
    harness_cpu_ms_per_job: float  # mock + producer CPU per job (this machine's share)
    requests_per_item: float | None  # a user handler's requests (None: the job type knows)
    sources: Mapping[str, str] = field(default_factory=dict)  # parameter -> scenario | trials

    def describe(self) -> list[tuple[str, str, str]]:
        """(parameter, value, where it came from), for the report."""
        rate = "none" if self.rate_limit_per_s is None else f"{self.rate_limit_per_s:,.0f}/s"
        rows = [
            ("service time per request", f"{self.fixed_ms:.2f} ms + {self.per_item_ms:.3f} ms/item", "service_time"),
            ("client time per request", f"{self.client_ms:.2f} ms + {self.client_per_item_ms:.3f} ms/item", "client_ms"),
            ("service capacity", f"{self.capacity} at once", "capacity"),
            ("rate limit", rate, "rate_limit"),
            ("worker CPU", f"{self.worker_cpu_ms_per_job:.3f} ms/job + {self.worker_cpu_ms_per_item:.4f} ms/item", "worker_cpu"),
            ("broker CPU", f"{self.broker_cpu_ms_per_job:.3f} ms/job", "broker"),
            ("mock + producer CPU", f"{self.harness_cpu_ms_per_job:.3f} ms/job", "harness"),
        ]  # fmt: skip
        return [(name, value, self.sources.get(key, "trials")) for name, value, key in rows]


@dataclass(frozen=True)
class Prediction:
    """What the model expects of one configuration."""

    config: Configuration
    items_per_s: float  # sustained (steady-window) throughput, with work for every slot
    makespan_s: float  # a backlog: clock start to the last job's end; NaN for arrivals
    bound: str  # the tightest ceiling (BOUNDS)
    bounds: Mapping[str, float]  # every ceiling, items/s
    items: int = 0  # a backlog's items (0: arrivals)

    @property
    def whole_items_per_s(self) -> float:
        """items / makespan for a backlog (what a trial too short for a steady window shows)."""
        return (
            self.items / self.makespan_s if self.items and self.makespan_s > 0 else self.items_per_s
        )


@dataclass(frozen=True)
class _Station:
    demand_s: float  # per job
    servers: float


def _mva(stations: Sequence[_Station], delay_s: float, customers: int) -> np.ndarray:
    """Throughput (jobs/s) with 1..customers jobs in flight: exact MVA, Seidmann for m > 1."""
    queues = [(s.demand_s / max(s.servers, 1.0)) for s in stations if s.demand_s > 0]
    delay = delay_s + sum(
        s.demand_s * (max(s.servers, 1.0) - 1) / max(s.servers, 1.0)
        for s in stations
        if s.demand_s > 0
    )
    q = np.zeros(len(queues))
    d = np.array(queues)
    out = np.empty(customers)
    for n in range(1, customers + 1):
        residence = d * (1 + q)
        x = n / (delay + residence.sum()) if delay + residence.sum() > 0 else math.inf
        q = x * residence
        out[n - 1] = x
    return out


class QueueingModel:
    """Predicts items/s (and a backlog's makespan) for any configuration, and its bound."""

    def __init__(
        self, fit: Fit, scenario: Scenario, *, cores: int | None, arrival_items_per_s: float | None,
        offered: Mapping[str, float] | None = None,
    ) -> None:  # fmt: skip
        self.fit, self.scenario, self.cores = fit, scenario, cores
        self.arrival_items_per_s = arrival_items_per_s
        # Locust's users wait for the web app, so what they offer differs by configuration: the
        # measured offer of each measured one (an input to the workers, not their output)
        self.offered = dict(offered or {})
        w = scenario.workload
        self.items = w.items if isinstance(w.arrival, Backlog) else None
        self._kind = job_type(w.job)

    def requests_per_job(self, batch_size: int) -> float:
        if self.fit.requests_per_item is not None:
            return self.fit.requests_per_item * batch_size
        return float(self._kind.requests_per_job(batch_size))

    def _items_per_request(self, batch_size: int) -> float:
        requests = self.requests_per_job(batch_size)
        return batch_size / requests if requests else 0.0

    def client_ms(self, batch_size: int) -> float:
        """One request's time outside the service, for jobs of `batch_size` items."""
        return self.fit.client_ms + self.fit.client_per_item_ms * self._items_per_request(
            batch_size
        )

    def service_ms(self, batch_size: int) -> float:
        """One request's service time at the service, for jobs of `batch_size` items."""
        return self.fit.fixed_ms + self.fit.per_item_ms * self._items_per_request(batch_size)

    def _stations(self, batch_size: int, instances: int, cores: int | None) -> dict[str, _Station]:
        f, requests = self.fit, self.requests_per_job(batch_size)
        servers = min(f.capacity, f.connection_limit or f.capacity)
        worker_ms = f.worker_cpu_ms_per_job + f.worker_cpu_ms_per_item * batch_size
        out = {
            "service": _Station(requests * self.service_ms(batch_size) / 1000, servers),
            "worker_cpu": _Station(worker_ms / 1000, instances),
            "broker": _Station(f.broker_cpu_ms_per_job / 1000, 1),
        }
        if cores is not None:  # a ceiling, not a queue: its work is in the stations above
            total_ms = worker_ms + f.broker_cpu_ms_per_job + f.harness_cpu_ms_per_job
            out["harness"] = _Station(total_ms / 1000, cores)
        return out

    def predict(self, config: Configuration, *, this_machine: bool = True) -> Prediction:
        """The prediction for one configuration; `this_machine=False` lifts the core count."""
        [p] = self.predict_line(
            int(config.batch_size), int(config.instances), [int(config.num_workers)],
            placement=config.placement, this_machine=this_machine,
        )  # fmt: skip
        return p

    def predict_line(
        self, batch_size: int, instances: int, num_workers: Iterable[int], *,
        placement: str = "separate", this_machine: bool = True,
    ) -> list[Prediction]:  # fmt: skip
        """Predictions along num_workers at one batch size and instance count (one MVA pass)."""
        nws = [int(n) for n in num_workers]
        cores = self.cores if this_machine else None
        stations = self._stations(batch_size, instances, cores)
        requests = self.requests_per_job(batch_size)
        delay_s = requests * self.client_ms(batch_size) / 1000
        jobs = math.ceil(self.items / batch_size) if self.items else None
        most = max(n * instances for n in nws)
        queues = [s for name, s in stations.items() if name != "harness"]
        curve = _mva(queues, delay_s, max(most, 1))
        alone_s = delay_s + sum(s.demand_s for s in queues)
        out = []
        for nw in nws:
            slots = nw * instances
            config = Configuration(nw, instances, batch_size, placement)
            arrivals = self.offered.get(config.label, self.arrival_items_per_s)
            ceilings = self._ceilings(stations, requests, batch_size, slots, alone_s, arrivals)
            caps = min(ceilings.get(k, math.inf) / batch_size for k in ("arrivals", "harness"))
            network = np.minimum(curve[:slots], caps)
            jobs_per_s = min(network[-1], ceilings.get("rate_limit", math.inf) / batch_size)
            makespan = math.nan
            if jobs is not None:  # the drain: in flight = min(slots, jobs left) as the tail empties
                makespan = self._drain_s(network[: min(slots, jobs)], jobs, batch_size)
                if self.fit.rate_limit_per_s is not None and requests > 0:
                    after_burst = max(0.0, jobs * requests - self.fit.burst)
                    makespan = max(makespan, after_burst / self.fit.rate_limit_per_s)
            bound = min(ceilings, key=lambda k: ceilings[k])
            out.append(
                Prediction(
                    config, jobs_per_s * batch_size, makespan, bound, ceilings, self.items or 0
                )
            )
        return out

    def _drain_s(self, network: np.ndarray, jobs: int, batch_size: int) -> float:
        """A backlog's makespan, `network[n - 1]` jobs/s with n in flight. With equal service
        times the jobs go in waves of n (the last one partial), each lasting a response time
        n / X(n); with exponential ones, at X(n) until fewer than n are left, then one after
        another (1 / X(r), r = n-1..1). In between by the service time's coefficient of
        variation (the mock's own samples)."""
        n = len(network)
        waves, rest = divmod(jobs, n)
        equal = waves * n / network[-1] + (rest / network[rest - 1] if rest else 0.0)
        spread = (jobs - n) / network[-1] + float(np.sum(1 / network))
        service_ms = self.service_ms(batch_size)
        cv = min(1.0, self.fit.service_sd_ms / service_ms) if service_ms > 0 else 1.0
        return equal + cv * (spread - equal)

    def _ceilings(
        self, stations: Mapping[str, _Station], requests: float, batch_size: int,
        in_flight: int, alone_s: float, arrivals: float | None,
    ) -> dict[str, float]:  # fmt: skip
        f = self.fit
        out = {"concurrency": in_flight * batch_size / alone_s if alone_s > 0 else math.inf}
        for name, station in stations.items():
            if station.demand_s > 0:
                word = name
                if name == "service":
                    limited = f.connection_limit is not None and f.connection_limit < f.capacity
                    word = "connection_limit" if limited else "service_capacity"
                out[word] = station.servers * batch_size / station.demand_s
        if f.rate_limit_per_s is not None and requests > 0:
            out["rate_limit"] = f.rate_limit_per_s / requests * batch_size
        if arrivals is not None:
            out["arrivals"] = arrivals
        return out


# -- fitting -----------------------------------------------------------------------------------


def _per_trial(
    trials: pd.DataFrame, services: Mapping[str, Mapping[str, Any]], target: str
) -> pd.DataFrame:
    """One row per usable trial: what the fit needs, from trials.csv and the target's stats."""
    rows = []
    for _, t in trials.iterrows():
        stats = (services.get(str(t["trial_id"])) or {}).get(target)
        stopped = t.get("stopped_early")
        if not stats or (pd.notna(stopped) and bool(stopped)) or not t["attempts"] > 0:
            continue
        samples = stats.get("samples", {})
        served = stats.get("served", 0)
        wall = float(t["wall_s"])
        rows.append(
            {
                "trial_id": t["trial_id"], "batch_size": int(t["batch_size"]),
                "attempts": float(t["attempts"]), "jobs_done": float(t["jobs_done"]),
                "requests": float(stats.get("requests", 0)),
                "k": stats.get("served_items", served) / served if served else math.nan,
                "service_ms": float(np.mean(samples["service_ms"])) if samples.get("service_ms") else math.nan,
                "service_sd_ms": float(np.std(samples["service_ms"])) if samples.get("service_ms") else math.nan,
                "wait_ms": float(np.mean(samples["wait_ms"])) if samples.get("wait_ms") else 0.0,
                "job_ms": float(t["service_mean_ms"]),
                "worker_cpu_ms": 1000 * float(t["workers_cores"]) * wall / float(t["attempts"]),
                "broker_cpu_ms": 1000 * float(t["redis_cores"]) * wall / float(t["attempts"]),
                "harness_cpu_ms": 1000 * (float(t["mock_cores"]) + float(t["producer_cores"])) * wall / float(t["attempts"]),
                "queued": float(t["service_max_queue_depth"]) > 0,
                "weight": wall,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def _linear(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Non-negative weighted least squares y = a + b x; (a, b)."""
    sw = np.sqrt(w)
    a, _ = nnls(np.column_stack([np.ones_like(x), x]) * sw[:, None], y * sw)
    return float(a[0]), float(a[1])


def fit_model(
    trials: pd.DataFrame,
    services: Mapping[str, Mapping[str, Any]],
    scenario: Scenario,
    *,
    cores: int | None = None,
) -> QueueingModel:
    """The model of a run from its trials (trials.csv rows) and the services' statistics by
    trial id (services/<trial>.json). Raises ValueError when no trial can be used."""
    w = scenario.workload
    spec = scenario.services[w.service]
    if not isinstance(spec, ServiceSpec):  # a real service: its capacity is unknown here
        raise ValueError(f"{w.service} is a real service: the model needs a mock's settings")
    data = _per_trial(trials, services, w.service)
    if data.empty:
        raise ValueError("no finished trial with service statistics to fit the model to")
    kind = job_type(w.job)
    sources: dict[str, str] = {"capacity": "scenario", "rate_limit": "scenario"}
    served = data.dropna(subset=["k", "service_ms"])
    if served["k"].nunique() >= 2:
        fixed, per_item = _linear(
            served["k"].to_numpy(), served["service_ms"].to_numpy(), served["weight"].to_numpy()
        )
    elif not served.empty:
        per_item = spec.per_item_ms
        sources["service_time"] = "trials (per item: scenario)"
        fixed = max(
            0.0,
            float(
                np.average(served["service_ms"] - per_item * served["k"], weights=served["weight"])
            ),
        )
    else:
        fixed, per_item = 0.0, 0.0
    batches = data["batch_size"].to_numpy(dtype=float)
    cpu_job, cpu_item = (
        _linear(batches, data["worker_cpu_ms"].to_numpy(), data["weight"].to_numpy())
        if data["batch_size"].nunique() >= 2
        else (float(np.average(data["worker_cpu_ms"], weights=data["weight"])), 0.0)
    )
    requests_per_item = None
    if not kind.known:
        requests_per_item = float(
            (data["requests"] / data["attempts"] / data["batch_size"]).median()
        )
    fit = Fit(
        fixed_ms=fixed, per_item_ms=per_item, client_ms=0.0, client_per_item_ms=0.0,
        service_sd_ms=float(np.nanmedian(data["service_sd_ms"])) if data["service_sd_ms"].notna().any() else 0.0,
        capacity=spec.capacity,
        rate_limit_per_s=spec.rate_limit.per_s if spec.rate_limit else None,
        burst=spec.rate_limit.burst_requests if spec.rate_limit else 0,
        connection_limit=spec.connection_limit,
        worker_cpu_ms_per_job=cpu_job, worker_cpu_ms_per_item=cpu_item,
        broker_cpu_ms_per_job=float(np.average(data["broker_cpu_ms"], weights=data["weight"])),
        harness_cpu_ms_per_job=float(np.average(data["harness_cpu_ms"], weights=data["weight"])),
        requests_per_item=requests_per_item, sources=sources,
    )  # fmt: skip
    arrivals = _arrival_rate(trials, scenario)
    offered = _offered(trials, scenario)
    model = QueueingModel(fit, scenario, cores=cores, arrival_items_per_s=arrivals, offered=offered)
    client, client_per_item = _client_ms(model, data)
    fit = dataclasses.replace(fit, client_ms=client, client_per_item_ms=client_per_item)
    return QueueingModel(fit, scenario, cores=cores, arrival_items_per_s=arrivals, offered=offered)


def _client_ms(model: QueueingModel, data: pd.DataFrame) -> tuple[float, float]:
    """Per request, the part of a job's duration spent neither in the service (its work and its
    queue) nor on the worker's CPU, as a fixed part and a part per item the request carries
    (sending and parsing a bulk body): from the trials where the service did not queue."""
    calm = data[~data["queued"]] if (~data["queued"]).any() else data
    requests = np.array([model.requests_per_job(int(b)) for b in calm["batch_size"]])
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = (
            (calm["job_ms"] - calm["worker_cpu_ms"]) / requests
            - calm["service_ms"]
            - calm["wait_ms"]
        )
    usable = np.isfinite(rest) & np.isfinite(calm["k"])
    if not usable.any():
        return 0.0, 0.0
    rest, k = rest[usable].clip(lower=0.0), calm["k"][usable]
    if k.nunique() < 2:
        return float(np.median(rest)), 0.0
    # per item size the median (robust to a trial slowed by the machine), then a line through them
    by_k = rest.groupby(k).median()
    return _linear(by_k.index.to_numpy(dtype=float), by_k.to_numpy(), np.ones(len(by_k)))


def _arrival_rate(trials: pd.DataFrame, scenario: Scenario) -> float | None:
    """Open loop: items per second that arrive (Locust's: as the trials measured it)."""
    a = scenario.workload.arrival
    if isinstance(a, Backlog):
        return None
    if isinstance(a, LocustArrival):
        rates = trials["items_enqueued"] / a.duration_s
        return float(rates.median()) if len(rates) else None
    return scenario.workload.expected_items / a.duration_s


def _offered(trials: pd.DataFrame, scenario: Scenario) -> dict[str, float]:
    """Locust arrivals: each measured configuration's offered items/s (median of its trials)."""
    a = scenario.workload.arrival
    if not isinstance(a, LocustArrival) or trials.empty:
        return {}
    rates = trials["items_enqueued"] / a.duration_s
    return {
        str(k): float(v) for k, v in rates.groupby(trials.apply(label, axis=1)).median().items()
    }


def model_of_run(run: Run) -> QueueingModel:
    """The model of a run folder (a `load_run` result), for this machine's core count; a
    `--quick` run's backlog and arrivals are its quick ones."""
    services = RunFolder(run.path).service_stats()
    cores = run.manifest.get("cpu_count")
    scenario = run.scenario.quick_variant() if run.manifest.get("quick") else run.scenario
    return fit_model(run.trials, services, scenario, cores=int(cores) if cores else None)


# -- the model's pick ---------------------------------------------------------------------------


def candidates(scenario: Scenario, placement: str = "separate") -> list[Configuration]:
    """Every configuration within the scenario's ranges: each integer num_workers and instances
    between the grid's smallest and largest, its batch sizes and the geometric middles between
    neighbouring ones."""
    s = scenario.sweep
    listed = sorted(s.batch_size)
    middles = (round(math.sqrt(a * b)) for a, b in itertools.pairwise(listed))
    return [
        Configuration(nw, inst, bs, placement)
        for bs in sorted({*listed, *middles})
        for inst in range(min(fixed_values(s.instances)), max(fixed_values(s.instances)) + 1)
        for nw in range(min(fixed_values(s.num_workers)), max(fixed_values(s.num_workers)) + 1)
    ]


@dataclass(frozen=True)
class ModelPick:
    """What the model would recommend among `candidates`: its best, and the cheapest (by the
    objective's prefer order) it puts within the noise margin of that best."""

    pick: Prediction
    best: Prediction
    predicted: Mapping[Configuration, float]  # the ranked figure (items/s or jobs/s) of each


def model_pick(
    model: QueueingModel, *, placement: str = "separate", margin: float = NOISE_MARGIN,
    this_machine: bool = True,
) -> ModelPick:  # fmt: skip
    """The model's recommendation over every candidate configuration."""
    objective = model.scenario.objective
    per_job = objective.maximize == "jobs_per_s"
    predictions: dict[Configuration, Prediction] = {}
    box = candidates(model.scenario, placement)
    for (bs, inst), group in itertools.groupby(box, key=lambda c: (c.batch_size, c.instances)):
        line = model.predict_line(
            bs, int(inst), [int(c.num_workers) for c in group], placement=placement,
            this_machine=this_machine,
        )  # fmt: skip
        predictions |= {p.config: p for p in line}
    figure = {c: p.items_per_s / (c.batch_size if per_job else 1) for c, p in predictions.items()}
    best = max(figure, key=lambda c: (figure[c], [-k for k in preference_key(c, objective.prefer)]))
    near = [c for c, v in figure.items() if v >= figure[best] / (1 + margin)]
    pick = min(near, key=lambda c: preference_key(c, objective.prefer))
    return ModelPick(predictions[pick], predictions[best], figure)


# -- against the measurements -------------------------------------------------------------------


def compare(model: QueueingModel, configs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Predicted vs measured for every measured configuration (a `per_config` table): the
    figure the ranking uses (`metric`), the relative error and the predicted bound."""
    rows = []
    for _, row in configs.iterrows():
        if bool(row.get("stopped_early", False)):
            continue
        p = model.predict(Configuration.of(row))
        predicted = p.whole_items_per_s if bool(row.get("too_short", False)) else p.items_per_s
        if "jobs_per_s" in metric:
            predicted /= int(row["batch_size"])
        measured = float(row[metric])
        rows.append(
            {
                "config": Configuration.of(row).label, "measured": measured,
                "predicted": predicted, "error": predicted / measured - 1 if measured > 0 else math.nan,
                "bound": p.bound, "too_short": bool(row.get("too_short", False)),
            }
        )  # fmt: skip
    return pd.DataFrame(
        rows, columns=["config", "measured", "predicted", "error", "bound", "too_short"]
    )


def median_abs_error(comparison: pd.DataFrame) -> float:
    errors = comparison["error"].abs().dropna()
    return float(errors.median()) if len(errors) else math.nan

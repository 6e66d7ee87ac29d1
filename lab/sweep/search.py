"""Which trial runs next: the scenario's grid, or an adaptive search that finds the optimum.

`sweep.search: {kind: grid}` (the default) runs every grid point `repeats` times in a seeded
shuffled order, as the lab always did. With `repeats: auto`, or `search: {kind: adaptive}`, the
search watches the outcomes and decides, one round at a time:

- racing: a configuration not yet told apart from the best (intervals overlapping, or with one
  repeat, within RACE_NET of it) gets another repeat, and so does the best, until they separate,
  settle as tied (both intervals within the noise margin) or reach `max_repeats`;
- lengthening: a backlog trial too short for a steady window (lab.sweep.trial_row) is rerun
  with its backlog multiplied, where it matters for the ranking;
- early stop: a trial that cannot come within noise of the best known is stopped (a backlog's
  first trial of a configuration on its projected pace, even with EARLY_STOP_SLACK to spare;
  any trial whose SLO is already broken); such a configuration is never recommended;
- refinement (adaptive only): between the would-be recommendation (the cheapest configuration
  within noise of the best) and its cheaper measured neighbour, measure where the queueing
  model (lab.analysis.model) puts the knee (else the geometric middle), and the model's own
  pick over every integer num_workers and instances and batch sizes between the listed ones;
  stop when the neighbours are adjacent or differ by less than the noise, or the budget is spent.

Every decision, with what it added and why, goes to the run folder (`search.jsonl`), so the
report can show the search path and `--resume` can continue from it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lab import limits as L
from lab.analysis.attribution import MIN_STEADY_JOBS, MIN_STEADY_S
from lab.analysis.configs import (
    NOISE_MARGIN,
    Analysis,
    Choice,
    analyze_trials,
    beats,
    choose,
    configs_table,
    preference_key,
    rank_metric,
)
from lab.analysis.model import QueueingModel, fit_model, model_pick
from lab.configuration import Configuration, label
from lab.mocks.spec import ServiceSpec
from lab.results import TRIAL_COLUMNS
from lab.scenario.spec import Backlog, Scenario, fixed_values
from lab.sweep.plan import estimate_trial_s, plan_trials
from lab.sweep.trial import DrainProgress, StopRule, TrialPlan

#: With one repeat there is no interval: a configuration this close to the best races on.
RACE_NET = 0.25

#: Early stop: a trial is stopped only if even this many times its pace so far stays short.
EARLY_STOP_SLACK = 2.0

#: ... and only after this long, its pace taken over the last PACE_WINDOW_S when this many jobs
#: settled in it (else on its best possible pace: every item done this instant).
EARLY_STOP_AFTER_S = 1.0
PACE_WINDOW_S = 0.5
EARLY_STOP_MIN_JOBS = 3

#: A lengthened trial aims at a steady window this long and this full; at most this multiple.
TARGET_STEADY_S = 2.5 * MIN_STEADY_S
TARGET_STEADY_JOBS = 3 * MIN_STEADY_JOBS
MAX_LENGTH_X = 20

#: A too-short configuration this close to the best, by whole-trial figures, is lengthened.
LENGTHEN_NET = 0.5

#: Refinement rounds at most (each measures at least one new configuration).
MAX_ROUNDS = 30

#: The bottleneck of a per-configuration row, as one word (lab.analysis.attribution's
#: vocabulary); by default, the bound the model predicts binds.
Bottleneck = Callable[[pd.Series], str]

PLAN, REPEAT, LENGTHEN, REFINE, DONE, BUDGET = (
    "plan", "repeat", "lengthen", "refine", "done", "budget",
)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """One step of the search: what it added (or why it ended) and why."""

    step: int  # trials finished when it was taken
    elapsed_s: float  # the sweep's wall time by then
    action: str  # plan | repeat | lengthen | refine | done | budget
    reason: str
    configs: tuple[str, ...] = ()
    trials: tuple[Mapping[str, Any], ...] = ()  # the TrialPlans it added

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "elapsed_s": round(self.elapsed_s, 3), "action": self.action,
            "reason": self.reason, "configs": list(self.configs), "trials": [dict(t) for t in self.trials],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            int(data["step"]), float(data["elapsed_s"]), str(data["action"]), str(data["reason"]),
            tuple(data.get("configs", ())), tuple(data.get("trials", ())),
        )  # fmt: skip


def _plan_json(plan: TrialPlan) -> dict[str, Any]:
    return {"trial_id": plan.trial_id, **dataclasses.asdict(plan)}


def _plan_of(data: Mapping[str, Any]) -> TrialPlan:
    fields = {f.name for f in dataclasses.fields(TrialPlan)}
    return TrialPlan(**{k: v for k, v in data.items() if k in fields})


def _middle(axis: Sequence[int]) -> list[int]:
    ordered = sorted(axis)
    return sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]})


class Search:
    """Decides the trials of a sweep from the outcomes so far; see the module's docstring."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        cpu_count: int | None = None,
        bottleneck: Bottleneck | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario, self.cpu_count = scenario, cpu_count
        self.sweep = scenario.sweep
        self.adaptive = self.sweep.search.kind == "adaptive"
        self.racing = self.sweep.racing
        self._bottleneck = bottleneck
        self.on_decision = on_decision
        self._clock, self._started, self._elapsed_before = clock, clock(), 0.0
        self.decisions: list[Decision] = []
        self.planned: list[TrialPlan] = []
        self.pending: list[TrialPlan] = []
        self.rows: list[dict[str, Any]] = []
        self.services: dict[str, Mapping[str, Any]] = {}
        self._length: dict[str, int] = {}  # a lengthened configuration's backlog multiple
        self._rounds = 0
        self._finished = False
        self.model: QueueingModel | None = None
        self._state: tuple[int, pd.DataFrame, Choice | None] | None = None

    # -- what runs first ------------------------------------------------------------------------

    def starting_plan(self) -> list[TrialPlan]:
        """The grid (adaptive: the scenario's grid, or its ends and middles when the grid alone
        would take over half of budget_trials), quickest first when racing, else shuffled."""
        plan = plan_trials(self.scenario)
        if not self.adaptive:
            return plan
        budget = self.sweep.search.budget_trials  # type: ignore[union-attr]
        if budget is not None and len(plan) > budget // 2:
            s = self.sweep
            keep = (
                set(_middle(fixed_values(s.num_workers))),
                set(_middle(fixed_values(s.instances))),
                set(_middle(s.batch_size)),
            )
            plan = [
                p
                for p in plan
                if p.num_workers in keep[0] and p.instances in keep[1] and p.batch_size in keep[2]
            ]
        plan.sort(key=lambda p: estimate_trial_s(self.scenario, p))
        return [dataclasses.replace(p, index=i) for i, p in enumerate(plan)]

    def budget_words(self) -> str:
        s = self.sweep.search
        if s.kind != "adaptive":
            more = f", racing up to {self.sweep.max_repeats} repeats" if self.racing else ""
            return f"the grid{more}"
        parts = [
            f"{s.budget_trials} trials" if s.budget_trials else "",
            f"{s.budget_s:g} s" if s.budget_s else "",
        ]
        budget = " and ".join(p for p in parts if p) or "no budget (until the search settles)"
        return f"adaptive search, budget: {budget}; racing up to {self.sweep.max_repeats} repeats"

    def start(self) -> None:
        plan = self.starting_plan()
        how = "quickest first, so the best is known early" if self.racing else "in a shuffled order"
        self._decide(
            PLAN, f"the starting grid, {len(plan)} trials, {how}; {self.budget_words()}", plan
        )

    def replay(
        self,
        rows: Iterable[Mapping[str, Any]],
        services: Mapping[str, Mapping[str, Any]],
        decisions: Sequence[Mapping[str, Any]],
    ) -> None:
        """Continue a run: its finished trials and its decisions so far (`--resume`)."""
        self.rows = [dict(r) for r in rows]
        self.services = dict(services)
        done = {str(r["trial_id"]) for r in self.rows}
        for data in decisions:
            decision = Decision.from_json(data)
            self.decisions.append(decision)
            self._elapsed_before = max(self._elapsed_before, decision.elapsed_s)
            for t in decision.trials:
                plan = _plan_of(t)
                self.planned.append(plan)
                if plan.length_x > 1:
                    self._length[plan.configuration.label] = plan.length_x
                if plan.trial_id not in done:
                    self.pending.append(plan)
            if decision.action in (DONE, BUDGET):
                self._finished = True
        if not self.decisions:  # a run from before search.jsonl: its grid
            self.start()
            self.pending = [p for p in self.planned if p.trial_id not in done]
        self._finished = self._finished and not self.pending

    # -- the loop -------------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        return self._elapsed_before + self._clock() - self._started

    def next_trial(self) -> TrialPlan | None:
        """The next trial to run, or None when the search is over (settled, or out of budget)."""
        if self._finished:
            return None
        if self._out_of_budget():
            return None
        if not self.pending and self.racing:
            self._next_round()
        if not self.pending:
            if not self._finished:
                self._decide(DONE, self._done_reason(), [])
                self._finished = True
            return None
        return self.pending.pop(0)

    def record(self, row: Mapping[str, Any], services: Mapping[str, Any]) -> None:
        """A finished trial's row (trials.csv) and its services' statistics."""
        self.rows.append(dict(row))
        self.services[str(row["trial_id"])] = services

    def _out_of_budget(self) -> bool:
        s = self.sweep.search
        if s.kind != "adaptive":
            return False
        why = ""
        if s.budget_trials is not None and len(self.rows) >= s.budget_trials:
            why = f"budget_trials: {len(self.rows)} trials run"
        elif s.budget_s is not None and self.elapsed_s >= s.budget_s:
            why = f"budget_s: {self.elapsed_s:,.0f} s spent"
        if not why:
            return False
        left = f"; {len(self.pending)} planned trial(s) not run" if self.pending else ""
        self._decide(BUDGET, f"the budget is spent ({why}){left}", [])
        self._finished = True
        return True

    # -- deciding -------------------------------------------------------------------------------

    def _decide(
        self, action: str, reason: str, plans: Sequence[TrialPlan], configs: Iterable[str] = ()
    ) -> None:
        plans = [dataclasses.replace(p, index=len(self.planned) + i) for i, p in enumerate(plans)]
        self.planned += plans
        self.pending += plans
        names = tuple(configs) or tuple(dict.fromkeys(p.configuration.label for p in plans))
        decision = Decision(
            len(self.rows),
            self.elapsed_s,
            action,
            reason,
            names,
            tuple(_plan_json(p) for p in plans),
        )
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)

    def trials(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows).reindex(columns=list(TRIAL_COLUMNS))
        frame["placement"] = frame["placement"].astype(object).fillna("separate").astype(str)
        return frame

    def analysis(self) -> Analysis | None:
        """The whole analysis of the trials so far (what the report will say)."""
        if not self.rows:
            return None
        service = self.scenario.services.get(self.scenario.workload.service)
        service = service if isinstance(service, ServiceSpec) else None  # a real one: no model
        return analyze_trials(
            self.trials(), self.scenario.objective, service=service, cpu_count=self.cpu_count
        )

    def state(self) -> tuple[pd.DataFrame, Choice | None]:
        """Per-configuration figures so far and the would-be pick (cached per trial count)."""
        if self._state is None or self._state[0] != len(self.rows):
            configs = (
                configs_table(self.trials(), self.scenario.objective)
                if self.rows
                else pd.DataFrame()
            )
            choice = choose(configs, self.scenario.objective) if self.rows else None
            self._state = (len(self.rows), configs, choice)
        return self._state[1], self._state[2]

    def _next_round(self) -> None:
        configs, choice = self.state()
        if choice is None:
            return
        metric = rank_metric(self.scenario.objective)
        if self._lengthen(choice, metric) or self._race(choice, metric):
            return
        if self.adaptive and self._rounds < MAX_ROUNDS:
            self._rounds += 1
            self._refine(configs, choice, metric)

    def _contenders(self, choice: Choice, metric: str) -> list[pd.Series]:
        """The configurations not yet told apart from the best (the best itself excluded)."""
        out, best = [], choice.best
        for _, row in choice.ok.iterrows():
            if label(row) == label(best):
                continue
            if math.isnan(row[f"{metric}_ci_low"]) or math.isnan(best[f"{metric}_ci_low"]):
                if best[metric] <= (1 + RACE_NET) * row[metric]:
                    out.append(row)
            elif not beats(best, row, metric) and not _tight_tie(best, row, metric):
                out.append(row)
        return out

    def _repeats_of(self, config: str) -> int:
        return sum(p.configuration.label == config for p in self.planned)

    def _more(self, row: pd.Series) -> TrialPlan | None:
        """The next repeat of a configuration, or None at max_repeats."""
        config = Configuration.of(row)
        done = self._repeats_of(config.label)
        if done >= self.sweep.max_repeats:
            return None
        return TrialPlan(0, int(config.num_workers), int(config.instances), config.batch_size, done,
                         config.placement, self._length.get(config.label, 1))  # type: ignore[arg-type]  # fmt: skip

    def _race(self, choice: Choice, metric: str) -> bool:
        best = choice.best
        contenders = self._contenders(choice, metric)
        plans, why = [], []
        for row in contenders:
            more = self._more(row)
            if more is not None:
                plans.append(more)
                why.append(f"{label(row)} {_figure(row, metric)}")
        if plans:
            best_more = self._more(best)
            if best_more is not None:
                plans.insert(0, best_more)
        if not plans:
            return False
        self._decide(
            REPEAT,
            f"not yet told apart from the best, {label(best)} {_figure(best, metric)}: "
            f"{'; '.join(why) or 'the best needs more repeats'}",
            plans,
        )
        return True

    def _lengthen(self, choice: Choice, metric: str) -> bool:
        """Backlog configurations whose trials were too short to measure a steady rate, and that
        could be in the race: within LENGTHEN_NET of the best by whole-trial figures (which do
        compare with each other; a whole-trial figure does not compare with a steady one)."""
        if not isinstance(self.scenario.workload.arrival, Backlog):
            return False
        whole = metric.removeprefix("steady_")
        best_whole = float(choice.ok[whole].max())
        racing = [
            row for _, row in choice.ok.iterrows()
            if best_whole <= (1 + LENGTHEN_NET) * float(row[whole])
        ]  # fmt: skip
        plans, why = [], []
        trials = self.trials()
        items = self.scenario.workload.items or 1
        for row in racing:
            name = label(row)
            if not bool(row["too_short"]) or name in self._length:
                continue
            own = trials[
                (trials.apply(label, axis=1) == name) & (trials["length_x"].fillna(1) == 1)
            ]
            if own.empty:
                continue
            jobs, makespan = float(own["jobs_enqueued"].mean()), float(own["makespan_s"].mean())
            factor = max(
                math.ceil(TARGET_STEADY_JOBS / (0.8 * jobs)) if jobs > 0 else MAX_LENGTH_X,
                math.ceil(TARGET_STEADY_S / (0.8 * makespan)) if makespan > 0 else MAX_LENGTH_X,
            )
            factor = min(MAX_LENGTH_X, L.ITEMS_MAX // items, max(2, factor))
            if factor < 2:
                continue  # the backlog is as long as a trial may be
            self._length[name] = factor
            more = self._more(row)
            if more is not None:
                plans.append(more)
                why.append(f"{name} ({int(jobs)} jobs in {makespan:.2f} s: x{factor})")
        if not plans:
            return False
        self._decide(
            LENGTHEN,
            f"too short to measure a steady rate (under {MIN_STEADY_S:g} s or {MIN_STEADY_JOBS} "
            f"jobs in the 10-90 % window), rerun with the backlog multiplied: {'; '.join(why)}",
            plans,
        )
        return True

    # -- refinement -----------------------------------------------------------------------------

    def _fit(self) -> QueueingModel | None:
        try:
            self.model = fit_model(
                self.trials(), self.services, self.scenario, cores=self.cpu_count
            )
        except ValueError:
            self.model = None
        return self.model

    def bottleneck(self, row: pd.Series) -> str:
        """The bound that holds a configuration: the attribution's word, else the model's."""
        if self._bottleneck is not None:
            return self._bottleneck(row)
        if self.model is None:
            return "unknown"
        return self.model.predict(Configuration.of(row)).bound

    def _cost(self, c: Configuration) -> tuple[int, ...]:
        return preference_key(c, self.scenario.objective.prefer)

    def _measured(self) -> set[str]:
        return {p.configuration.label for p in self.planned}

    def _refine(self, configs: pd.DataFrame, choice: Choice, metric: str) -> None:
        chosen, best = choice.chosen, choice.best
        model = self._fit()
        if self.bottleneck(chosen) == "harness":
            return  # the pick measures this machine: finer points would measure its noise
        found: dict[str, tuple[TrialPlan, str]] = {}
        undecided: list[pd.Series] = []
        for axis in ("num_workers", "instances"):
            lo = self._bisect(configs, chosen, axis, metric, model, found)
            if lo is not None:
                undecided.append(lo)
        if undecided and self._tell_apart(chosen, undecided, metric):
            return
        if model is not None:
            self._model_pick(model, chosen, best, found)
        plans = [plan for plan, _ in found.values()]
        if plans:
            self._decide(REFINE, "; ".join(why for _, why in found.values()), plans)

    def _bisect(
        self, configs: pd.DataFrame, chosen: pd.Series, axis: str, metric: str,
        model: QueueingModel | None, found: dict[str, tuple[TrialPlan, str]],
    ) -> pd.Series | None:  # fmt: skip
        """Between the pick and its nearest measured cheaper neighbour along one axis. Returns
        that neighbour when only the noise hides whether the pick beats it (over the margin
        apart, intervals overlapping): then repeats decide first."""
        others = [k for k in ("num_workers", "instances", "batch_size", "placement") if k != axis]
        same = configs
        for k in others:
            same = same[same[k] == chosen[k]]
        below = same[same[axis] < chosen[axis]]
        if below.empty:
            return None
        lo = below.loc[below[axis].idxmax()]
        low, high = int(lo[axis]), int(chosen[axis])
        if high - low < 2:
            return None  # adjacent: nothing between them
        stopped = bool(lo.get("stopped_early", False))
        if not stopped and _measured_once(lo):
            return lo  # one trial, maybe an outlier, would send the search past the knee
        if not stopped and not beats(chosen, lo, metric):
            # they differ by less than the noise: no knee between them, unless the gap is over
            # the margin and only wide intervals keep them apart
            return lo if chosen[metric] / lo[metric] - 1 > NOISE_MARGIN else None
        options = [
            (round(math.sqrt(low * high)), "the geometric middle"),
            ((low + high) // 2, "the middle"),
        ]
        if model is not None:
            knee = self._knee(model, Configuration.of(chosen), axis, low, high)
            if knee is not None:
                options.insert(0, (knee, "where the model puts the knee"))
        taken = self._measured() | set(found)
        fresh = [
            (v, how) for v, how in options
            if low < v < high and _along(Configuration.of(chosen), axis, v).label not in taken
        ]  # fmt: skip
        if not fresh:
            return None
        value, how = fresh[0]
        config = _along(Configuration.of(chosen), axis, value)
        why = (
            f"between {label(lo)} ({self.bottleneck(lo)}-bound, {_figure(lo, metric)}) and the "
            f"pick {label(chosen)} ({self.bottleneck(chosen)}-bound, {_figure(chosen, metric)}): "
            f"{axis} {value}, {how}"
        )
        found[config.label] = (self._new(config), why)
        return None

    def _tell_apart(self, chosen: pd.Series, neighbours: list[pd.Series], metric: str) -> bool:
        """Repeats of the pick and of cheaper neighbours that it may or may not beat."""
        plans, why = [], []
        for row in (chosen, *neighbours):
            more = self._more(row)
            if more is not None:
                plans.append(more)
            why.append(f"{label(row)} {_figure(row, metric)}")
        if not plans:
            return False
        self._decide(
            REPEAT,
            f"to tell the pick from its cheaper neighbour (one trial, or over "
            f"{NOISE_MARGIN:.0%} apart with intervals overlapping): {'; '.join(why)}",
            plans,
        )
        return True

    def _knee(
        self, model: QueueingModel, pick: Configuration, axis: str, low: int, high: int
    ) -> int | None:
        """The smallest value in (low, high) the model puts within noise of the line's best
        (over the grid's range of that axis): the knee, by the model."""
        most = max(fixed_values(getattr(self.sweep, axis)))
        line = [
            model.predict(_along(pick, axis, v)).items_per_s
            for v in range(low + 1, max(most, high) + 1)
        ]
        target = max(line) / (1 + NOISE_MARGIN)
        for v in range(low + 1, high):
            if model.predict(_along(pick, axis, v)).items_per_s >= target:
                return v
        return None

    def _model_pick(
        self, model: QueueingModel, chosen: pd.Series, best: pd.Series,
        found: dict[str, tuple[TrialPlan, str]],
    ) -> None:  # fmt: skip
        """The model's own pick (the cheapest it puts within noise of its best) when cheaper
        than the measured pick, and its best when at another batch size and beyond the noise
        above the measured best; only what is not measured yet."""
        pick = Configuration.of(chosen)
        mp = model_pick(model, placement=pick.placement)
        cheapest, top = mp.pick.config, mp.best.config
        measured = self._measured() | set(found)
        if cheapest.label not in measured and self._cost(cheapest) < self._cost(pick):
            found[cheapest.label] = (
                self._new(cheapest),
                f"the model's pick: {cheapest.label} is the cheapest it puts within "
                f"{NOISE_MARGIN:.0%} of its best ({mp.predicted[cheapest]:,.0f} predicted, "
                f"{mp.pick.bound}-bound)",
            )
        best_predicted = model.predict(Configuration.of(best)).items_per_s
        if (
            top.label not in measured
            and top.batch_size != int(best["batch_size"])  # the axis the grid may have missed
            and mp.best.items_per_s > best_predicted * (1 + NOISE_MARGIN)
        ):
            found[top.label] = (
                self._new(top),
                f"the model puts {top.label} beyond the noise above the best "
                f"({mp.best.items_per_s:,.0f} items/s predicted vs {best_predicted:,.0f} for "
                f"{label(best)})",
            )

    def _new(self, config: Configuration) -> TrialPlan:
        return TrialPlan(0, int(config.num_workers), int(config.instances), config.batch_size, 0,
                         config.placement)  # type: ignore[arg-type]  # fmt: skip

    def _done_reason(self) -> str:
        choice = self.state()[1]
        pick = None if choice is None else Configuration.of(choice.chosen)
        if not self.racing:
            return f"the grid is done ({len(self.rows)} trials)"
        if pick is None:
            return "nothing met the SLO: no configuration to race or refine"
        tail = (
            "" if not self.adaptive else "; its cheaper neighbours are adjacent or beyond the noise"
        )
        undecided = self._undecided()
        if undecided:
            tail += (
                f". Still undecided at max_repeats ({self.sweep.max_repeats}): "
                f"{'; '.join(undecided)}; more repeats (sweep.max_repeats) or a longer backlog "
                "would tell them apart"
            )
        return f"settled on {pick.label}: every other configuration is told apart from the best or tied within the noise{tail}"

    def _undecided(self) -> list[str]:
        """Configurations more than the margin below the best whose interval still overlaps
        the best's: the noise, not the measurement, keeps them tied."""
        choice = self.state()[1]
        if choice is None:
            return []
        metric, best = rank_metric(self.scenario.objective), choice.best
        out = []
        for _, row in choice.tied.iterrows():
            if label(row) != label(best) and best[metric] / row[metric] - 1 > NOISE_MARGIN:
                out.append(
                    f"{label(row)} {_figure(row, metric)} vs {label(best)} {_figure(best, metric)}"
                )
        return out

    # -- early stop -----------------------------------------------------------------------------

    def stop_rule(self, plan: TrialPlan) -> StopRule | None:
        """The early-stop rule for the next trial (None in a plain grid, where every trial runs
        to its end, as it always did)."""
        if not self.racing:
            return None
        best_rate, best_name = None, ""
        choice = self.state()[1]
        if choice is not None:
            best_rate = float(choice.best[rank_metric(self.scenario.objective)])
            best_name = label(choice.best)
        return EarlyStop(self.scenario, plan, best_rate, best_name)


def _measured_once(row: pd.Series) -> bool:
    """Its ranked figure stands on one trial (no interval yet)."""
    return int(row["steady_repeats"] if not bool(row["too_short"]) else row["repeats"]) < 2


def _along(config: Configuration, axis: str, value: int) -> Configuration:
    """`config` with num_workers or instances set to `value`."""
    if axis == "num_workers":
        return dataclasses.replace(config, num_workers=value)
    return dataclasses.replace(config, instances=value)


def _figure(row: pd.Series, metric: str) -> str:
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    spread = "" if math.isnan(low) else f" ({low:,.0f}–{high:,.0f})"
    return f"{row[metric]:,.0f}{spread}"


def _tight_tie(a: pd.Series, b: pd.Series, metric: str) -> bool:
    """Both intervals within the noise margin of their means, and the means within it too:
    more repeats would not split them in any way the recommendation cares about."""

    def tight(r: pd.Series) -> bool:
        return (r[f"{metric}_ci_high"] - r[f"{metric}_ci_low"]) / 2 <= NOISE_MARGIN * r[metric]

    return tight(a) and tight(b) and a[metric] / b[metric] - 1 <= NOISE_MARGIN


@dataclass
class EarlyStop:
    """Stops a trial that cannot come within noise of the best known, or breaks the SLO."""

    scenario: Scenario
    plan: TrialPlan
    best_rate: float | None  # the best's ranked figure (items/s or jobs/s), None: none yet
    best_name: str
    _late_done: int = 0
    _done_ids: set[str] = field(default_factory=set)
    _history: list[tuple[float, int, int]] = field(default_factory=list)  # (s, done, settled)

    def _recent_pace(self, now: float, done: int, settled: int) -> float | None:
        """The pace over the last PACE_WINDOW_S (the start-up left out: the first completions
        come late and would make the pace look slow), when enough jobs settled in it."""
        since = [h for h in self._history if h[0] >= now - PACE_WINDOW_S]
        then = since[0] if since else None
        if then is None or now - then[0] < PACE_WINDOW_S / 2:
            return None
        if settled - then[2] < EARLY_STOP_MIN_JOBS:
            return None
        return (done - then[1]) / (now - then[0])

    def __call__(self, p: DrainProgress) -> str | None:
        if p.elapsed_s < EARLY_STOP_AFTER_S:
            return None
        return self._slo(p) or self._pace(p)

    def _slo(self, p: DrainProgress) -> str | None:
        slo, jobs = self.scenario.objective.slo, len(p.arrivals_s)
        if not jobs:
            return None
        if p.jobs_dead > slo.max_error_rate * jobs:
            return f"SLO already broken: {p.jobs_dead} of {jobs} jobs dead (> {slo.max_error_rate:.1%})"
        if slo.p99_latency_ms is None:
            return None
        limit_s = slo.p99_latency_ms / 1000
        for e in p.new_events():
            if e.outcome == "ok" and e.job_id not in self._done_ids:
                self._done_ids.add(e.job_id)
                self._late_done += e.latency_s > limit_s
        early = sum(1 for a in p.arrivals_s if a < p.elapsed_s - limit_s)  # due long enough ago
        late = self._late_done + max(0, early - p.jobs_settled)
        need = jobs - math.floor(0.99 * (jobs - 1))  # late jobs that make p99 > limit for sure
        if late >= need:
            return (
                f"SLO already broken: {late} of {jobs} jobs take over {slo.p99_latency_ms:,.0f} ms, "
                f"so p99 is over it whatever the rest do"
            )
        return None

    def _pace(self, p: DrainProgress) -> str | None:
        """A first trial of a configuration only: a repeat is run because the configuration is
        still in the race, and its own figures say what it does better than a partial pace."""
        if self.plan.repeat > 0 or self.plan.length_x > 1 or self.best_rate is None:
            return None
        if not isinstance(self.scenario.workload.arrival, Backlog):
            return None
        per_item = self.scenario.objective.maximize == "items_per_s"
        total = p.items_planned if per_item else len(p.arrivals_s)
        done = p.items_done if per_item else p.jobs_settled
        self._history.append((p.elapsed_s, done, p.jobs_settled))
        threshold = self.best_rate / (1 + NOISE_MARGIN)
        at_best = total / p.elapsed_s  # even if the rest finished this instant
        pace = self._recent_pace(p.elapsed_s, done, p.jobs_settled) or at_best
        if EARLY_STOP_SLACK * min(at_best, pace) >= threshold:
            return None
        unit = "items/s" if per_item else "jobs/s"
        projected = f"{total / pace:,.1f} s" if pace > 0 else "unbounded"
        return (
            f"projected makespan {projected} ({pace:,.0f} {unit} so far) against the best, "
            f"{self.best_name} at {self.best_rate:,.0f} {unit}: even {EARLY_STOP_SLACK:g}x this "
            f"pace stays over {NOISE_MARGIN:.0%} below it"
        )

"""Rollout by strategy, the judging of measurement windows, rollback and post-deploy watch.

Mixed into Readiness (readiness.py), whose attributes these generators use.  Each strategy
walks the rollout node through NSV states, journals a ``step`` record per finished step (so
a resumed run skips them), and either ends in SV:RAZVERNUTO or rolls back:

- CANARY: for each weight (5 -> 25 -> 50 -> 100 by default) shift traffic (the agents' split,
  or the traffic_shift hook), then judge the step's window every tick: FAIL rolls back at
  once, PASS promotes once the hold has passed, INCONCLUSIVE holds until max_hold and then
  ends the run INCONCLUSIVE.  Relative gates run while the baseline still gets traffic.
  A step an earlier controller was holding when it died goes on where it was: its traffic
  is not shifted again (nor its hook run), the load that controller journaled for the step
  (Readiness.journaled) counts toward the hold, the samples and every gate, and a
  ``resumed`` step record says what was carried over and when the step went on.
- BLUE-GREEN: the switch hook, the verify_switch hook, then a window on the new colour.
- ROLLING: the instance_step hook per batch of instances, each followed by a window.
- BIG-BANG: wait for the downtime window, the switch hook, then a window.

The fail rule: a window (any strategy's) FAILs only once it covers FAIL_COVER of its hold
and every gate that failed rests on no less evidence than a PASS of the plan needs
(gates.samples_to_fail: the strictest percentile claim's minimum, e.g. 299 samples for p99
at 95 %).  Before that a failed gate is held as INCONCLUSIVE with the rule in its reason: the
first ticks of a window see bursts (a target starved of CPU, agents fresh after a resume)
that a handful of samples cannot tell from a regression.  A true regression is still rolled
back at the first step that has that evidence.
"""
import collections
import dataclasses
import datetime
import math

from loadgate.controller.gates import GateStatus, combine, evaluate, samples_to_fail
from loadgate.controller.journal import RecordKind, StepPhase
from loadgate.controller.plan_model import Strategy, TargetRole, TrafficShift
from loadgate.controller.plan_units import format_duration, format_percent
from loadgate.controller.readiness_protocol import TargetWindow, WindowMeasurement
from loadgate.controller.states import Node, Stage, State
from loadgate.controller.verdict import RunStatus
from loadgate.native.errors import LoadgateError


# How much a window's samples must grow between two looks at it (see judge_window).
LOOK_GROWTH = 1.25
# The fraction of its hold a window must cover before it may FAIL (the fail rule above).
FAIL_COVER = 0.5
FAILED_ON = f" (on at least {FAIL_COVER:.0%} of its hold and the samples a PASS needs)"


class RolloutMixin:
    deploying = False

    def judge_window(self, window, weights, rate, min_s, max_s, judged, pair, gates=None,
                     carried=None):
        """Generator: opens a window and judges it at its looks until a decision.

        Returns (status, results, measurement): FAIL as soon as a look finds a gate failed
        that the fail rule (module docstring, hold_early_failures) lets fail;
        PASS at the first look where every gate passes and the measurement covers min_s;
        whatever the gates say once it covers max_s.  Each gate holds its confidence for one
        look, so looking at every tick of a 24-hour window would all but guarantee a false
        FAIL; the window is looked at only when its samples have grown by LOOK_GROWTH since
        the last look, when it first covers min_s, and at max_s: about
        log(samples) / log(LOOK_GROWTH) looks in all (some 80 for a day at 1000 req/s).
        Coverage is the measured time the source reports, not the clock: agents' reports
        arrive late under load, and a window must not close before its data.  A source that
        falls further behind than the grace below is judged on what it has.

        ``carried``: what earlier controllers measured of this window (a resumed step); it
        counts as measured before this part, so the hold and max_s run on from it and the
        next look waits for samples beyond it.
        """
        self.source.start_window(weights, rate)
        start = self.clock()
        # When the load of this window begins on the source's clock: a controller that takes
        # the run over finds this part of the window in the load journal from there on.
        self.journal.append({"kind": RecordKind.STEP.value, "time": start,
                             "phase": StepPhase.OPENED.value, "window": window,
                             "opened": self.source.collect().start})
        gates = gates or self.plan.gates
        grace = max(5.0, 4 * self.plan.load.interval_s)
        next_look, held, served = 1, False, 0.0
        if carried is not None:
            served = carried.duration_s
            next_look = 1 + _samples(carried, judged)
            held = served >= min_s
        while True:
            yield from self._pause()
            measurement = self.source.collect()
            if carried is not None:
                measurement = joined(carried, measurement)
            elapsed = served + self.clock() - start
            covered = measurement.duration_s
            samples = sum(measurement.targets[name].latency.total_count for name in judged)
            final = covered >= max_s or elapsed >= max_s + grace
            first_hold = covered >= min_s and not held
            if not (final or first_hold or samples >= next_look):
                continue
            held = held or covered >= min_s
            next_look = max(math.ceil(LOOK_GROWTH * samples), samples + 1)
            results = hold_early_failures(
                evaluate(gates, measurement, window, judged, *pair,
                         gpu_unavailable=self.gpu_unavailable), gates, covered, min_s)
            status = combine(results)
            self.journal.append({
                "kind": RecordKind.STEP.value, "time": self.clock(),
                "phase": StepPhase.EVALUATION.value, "window": window,
                "status": status.value, "elapsed": elapsed, "covered": covered,
                "samples": {name: t.latency.total_count
                            for name, t in measurement.targets.items()}})
            if status is GateStatus.FAIL or final or (status is GateStatus.PASS and held):
                return status, results, measurement

    def _finished_steps(self, phase):
        return {s["index"] for s in self.steps if s.get("phase") == phase.value and
                s.get("status") == GateStatus.PASS.value}

    def _hook(self, name, hook, **values):
        result = self.hooks.run(name, hook, **values)
        self.journal.append({"kind": RecordKind.HOOK.value, "time": self.clock(),
                             **result.to_dict(), "values": values})
        return result

    def rollout(self, node):
        """Generator: the strategy's rollout of node; True when it reached SV:RAZVERNUTO."""
        strategy = self.plan.deployment.strategy
        self.deploying = True
        runner = {Strategy.CANARY: self._canary, Strategy.BLUE_GREEN: self._blue_green,
                  Strategy.ROLLING: self._rolling, Strategy.BIG_BANG: self._big_bang}[strategy]
        done = yield from runner(node)
        if done:
            self._to(node, State.RAZVERNUTO, f"{strategy.value} rollout passed every gate")
        return done

    def canary_weights(self, percent):
        if self.plan.canary.traffic is TrafficShift.HOOK:
            return self.static_weights()
        baseline = self.plan.target(TargetRole.BASELINE).name
        canary = self.plan.target(TargetRole.CANARY).name
        return {baseline: 1.0 - percent / 100.0, canary: percent / 100.0}

    def _judged(self, weights):
        canary = self.plan.target(TargetRole.CANARY)
        if canary is not None and weights.get(canary.name):
            return [canary.name]
        return [name for name, share in weights.items() if share > 0]

    def _canary(self, node):
        canary = self.plan.canary
        done = self._finished_steps(StepPhase.CANARY)
        for index, percent in enumerate(canary.steps):
            if index in done:
                continue
            label = f"canary step {index + 1} ({format_percent(percent)})"
            evidence = {"step": index + 1, "weight": percent}
            if not self._shifted(node, index + 1, percent):
                self._to(node, State.VYPOLNYAETSYA, f"shifting {format_percent(percent)} of "
                                                    "the traffic to the canary", evidence)
                if canary.traffic is TrafficShift.HOOK:
                    shifted = self._hook("traffic_shift", self.plan.hooks.traffic_shift,
                                         weight=percent)
                    if not shifted.ok:
                        return self.roll_back(f"traffic_shift hook failed ({shifted.status})",
                                              evidence)
            weights = self.canary_weights(percent)
            carried, resumed = self._carry_over(label, weights, self._judged(weights))
            self._to(node, State.TESTIRUYETSYA, f"holding {label} for at least "
                                                f"{format_duration(canary.hold_s)}", evidence)
            status, results, measurement = yield from self.judge_window(
                label, weights, self.plan.load.rate, canary.hold_s, canary.max_hold_s,
                self._judged(weights), self.pair(weights), carried=carried)
            self._record_step(StepPhase.CANARY, label, results, measurement, index=index,
                              weight=percent, **({"resumed": resumed} if resumed else {}))
            if status is GateStatus.FAIL:
                return self.roll_back(f"{label} failed{FAILED_ON}: "
                                      f"{failed_reasons(results)}", evidence)
            if status is GateStatus.INCONCLUSIVE:
                return self._inconclusive(f"{label} still inconclusive after "
                                          f"{format_duration(canary.max_hold_s)}: "
                                          f"{inconclusive_reasons(results)}")
        return True

    def _shifted(self, node, step, percent):
        """Whether an earlier controller already shifted the traffic of canary step ``step``:
        the step reached TESTIRUYETSYA, or its traffic_shift hook succeeded just before that
        controller died."""
        this_step = False
        for record in self.journal.records():
            kind = record.get("kind")
            if kind == RecordKind.TRANSITION.value and record["node"] == node.key:
                this_step = (record.get("evidence") or {}).get("step") == step
                if this_step and record["to"] == State.TESTIRUYETSYA.value:
                    return True
            elif this_step and kind == RecordKind.HOOK.value and \
                    record.get("hook") == "traffic_shift" and record.get("ok") and \
                    (record.get("values") or {}).get("weight") == percent:
                return True
        return False

    def _carry_over(self, label, weights, judged):
        """(what earlier controllers measured of window ``label``, the record of its
        resumption); (None, None) for a window no controller opened before.  Each part is
        the load from where that controller opened the window to its last journaled
        interval: the time between the parts is a gap, not hold."""
        opened = [r["opened"] for r in self.steps if r.get("phase") == StepPhase.OPENED.value
                  and r.get("window") == label]
        if not opened:
            return None, None
        carried, parts = None, []
        for start in opened:
            part = self.journaled(start, weights)
            if part is None:
                parts.append({"opened": start, "until": None, "covered": 0.0, "samples": 0})
                continue
            parts.append({"opened": start, "until": part.end, "covered": part.duration_s,
                          "samples": _samples(part, judged)})
            carried = part if carried is None else joined(carried, part)
        served = carried.duration_s if carried is not None else 0.0
        samples = _samples(carried, judged) if carried is not None else 0
        last = max((p["until"] for p in parts if p["until"] is not None), default=opened[-1])
        resumed = {"at": self.clock(), "interrupted_at": last, "carried_s": served,
                   "carried_samples": samples, "parts": parts}
        self._journal_step({
            "kind": RecordKind.STEP.value, "time": resumed["at"],
            "phase": StepPhase.RESUMED.value, "window": label, **resumed,
            "reason": f"{label} was interrupted at {_moment(last)} after "
                      f"{format_duration(served)} of its hold ({samples} samples); it "
                      f"goes on at {_moment(resumed['at'])} with the rest of its hold"})
        return carried, resumed

    def _verify_window(self, node, label, evidence, phase, **extra):
        weights = self.static_weights()
        hold = self.plan.canary.hold_s or self.plan.load.duration_s
        self._to(node, State.TESTIRUYETSYA, f"verifying {label}", evidence)
        status, results, measurement = yield from self.judge_window(
            label, weights, self.plan.load.rate, hold, 2 * hold, self._judged(weights),
            self.pair(weights))
        self._record_step(phase, label, results, measurement, **extra)
        if status is GateStatus.FAIL:
            return self.roll_back(f"{label} failed{FAILED_ON}: {failed_reasons(results)}",
                                  evidence)
        if status is GateStatus.INCONCLUSIVE:
            return self._inconclusive(f"{label}: {inconclusive_reasons(results)}")
        return True

    def _switch(self, node, label):
        self._to(node, State.VYPOLNYAETSYA, label)
        switched = self._hook("switch", self.plan.hooks.switch, weight=100)
        if not switched.ok:
            return self.roll_back(f"switch hook failed ({switched.status}): "
                                  f"{switched.output[-200:]}", {})
        return True

    def _blue_green(self, node):
        if not self._switch(node, "switching traffic to the new colour"):
            return False
        verified = self._hook("verify_switch", self.plan.hooks.verify_switch, weight=100)
        if not verified.ok:
            return self.roll_back(f"verify_switch hook failed ({verified.status})", {})
        return (yield from self._verify_window(node, "after the switch", {"switch": "done"},
                                               StepPhase.SWITCH, index=0))

    def _rolling(self, node):
        rolling = self.plan.rolling
        batches = math.ceil(rolling.instances / rolling.batch_size)
        done = self._finished_steps(StepPhase.ROLLING)
        for index in range(batches):
            if index in done:
                continue
            updated = min(rolling.instances, (index + 1) * rolling.batch_size)
            evidence = {"batch": index + 1, "instances_updated": updated,
                        "instances": rolling.instances}
            self._to(node, State.VYPOLNYAETSYA, f"updating batch {index + 1}/{batches}",
                     evidence)
            stepped = self._hook("instance_step", self.plan.hooks.instance_step,
                                 batch=index + 1, instances_updated=updated,
                                 instances=rolling.instances)
            if not stepped.ok:
                return self.roll_back(f"instance_step hook failed ({stepped.status})",
                                      evidence)
            label = f"rolling batch {index + 1}/{batches} ({updated}/{rolling.instances})"
            if not (yield from self._verify_window(node, label, evidence, StepPhase.ROLLING,
                                                   index=index)):
                return False
        return True

    def _big_bang(self, node):
        window = self.plan.downtime_window
        start, end = (datetime.datetime.fromisoformat(t).timestamp()
                      for t in (window.start, window.end))
        if self.clock() > end:
            return self._block(node, f"the downtime window {window.start} .. {window.end} "
                                     "is over", {"window": [window.start, window.end]})
        while self.clock() < start:
            yield from self._pause()
        if not self._switch(node, "replacing every instance in the downtime window"):
            return False
        return (yield from self._verify_window(node, "after the big-bang switch",
                                               {"window": [window.start, window.end]},
                                               StepPhase.SWITCH, index=0))

    def post_deploy(self, node, rollout):
        """Generator: watches the deployed version for the post-deploy window."""
        self.deploying = True
        seconds = self.plan.monitoring.post_deploy_window_s
        began = self.entered(node, State.MONITORITSYA)
        if self.machine.state(node) is State.MONITORITSYA and began is not None:
            seconds = max(0.0, seconds - (self.clock() - began))
        self._to(node, State.MONITORITSYA, f"watching for {format_duration(seconds)}")
        weights = self.canary_weights(100.0) if self.plan.deployment.strategy is \
            Strategy.CANARY else self.static_weights()
        status, results, measurement = yield from self.judge_window(
            "post-deploy", weights, self.plan.load.rate, seconds, seconds,
            self._judged(weights), (None, None))
        self._record_step(StepPhase.POST_DEPLOY, "post-deploy", results, measurement)
        if status is GateStatus.FAIL:
            return self.roll_back(f"post-deploy monitoring failed{FAILED_ON}: "
                                  f"{failed_reasons(results)}", {})
        if status is GateStatus.INCONCLUSIVE:
            return self._inconclusive(f"post-deploy: {inconclusive_reasons(results)}")
        self._to(node, State.PROVERENO, f"{len(results)} gates held for "
                                        f"{format_duration(seconds)}")
        return True

    def roll_back(self, reason, evidence, status=RunStatus.FAILED, error=None):
        """AVARIYA -> rollback hook -> OTKAT -> previous SV for every deploying node; False."""
        stage = Node(Stage.DEPLOYMENT)
        nodes = [n for n in self.machine.children[stage]
                 if self.machine.state(n).imperfective or
                 self.machine.state(n) is State.RAZVERNUTO]
        for node in nodes + [stage]:
            self._to(node, State.AVARIYA, reason, evidence)
        if self.plan.deployment.strategy is Strategy.CANARY and \
                self.plan.canary.traffic is TrafficShift.SPLIT:
            try:
                self.source.start_window(self.canary_weights(0.0), self.plan.load.rate)
            except (LoadgateError, OSError):
                # A source that is gone sends the canary nothing either; the hook still runs.
                pass
        result = self._hook("rollback", self.plan.hooks.rollback, weight=0)
        if not result.ok:
            self._finish(RunStatus.FAILED, f"{reason}; rollback hook FAILED "
                         f"({result.status}): the deployment stays in AVARIYA", error)
            return False
        for node in nodes:
            self._to(node, State.OTKAT, f"rollback initiated: {reason}", evidence)
            self._to(node, self.machine.previous_sv(node), "rolled back to the previous "
                     "known-good state", {"hook": result.to_dict()})
        self._to(stage, State.OTKAT, f"rolled back: {reason}", {"hook": result.to_dict()})
        rto = self.plan.rollback.rto_s
        if rto is not None and result.seconds > rto:
            reason += (f"; the rollback took {format_duration(result.seconds)}, over the RTO of "
                       f"{format_duration(rto)}")
        self._finish(status, reason, error)
        return False


def joined(earlier, later):
    """One measurement of a window measured in two parts (a controller died between them):
    the samples and counts of both, rates over the time both covered.  The gap between the
    parts is no part of it, so ``duration_s`` is the sum of theirs."""
    seconds = max(1e-9, earlier.duration_s + later.duration_s)
    targets = {}
    for name in {**earlier.targets, **later.targets}:
        parts = [(m.duration_s, m.targets[name]) for m in (earlier, later) if name in m.targets]
        latency = parts[0][1].latency.copy()
        for _, part in parts[1:]:
            latency.add(part.latency)
        outcomes = collections.Counter()
        for _, part in parts:
            outcomes.update(part.outcomes)
        targets[name] = TargetWindow(
            name=name, latency=latency, requests=sum(p.requests for _, p in parts),
            errors=sum(p.errors for _, p in parts),
            intended_rps=sum(d * p.intended_rps for d, p in parts) / seconds,
            achieved_rps=sum(d * p.achieved_rps for d, p in parts) / seconds,
            outcomes=dict(outcomes))
    return WindowMeasurement(start=later.start - earlier.duration_s, end=later.end,
                             targets=targets, telemetry=earlier.telemetry + later.telemetry)


def _samples(measurement, judged):
    return sum(measurement.targets[name].latency.total_count for name in judged
               if name in measurement.targets)


def _moment(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def hold_early_failures(results, gates, covered, hold_s):
    """results with every FAIL that the fail rule does not yet allow turned INCONCLUSIVE."""
    cover = FAIL_COVER * hold_s
    held = []
    for result in results:
        needed = samples_to_fail(result, gates)
        if result.status is GateStatus.FAIL and (covered < cover or result.samples < needed):
            result = dataclasses.replace(result, status=GateStatus.INCONCLUSIVE, reason=(
                f"{result.reason}; not failed yet: a step fails only after "
                f"{format_duration(cover)} ({FAIL_COVER:.0%} of its hold) with {needed} "
                f"samples, it has {format_duration(covered)} and {result.samples}"))
        held.append(result)
    return held


def failed_reasons(results):
    return "; ".join(f"{r.name}: {r.reason}" for r in results if r.status is GateStatus.FAIL)


def inconclusive_reasons(results):
    return "; ".join(f"{r.name}: {r.reason}" for r in results
                     if r.status is GateStatus.INCONCLUSIVE)

"""Rollout by strategy, the judging of measurement windows, rollback and post-deploy watch.

Mixed into Readiness (readiness.py), whose attributes these generators use.  Each strategy
walks the rollout node through NSV states, journals a ``step`` record per finished step (so
a resumed run skips them), and either ends in SV:RAZVERNUTO or rolls back:

- CANARY: for each weight (5 -> 25 -> 50 -> 100 by default) shift traffic (the agents' split,
  or the traffic_shift hook), then judge the step's window every tick: FAIL rolls back at
  once, PASS promotes once the hold has passed, INCONCLUSIVE holds until max_hold and then
  ends the run INCONCLUSIVE.  Relative gates run while the baseline still gets traffic.
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
import dataclasses
import datetime
import math

from loadgate.controller.gates import GateStatus, combine, evaluate, samples_to_fail
from loadgate.controller.journal import RecordKind, StepPhase
from loadgate.controller.plan_model import Strategy, TargetRole, TrafficShift
from loadgate.controller.plan_units import format_duration, format_percent
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

    def judge_window(self, window, weights, rate, min_s, max_s, judged, pair, gates=None):
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
        """
        self.source.start_window(weights, rate)
        start = self.clock()
        gates = gates or self.plan.gates
        grace = max(5.0, 4 * self.plan.load.interval_s)
        next_look, held = 1, False
        while True:
            yield from self._pause()
            measurement = self.source.collect()
            elapsed = self.clock() - start
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
            self._to(node, State.VYPOLNYAETSYA, f"shifting {format_percent(percent)} of the "
                                                "traffic to the canary", evidence)
            if canary.traffic is TrafficShift.HOOK:
                shifted = self._hook("traffic_shift", self.plan.hooks.traffic_shift,
                                     weight=percent)
                if not shifted.ok:
                    return self.roll_back(f"traffic_shift hook failed ({shifted.status})",
                                          evidence)
            weights = self.canary_weights(percent)
            self._to(node, State.TESTIRUYETSYA, f"holding {label} for at least "
                                                f"{format_duration(canary.hold_s)}", evidence)
            status, results, measurement = yield from self.judge_window(
                label, weights, self.plan.load.rate, canary.hold_s, canary.max_hold_s,
                self._judged(weights), self.pair(weights))
            self._record_step(StepPhase.CANARY, label, results, measurement, index=index,
                              weight=percent)
            if status is GateStatus.FAIL:
                return self.roll_back(f"{label} failed{FAILED_ON}: "
                                      f"{failed_reasons(results)}", evidence)
            if status is GateStatus.INCONCLUSIVE:
                return self._inconclusive(f"{label} still inconclusive after "
                                          f"{format_duration(canary.max_hold_s)}: "
                                          f"{inconclusive_reasons(results)}")
        return True

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

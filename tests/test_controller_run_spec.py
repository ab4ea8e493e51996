"""How a run is described and split among agents (controller/runner_spec.py), and the clock
arithmetic of the start agreement (controller/runner_agents.py)."""
import pytest

from loadgate.controller.plan import load_plan
from loadgate.controller.plan_model import AgentLossPolicy
from loadgate.controller.runner_agents import ClockSample, best_sample, clock_sample
from loadgate.controller.runner_spec import RunDefinition, TargetDefinition
from loadgate.native.errors import ConfigError
from loadgate.native.schedule import (ClosedLoop, ConstantRate, Poisson, Ramp, Steps,
                                      schedule_from_dict)


def plan_text(extra_target=""):
    return f"""
apiVersion: loadgate/v1
deployment: {{id: SPEC-TEST, type: FEATURE, risk: LOW, environment: DEV, strategy: BIG-BANG}}
targets:
  - name: main
    url: http://127.0.0.1:9
    request:
      method: POST
      path: /submit
      headers: {{Content-Type: application/json}}
      body: '{{"x": 1}}'
{extra_target}
load: {{rate: 90, duration: 2s, arrival: poisson, seed: 4, interval: 250ms, connections: 3,
       timeout: 1s}}
agent_loss: redistribute
downtime_window: {{start: "2025-01-01T00:00:00+00:00", end: "2025-01-01T01:00:00+00:00"}}
"""


def test_a_plan_becomes_a_run_definition(tmp_path):
    (tmp_path / "bodies.txt").write_text('{"id": 1}\n{"id": 2}\n\n{"id": 3}\n')
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text("""  - name: rotating
    url: http://127.0.0.1:9
    request: {rotate_file: bodies.txt}"""))
    definition = RunDefinition.from_plan(load_plan(str(path)), workers_per_agent=2)
    main, rotating = definition.targets
    assert (main.method, main.path, main.body) == ("POST", "/submit", b'{"x": 1}')
    assert main.headers == (("Content-Type", "application/json"),)
    assert rotating.rotate == (b'{"id": 1}', b'{"id": 2}', b'{"id": 3}')
    assert not rotating.rotate_raw_requests
    assert definition.schedule == Poisson(90, 2.0, 4)
    assert definition.interval_s == 0.25 and definition.connections == 3
    assert definition.agent_loss is AgentLossPolicy.REDISTRIBUTE
    spec = definition.run_spec(1, 3)
    assert spec.workers == 2 and spec.timeout_s == 1.0 and spec.interval_s == 0.25
    assert spec.targets[1].request.rotate == [b'{"id": 1}', b'{"id": 2}', b'{"id": 3}']
    assert (spec.schedule.model, spec.schedule.seed) == ("poisson", 4)
    assert RunDefinition.from_dict(definition.to_dict()) == definition


@pytest.mark.parametrize("schedule", [
    ConstantRate(333.0, 1.7), Poisson(250.0, 2.0, 11), Ramp(10.0, 400.0, 1.5),
    Steps(((100.0, 0.5), (0.0, 0.25), (300.0, 1.0)))])
@pytest.mark.parametrize("agents", [1, 3, 7])
def test_the_shards_of_the_agents_add_up_to_the_schedule(schedule, agents):
    definition = RunDefinition((TargetDefinition("t", "http://127.0.0.1:9/"),), schedule)
    specs = [definition.run_spec(i, agents).schedule for i in range(agents)]
    assert [(s.shard_index, s.shard_count) for s in specs] == [(i, agents) for i in range(agents)]
    # What each agent rebuilds from its ScheduleSpec is its shard of the very same schedule.
    for i, spec in enumerate(specs):
        rebuilt = {"constant": lambda: ConstantRate(spec.rate, spec.duration_s),
                   "poisson": lambda: Poisson(spec.rate, spec.duration_s, spec.seed),
                   "ramp": lambda: Ramp(spec.rate, spec.end_rate, spec.duration_s),
                   "steps": lambda: Steps(tuple((s.rate, s.duration_s) for s in spec.steps)),
                   }[spec.model]()
        assert rebuilt.shard(spec.shard_index, spec.shard_count) == schedule.shard(i, agents)
    total = sum(definition.shard_requests(i, agents) for i in range(agents))
    assert total == schedule.total_count()


def test_closed_loop_concurrency_is_dealt_across_agents():
    definition = RunDefinition((TargetDefinition("t", "http://127.0.0.1:9/"),),
                               ClosedLoop(10, 2.0, 0.01))
    specs = [definition.run_spec(i, 3).schedule for i in range(3)]
    assert all(s.model == "closed" and s.concurrency == 10 for s in specs)
    assert sum(ClosedLoop(s.concurrency, s.duration_s, s.think_time_s)
               .shard(s.shard_index, s.shard_count).concurrency for s in specs) == 10


def test_bad_definitions_are_refused():
    target = TargetDefinition("t", "http://127.0.0.1:9/")
    with pytest.raises(ConfigError):
        RunDefinition((), ConstantRate(1, 1))
    with pytest.raises(ConfigError):
        RunDefinition((target, target), ConstantRate(1, 1))
    with pytest.raises(ConfigError):
        RunDefinition((target,), ConstantRate(1, 1).shard(0, 2)).run_spec(0, 1)
    with pytest.raises(ConfigError):
        RunDefinition((target,), ConstantRate(1, 1)).with_weights({"nope": 1.0})
    assert schedule_from_dict(ConstantRate(5, 1).to_dict()) == ConstantRate(5, 1)


def test_clock_offset_is_taken_from_the_fastest_round_trip():
    # The agent's clock runs 5 ms ahead; a slow ping's answer is skewed by its asymmetry.
    samples = [clock_sample(1_000_000, 1_000_000 + 5_000_000 + 300_000, 1_400_000),
               clock_sample(2_000_000, 2_000_000 + 5_000_000 + 50_000, 2_100_000),
               clock_sample(3_000_000, 3_000_000 + 5_000_000 + 900_000, 4_000_000)]
    best = best_sample(samples)
    assert best == ClockSample(offset_ns=5_000_000, rtt_ns=100_000)
    assert abs(best.offset_ns - 5_000_000) <= best.rtt_ns // 2

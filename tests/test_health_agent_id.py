"""GeneratorHealth.agent_id: the controller takes an agent's health only under that agent's own
id (or none, from an agent older than the field)."""
import pytest

from loadgate.controller.runner_reports import AgentInterval, AgentStream, HistogramLayout, \
    Rejection, RejectReason
from loadgate.proto.loadgate.v1 import common_pb2


def report(health_id):
    return common_pb2.IntervalReport(run_id="r", agent_id="a", seq=1, interval_index=0,
                                     health=common_pb2.GeneratorHealth(agent_id=health_id,
                                                                       workers=1))


@pytest.mark.parametrize("health_id", ["a", ""])
def test_health_under_the_reporting_agents_id_or_none_is_taken(health_id):
    checked = AgentStream("r", "a", ["main"], HistogramLayout()).check(report(health_id))
    assert isinstance(checked, AgentInterval) and checked.health.agent_id == health_id


def test_health_naming_another_agent_is_refused():
    checked = AgentStream("r", "a", ["main"], HistogramLayout()).check(report("b"))
    assert isinstance(checked, Rejection) and checked.reason is RejectReason.WRONG_AGENT
    assert "'b'" in checked.message

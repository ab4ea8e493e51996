"""Shared pieces of the controller service tests (no tests here).

``Bench`` is a real setup on loopback: two ``loadgate target`` processes (baseline and
canary, lognormal latency around 4 ms), one ``loadgate agent`` process, and a Controller
service serving over real gRPC.  ``plan_text`` writes a short canary plan against those
targets (about 7 s of wall time: a 3 s performance window, two 1 s canary steps, 1 s of
post-deploy monitoring).  Its latency gate is loose (p95 < 10 s): these tests are about the
service, and a loaded machine must not turn them into tests of its scheduler.
``journal_transitions`` reads the run's journal back, so tests compare what watchers saw
with what the run recorded; ``synthetic_sources`` measures with the readiness tests'
SyntheticSource instead of the agent, for runs about approvals.
"""
import json
import os
import textwrap
import time

import grpc

from agent_helpers import start_agent
from loadgate.controller.service import ControllerService
from loadgate.controller.service_server import start_server
from loadgate.controller.service_runs import AgentSources
from loadgate.native.target import start_target_process, stop_target_process
from loadgate.proto.loadgate.v1 import controller_pb2, controller_pb2_grpc
from test_readiness_support import Profile, SyntheticSource

TARGET_ARGS = {"baseline": ["--latency", "lognormal:4ms:0.3", "--seed", "1"],
               "canary": ["--latency", "lognormal:4ms:0.3", "--seed", "2"]}
RUN_TIMEOUT_S = 90

# Loosened with overrides: targets, agent and controller share two cores, windows are short.
SATURATED_NODE = ", saturation: {cpu: 100%}, throughput: {min_ratio: 50%}"
HIGH_RISK = """\
    overrides:
      - key: monitoring.post_deploy_window
        reason: test bench
      - key: canary.steps
        reason: test bench
      - key: canary.hold
        reason: test bench
      - key: gates.saturation.cpu
        reason: targets, agent and controller share this node's two cores
      - key: gates.throughput.min_ratio
        reason: a 3 s window is too short to claim 95 % within counting error
      - key: gates.latency.p95
        reason: the service is under test here, not this machine's scheduler
    approval:
      approvers: [alice]
    """


def plan_text(baseline_url, canary_url, risk="LOW", extra="", rate=400, gates=""):
    """A short canary plan (see the module docstring); ``gates`` extends the gates mapping."""
    return textwrap.dedent(f"""\
        apiVersion: loadgate/v1
        deployment:
          id: DEPLOY-WATCH-1
          type: FEATURE
          risk: {risk}
          environment: DEV
          strategy: CANARY
        targets:
          - {{name: baseline, url: "{baseline_url}", role: baseline}}
          - {{name: canary, url: "{canary_url}", role: canary, weight: 0}}
        load:
          rate: {rate}
          duration: 3s
          connections: 8
          interval: 250ms
          timeout: 2s
        gates: {{latency: {{p95: 10s}}{gates}}}
        canary:
          steps: [50, 100]
          hold: 1s
          max_hold: 10s
        monitoring:
          post_deploy_window: 1s
        """) + textwrap.dedent(extra)


def high_risk_plan_text(baseline_url, canary_url):
    """A HIGH-risk plan (manual approval by alice) that runs as fast as the LOW one."""
    return plan_text(baseline_url, canary_url, risk="HIGH", extra=HIGH_RISK,
                     gates=SATURATED_NODE, rate=200)


class Bench:
    """``fake_nvml`` (a tests/fake_nvml.py spec) gives the agent GPUs to report."""

    def __init__(self, fake_nvml=None):
        self.targets = {}
        self.agent = None
        try:
            for name, args in TARGET_ARGS.items():
                self.targets[name] = start_target_process(args)
            self.agent = start_agent(["--workers", "1"], fake_nvml=fake_nvml)
        except BaseException:
            self.close()
            raise

    def url(self, name):
        _, host, port = self.targets[name][:3]
        return f"http://{host}:{port}"

    def plan_text(self, **options):
        """plan_text against this bench's targets."""
        return plan_text(self.url("baseline"), self.url("canary"), **options)

    def high_risk_plan_text(self):
        return high_risk_plan_text(self.url("baseline"), self.url("canary"))

    def service(self, runs_dir, **options):
        return ControllerService(runs_dir, AgentSources([self.agent.address]), **options)

    def close(self):
        if self.agent is not None:
            self.agent.stop()
        for process in self.targets.values():
            stop_target_process(process[0])


class Served:
    """A ControllerService on a real gRPC server, with a client stub."""

    def __init__(self, service, **server_options):
        self.service = service
        self.server = start_server(service, "127.0.0.1:0", **server_options)
        self.channels = []
        self.stub = self.new_stub()

    @property
    def address(self):
        return self.server.address

    def new_stub(self, options=()):
        channel = grpc.insecure_channel(self.address, options=list(options))
        self.channels.append(channel)
        return controller_pb2_grpc.ControllerStub(channel)

    def submit(self, text, name="plan.yaml"):
        return self.stub.SubmitPlan(controller_pb2.SubmitPlanRequest(plan_yaml=text,
                                                                     plan_name=name))

    def close(self):
        for channel in self.channels:
            channel.close()
        self.server.stop()


# Never dialled: synthetic runs measure without connecting to their targets.
SYNTHETIC_URLS = ("http://127.0.0.1:9/baseline", "http://127.0.0.1:9/canary")


def synthetic_sources(plan, run_dir):
    """A service source factory for runs whose point is the approval, not the measurement:
    the readiness tests' SyntheticSource on the wall clock (real HDR histograms of lognormal
    latencies around 4 ms, node CPU at 35 %), so HIGH risk's node-CPU gate judges a fixed
    figure rather than whatever else this shared machine runs."""
    profiles = {target.name: Profile(median_us=4000.0) for target in plan.targets}
    return SyntheticSource(time.time, profiles, cpu_percent=35.0), _nothing


def _nothing():
    return None


def journal_records(run_dir):
    """Every record of a run's readiness journal, in order."""
    with open(os.path.join(run_dir, "journal.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def journal_transitions(run_dir):
    """[(seq, record)] of the transitions in a run's journal; seq is the line number."""
    return [(seq, r) for seq, r in enumerate(journal_records(run_dir), 1)
            if r["kind"] == "transition"]

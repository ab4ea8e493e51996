"""The plan format (``apiVersion: loadgate/v1``): the single source of truth.

The validator and the published JSON Schema (controller/schema/plan.schema.json) are both
derived from PLAN_SPEC; ``python -m loadgate.controller.plan_format`` prints the schema.
"""
import json
import sys

from loadgate.controller.plan_model import (
    AgentLossPolicy, Arrival, DeploymentType, Environment, HttpMethod, RelativeTest, Risk,
    RotateMode, Strategy, TargetRole, TrafficShift)
from loadgate.controller.plan_spec import (
    Field, boolean, choice, duration, integer, json_schema, listof, mapping, number, percent,
    size, string, struct)

API_VERSION = "loadgate/v1"

HOOK = struct(
    "A command or webhook run on the controller only, from this local plan.",
    Field("command", listof(string(), "argv; {weight} (canary percent), {batch}, "
                                      "{instances_updated} are replaced and set as "
                                      "LOADGATE_WEIGHT etc.", min_items=1)),
    Field("webhook", string("URL that receives a JSON POST with the weight",
                            pattern=r"^https?://")),
    Field("timeout", duration("how long the hook may run", positive=True)),
)

REQUEST = struct(
    "The request template sent to a target.",
    Field("method", choice(HttpMethod)),
    Field("path", string("request path", pattern=r"^/")),
    Field("headers", mapping("header", string())),
    Field("body", string("request body (UTF-8)")),
    Field("rotate_file", string("file of bodies or full requests rotated per request")),
    Field("rotate_mode", choice(RotateMode)),
)

TARGET = struct(
    "A system under test.",
    Field("name", string(pattern=r"^[A-Za-z0-9_.-]+$"), required=True),
    Field("url", string("http:// or https:// base URL", pattern=r"^https?://[^/\s]+"),
          required=True),
    Field("role", choice(TargetRole, "baseline and canary are compared under the same load")),
    Field("weight", number("share of the traffic when no canary ramp drives it", minimum=0)),
    Field("request", REQUEST),
)

LOAD = struct(
    "The offered load (open loop unless arrival is closed).",
    Field("rate", number("requests per second", minimum=0, exclusive_minimum=True)),
    Field("duration", duration("length of the performance test", positive=True)),
    Field("arrival", choice(Arrival)),
    Field("seed", integer("Poisson seed", minimum=0)),
    Field("connections", integer(minimum=1)),
    Field("max_connections", integer(minimum=1)),
    Field("timeout", duration("request timeout", positive=True)),
    Field("interval", duration("report interval", positive=True)),
    Field("warmup", duration("excluded from gates")),
    Field("concurrency", integer("closed loop only", minimum=1)),
    Field("think_time", duration("closed loop only")),
    Field("ramp_to", number("ramp arrival: final rate", minimum=0, exclusive_minimum=True)),
    Field("steps", listof(struct(
        "one step of a steps arrival",
        Field("rate", number(minimum=0, exclusive_minimum=True), required=True),
        Field("duration", duration(positive=True), required=True)))),
)

SATURATION = struct(
    "Resource saturation limits (the p95 of the telemetry samples of a window).",
    Field("cpu", percent("CPU utilisation")),
    Field("gpu_utilization", percent("GPU utilisation")),
    Field("sm_activity", percent("SM activity (GPM)")),
    Field("gpu_memory", percent("GPU memory used / total")),
)

RELATIVE = struct(
    "Canary against baseline, measured in the same window under the same load.",
    Field("test", choice(RelativeTest, "two-sample test on the full latency distributions")),
    Field("alpha", percent("significance level of the test", positive=True)),
    Field("min_effect", percent("smallest shift worth failing for: P(canary > baseline) "
                                "above 50% by this many points")),
    Field("ratios", mapping("percentile", number("canary / baseline limit", minimum=1))),
)

GATES = struct(
    "Pass/fail criteria, evaluated per window (per canary step).",
    Field("confidence", percent("confidence a percentile claim must reach", positive=True)),
    Field("latency", mapping("percentile", duration("upper limit", positive=True))),
    Field("error_rate", percent("upper limit on failed / total requests")),
    Field("throughput", struct(
        "lower limits on the achieved rate",
        Field("min_rps", number(minimum=0)),
        Field("min_ratio", percent("achieved / intended rate")))),
    Field("saturation", SATURATION),
    Field("relative", RELATIVE),
)

KNEE = struct(
    "Find the knee: raise the rate step by step until the latency and error-rate gates fail.",
    Field("start", number("first rate, requests per second", minimum=0, exclusive_minimum=True),
          required=True),
    Field("step", number("rate added per step", minimum=0, exclusive_minimum=True),
          required=True),
    Field("max", number("highest rate tried", minimum=0, exclusive_minimum=True),
          required=True),
    Field("window", duration("length of each step's window", positive=True)),
)

CANARY = struct(
    "The canary ramp.",
    Field("steps", listof(percent("canary weight", positive=True), min_items=1)),
    Field("hold", duration("minimum time at each step", positive=True)),
    Field("max_hold", duration("give up as inconclusive after", positive=True)),
    Field("traffic", choice(TrafficShift, "split: the agents split the traffic; hook: the "
                                          "traffic_shift hook moves a real router")),
)

HOOKS = struct(
    "Commands or webhooks for the deployment strategy.",
    Field("traffic_shift", HOOK),
    Field("rollback", HOOK),
    Field("switch", HOOK),
    Field("verify_switch", HOOK),
    Field("instance_step", HOOK),
)

INFRASTRUCTURE = struct(
    "What the nodes and network must offer.",
    Field("gpu", struct("", Field("type", string()), Field("count", integer(minimum=0)),
                        Field("memory", size("per GPU")))),
    Field("cpu", struct("", Field("cores", integer(minimum=1)), Field("memory", size()))),
    Field("network", struct("", Field("rtt_p95", duration("p95 round trip to each target",
                                                          positive=True)))),
)

MONITORING = struct(
    "Monitoring evidence: files and endpoints that must exist before deploying.",
    Field("alert_rules", string("Prometheus alert-rules file")),
    Field("dashboard", string("Grafana dashboard JSON")),
    Field("metrics_url", string(pattern=r"^https?://")),
    Field("alert_interval", duration(positive=True)),
    Field("post_deploy_window", duration("monitoring after deployment")),
    Field("smoke", boolean("run a short smoke load before the performance test")),
)

ROLLBACK = struct(
    "How to go back.",
    Field("strategy", string()),
    Field("rto", duration("recovery time objective", positive=True)),
    Field("script", string("rollback script (required for MIGRATION)")),
    Field("procedure", string()),
    Field("tested_in_staging", boolean()),
)

PLAN_SPEC = struct(
    "A loadgate deployment-readiness plan.",
    Field("apiVersion", string(pattern=r"^loadgate/v1$"), required=True),
    Field("deployment", struct(
        "What is deployed and how it is classified.",
        Field("id", string(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"), required=True),
        Field("type", choice(DeploymentType), required=True),
        Field("risk", choice(Risk), required=True),
        Field("environment", choice(Environment), required=True),
        Field("strategy", choice(Strategy), required=True),
        Field("requested_by", string()),
        Field("description", string())), required=True),
    Field("targets", listof(TARGET, min_items=1), required=True),
    Field("load", LOAD, required=True),
    Field("knee", KNEE),
    Field("agents", listof(string("host:port", pattern=r"^[^\s:]+:\d+$"))),
    Field("local_agents", integer(minimum=1)),
    Field("agent_loss", choice(AgentLossPolicy)),
    Field("gates", GATES),
    Field("canary", CANARY),
    Field("rolling", struct("Instance-by-instance update.",
                            Field("instances", integer(minimum=1)),
                            Field("batch_size", integer(minimum=1)),
                            Field("min_available", percent()))),
    Field("hooks", HOOKS),
    Field("infrastructure", INFRASTRUCTURE),
    Field("monitoring", MONITORING),
    Field("rollback", ROLLBACK),
    Field("approval", struct("Manual approval.",
                             Field("required", boolean()),
                             Field("approvers", listof(string())))),
    Field("overrides", listof(struct(
        "An explicit, reported loosening of a classification default.",
        Field("key", string("dotted key path, e.g. monitoring.post_deploy_window"),
              required=True),
        Field("reason", string(), required=True)))),
    Field("downtime_window", struct("Declared downtime (required for BIG-BANG).",
                                    Field("start", string("ISO 8601 time"), required=True),
                                    Field("end", string("ISO 8601 time"), required=True))),
    Field("staging_evidence", string("verdict.json or run directory of the passed STAGING "
                                     "run of the same deployment id")),
)


def plan_json_schema():
    """The published JSON Schema of the plan format."""
    return json_schema(PLAN_SPEC, title="loadgate plan (apiVersion loadgate/v1)")


if __name__ == "__main__":
    json.dump(plan_json_schema(), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")

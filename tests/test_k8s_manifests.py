"""deploy/k8s: every manifest valid against the Kubernetes schemas (offline, strict), and the
security properties the design depends on hold."""
import argparse
import importlib
import os
import re
import subprocess

import pytest
import yaml

from loadgate.agent.safety import Allowlist
from loadgate.controller.discovery import split_host_port
from loadgate.controller.plan import parse_plan

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (the schemas) is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_DIR = os.path.join(ROOT, "deploy", "k8s")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "loadgate"
AGENT_LABELS = {"app.kubernetes.io/name": "loadgate", "app.kubernetes.io/component": "agent"}
CONTROLLER_LABELS = {"app.kubernetes.io/name": "loadgate",
                     "app.kubernetes.io/component": "controller"}
READ_VERBS = {"get", "list", "watch"}


def load_documents():
    documents = []
    for name in sorted(os.listdir(K8S_DIR)):
        if name.endswith(".yaml"):
            with open(os.path.join(K8S_DIR, name)) as handle:
                documents += [(name, doc) for doc in yaml.safe_load_all(handle) if doc]
    return documents


DOCUMENTS = load_documents()


def the(kind, name=None):
    found = [doc for _, doc in DOCUMENTS
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def every(kind):
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def selects(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def pod_specs():
    for kind in ("DaemonSet", "Deployment", "Job"):
        for doc in every(kind):
            yield doc, doc["spec"]["template"]


@pytest.mark.parametrize("source,document", DOCUMENTS,
                         ids=[f"{s}:{d['kind']}/{d['metadata']['name']}" for s, d in DOCUMENTS])
def test_manifest_is_valid_against_the_kubernetes_schema(source, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    if document["kind"] != "Namespace":
        assert document["metadata"]["namespace"] == NAMESPACE


def test_schema_validation_catches_a_typo():
    broken = yaml.safe_load(yaml.safe_dump(the("DaemonSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpcc"] = \
        broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_agents_run_on_every_gpu_node_without_host_network():
    daemonset = the("DaemonSet", "loadgate-agent")
    spec = daemonset["spec"]["template"]["spec"]
    assert selects(daemonset["spec"]["selector"]["matchLabels"],
                   daemonset["spec"]["template"]["metadata"]["labels"])
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
               for t in spec["tolerations"])
    assert spec["hostNetwork"] is False
    container, = spec["containers"]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_probes_ask_the_grpc_health_service_on_the_served_port():
    for owner, template in pod_specs():
        if owner["kind"] == "Job":
            continue
        for container in template["spec"]["containers"]:
            ports = {p["containerPort"] for p in container["ports"] if p["name"] == "grpc"}
            for probe in ("readinessProbe", "livenessProbe"):
                assert set(container[probe]) & {"grpc", "httpGet", "exec", "tcpSocket"} == \
                    {"grpc"}, (owner["metadata"]["name"], probe)
                assert container[probe]["grpc"]["port"] in ports
                # The empty service name is the server's overall health.
                assert container[probe]["grpc"].get("service", "") == ""


def test_every_pod_runs_unprivileged_as_the_image_user():
    with open(DOCKERFILE) as handle:
        user = re.search(r"^USER (\d+):(\d+)$", handle.read(), re.M)
    assert user, "the image must switch to a numeric non-root user"
    for owner, template in pod_specs():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == int(user.group(1))
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "privileged" not in context
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "a read-only root needs a /tmp"


def test_network_policy_admits_only_the_controller_to_the_agents_grpc_port():
    policy = the("NetworkPolicy")
    agent_template = the("DaemonSet")["spec"]["template"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"],
                   agent_template["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    controller_pods = [t["metadata"]["labels"] for o, t in pod_specs()
                       if o["kind"] in ("Deployment", "Job")]
    grpc_rules = [rule for rule in policy["spec"]["ingress"]
                  if any(port["port"] in ("grpc", 50051) for port in rule.get("ports", ()))]
    assert grpc_rules
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and rule.get("ports"), "a rule without from/ports admits all"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
    for rule in grpc_rules:
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "gRPC is for controller pods only"
            selector = peer["podSelector"]["matchLabels"]
            assert selector == CONTROLLER_LABELS
            assert all(selects(selector, labels) for labels in controller_pods)
            assert not selects(selector, agent_template["metadata"]["labels"])
    for rule in policy["spec"]["ingress"]:
        if rule not in grpc_rules:
            assert [port["port"] for port in rule["ports"]] == ["metrics"]


def test_headless_service_lists_agents_and_the_controller_dials_it():
    service = the("Service", "loadgate-agents")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == AGENT_LABELS
    grpc_port, = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    expected = f"dns:///loadgate-agents.{NAMESPACE}.svc.cluster.local:{grpc_port}"
    for owner, template in pod_specs():
        if owner["kind"] == "DaemonSet":
            continue
        args = template["spec"]["containers"][0]["args"]
        assert args[args.index("--agents") + 1] == expected, owner["metadata"]["name"]
    host, port = split_host_port(expected[len("dns:///"):])
    assert (host, port) == (f"loadgate-agents.{NAMESPACE}.svc.cluster.local", grpc_port)


def test_controller_service_selects_only_the_serving_controller():
    service = the("Service", "loadgate-controller")
    deployment = the("Deployment", "loadgate-controller")
    job = the("Job", "loadgate-run")
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert not selects(service["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"])
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert job["spec"]["backoffLimit"] == 0


def test_rbac_is_least_privilege():
    assert not every("ClusterRole") and not every("ClusterRoleBinding")
    role = the("Role", "loadgate-controller")
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= READ_VERBS
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]
    binding = the("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert [s["name"] for s in binding["subjects"]] == ["loadgate-controller"]
    agent_account = the("ServiceAccount", "loadgate-agent")
    assert agent_account["automountServiceAccountToken"] is False
    assert all(s["name"] != "loadgate-agent" for b in every("RoleBinding") for s in b["subjects"])


def test_agents_get_only_the_token_and_their_config():
    spec = the("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    secrets = [v["secret"] for v in volumes.values() if "secret" in v]
    assert secrets and all([i["key"] for i in s["items"]] == ["token"] for s in secrets)
    assert volumes["config"]["configMap"]["name"] == the("ConfigMap", "loadgate-agent-config")[
        "metadata"]["name"]


def agent_argv(tmp_path):
    """The argv the DaemonSet's shell hands to ``loadgate``, computed by running that shell
    script with the ConfigMap's files and a ``loadgate`` that prints its arguments."""
    container = the("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    config = the("ConfigMap", "loadgate-agent-config")["data"]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for key, value in config.items():
        (config_dir / key).write_text(value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    printer = bin_dir / "loadgate"
    printer.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    printer.chmod(0o755)
    script = container["args"][0].replace("/etc/loadgate/agent", str(config_dir))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NODE_NAME": "gpu-node-1"}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True,
                            timeout=30, check=True)
    return result.stdout.splitlines()


def parse_with_the_real_cli(argv):
    module_name = {"agent": "loadgate.agent.main", "run": "loadgate.controller.run_cli",
                   "controller": "loadgate.controller.service_cli"}[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="loadgate", exit_on_error=False)
    module.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_agent_command_line_parses_and_admits_the_plan_targets(tmp_path):
    argv = agent_argv(tmp_path)
    args = parse_with_the_real_cli(argv)
    assert args.listen == "0.0.0.0:50051" and args.agent_id == "gpu-node-1"
    assert args.token_file == "/etc/loadgate/credentials/token"
    assert args.metrics_port == 9100 and args.max_rate == 20000
    assert not args.insecure
    allowlist = Allowlist(args.allow)
    plan = parse_plan(the("ConfigMap", "loadgate-plan")["data"]["plan.yaml"], "plan.yaml")
    for target in plan.targets:
        allowlist.check_url(target.url)


@pytest.mark.parametrize("kind", ["Job", "Deployment"])
def test_controller_command_lines_parse(kind):
    template = every(kind)[0]["spec"]["template"]
    args = parse_with_the_real_cli(template["spec"]["containers"][0]["args"])
    assert args.token_file == "/etc/loadgate/credentials/token"
    if kind == "Job":
        mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert os.path.dirname(args.plan) in mounts


def test_dockerfile_builds_from_slim_python_and_runs_unprivileged():
    with open(DOCKERFILE) as handle:
        text = handle.read()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages and all(image == "python:3.11-slim" for image in stages)
    assert re.search(r"^RUN pip install [^\n]*\s\.$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    last_stage = text[text.rindex("FROM "):]
    assert "gcc" not in last_stage, "the compiler stays in the build stage"
    assert re.search(r'^ENTRYPOINT \["loadgate"\]', text, re.M)

"""Static checks of collector-config/: every file parses and is wired the way its README says.

The collector binaries are not run here (the rotel configuration and the systemd unit are run
in tests/e2e/); these tests catch the mistakes that only show up on a user's cluster: a
pipeline naming a component the file never defines, a privileged pod, a Dockerfile that
copies a path that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "collector-config"
OTELCOL = CONFIG / "otelcol"
KUBERNETES = CONFIG / "kubernetes"
DASHBOARD = CONFIG / "grafana" / "bpf-programs.json"
UNIT = CONFIG / "systemd" / "bpftop-otel.service"
DOCKERFILE = CONFIG / "Dockerfile"

# The capabilities the README and the comments in the manifests justify, one by one.
DOCUMENTED_CAPABILITIES = {"SYS_ADMIN", "BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"}
COMPONENT_KINDS = ("receivers", "processors", "exporters", "connectors")


def yaml_files() -> list[Path]:
    return sorted([*CONFIG.rglob("*.yaml"), *CONFIG.rglob("*.yml")])


def collector_configs() -> list[Path]:
    return sorted(OTELCOL.glob("*.yaml"))


def load_all(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a nested YAML/JSON structure."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_collector_config_has_every_kind_of_file() -> None:
    names = {p.relative_to(CONFIG).as_posix() for p in CONFIG.rglob("*") if p.is_file()}
    for expected in (
        "README.md",
        "Dockerfile",
        "otelcol/agent.yaml",
        "otelcol/agent-debug.yaml",
        "otelcol/prometheus.yaml",
        "otelcol/gateway.yaml",
        "prometheus/prometheus.yml",
        "rotel/agent.env",
        "rotel/debug.env",
        "kubernetes/daemonset.yaml",
        "kubernetes/daemonset-with-collector-sidecar.yaml",
        "systemd/bpftop-otel.service",
        "systemd/bpftop-otel.env",
        "grafana/bpf-programs.json",
    ):
        assert expected in names, f"collector-config/{expected} is missing"


def test_readme_mentions_every_file() -> None:
    readme = (CONFIG / "README.md").read_text()
    for path in CONFIG.rglob("*"):
        if path.is_file() and path.name != "README.md":
            rel = path.relative_to(CONFIG).as_posix()
            assert f"`{rel}`" in readme, f"collector-config/README.md does not describe {rel}"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(CONFIG).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_json_parses() -> None:
    files = sorted(CONFIG.rglob("*.json"))
    assert files
    for path in files:
        assert isinstance(json.loads(path.read_text()), dict), path


@pytest.mark.parametrize(
    "path", collector_configs(), ids=lambda p: p.relative_to(CONFIG).as_posix()
)
def test_pipelines_reference_only_defined_components(path: Path) -> None:
    (config,) = load_all(path)
    defined = {kind: set(config.get(kind) or {}) for kind in COMPONENT_KINDS}
    pipelines = config["service"]["pipelines"]
    assert pipelines, f"{path.name}: no pipeline"
    for pipeline_id, pipeline in pipelines.items():
        assert pipeline_id.split("/")[0] in ("metrics", "traces", "logs"), pipeline_id
        for kind in ("receivers", "processors", "exporters"):
            for ref in pipeline.get(kind, []):
                known = defined[kind] | defined["connectors"]
                assert ref in known, f"{path.name}: pipeline {pipeline_id} uses undefined {ref!r}"
        assert pipeline["receivers"] and pipeline["exporters"], pipeline_id
    for extension in config["service"].get("extensions", []):
        assert extension in (config.get("extensions") or {}), extension


@pytest.mark.parametrize(
    "path", collector_configs(), ids=lambda p: p.relative_to(CONFIG).as_posix()
)
def test_every_defined_component_is_used(path: Path) -> None:
    """Exporters kept as a documented alternative (otlphttp/gateway) are the one exception."""
    (config,) = load_all(path)
    pipelines = config["service"]["pipelines"].values()
    for kind in ("receivers", "processors"):
        used = {ref for p in pipelines for ref in p.get(kind, [])}
        assert set(config.get(kind) or {}) == used, f"{path.name}: unused {kind}"
    used_exporters = {ref for p in pipelines for ref in p.get("exporters", [])}
    unused = set(config["exporters"]) - used_exporters
    assert unused <= {"otlphttp/gateway"}, f"{path.name}: unused exporters {unused}"


@pytest.mark.parametrize(
    "path", collector_configs(), ids=lambda p: p.relative_to(CONFIG).as_posix()
)
def test_memory_limiter_first_then_batch(path: Path) -> None:
    (config,) = load_all(path)
    for pipeline_id, pipeline in config["service"]["pipelines"].items():
        processors = [p.split("/")[0] for p in pipeline["processors"]]
        assert processors[0] == "memory_limiter", pipeline_id
        assert "batch" in processors, pipeline_id


@pytest.mark.parametrize(
    "name", ["agent.yaml", "agent-debug.yaml", "prometheus.yaml"], ids=lambda n: n
)
def test_single_host_collectors_listen_on_loopback_only(name: str) -> None:
    (config,) = load_all(OTELCOL / name)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert {p["endpoint"] for p in protocols.values()} == {"127.0.0.1:4317", "127.0.0.1:4318"}


def test_gateway_fans_out_to_several_backends_with_tls() -> None:
    (config,) = load_all(OTELCOL / "gateway.yaml")
    (pipeline,) = config["service"]["pipelines"].values()
    assert len(pipeline["exporters"]) >= 2
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        assert protocol["endpoint"].startswith("0.0.0.0:")
        assert protocol["tls"]["cert_file"] and protocol["tls"]["key_file"]


def test_debug_variant_prints_detailed_data_points() -> None:
    (config,) = load_all(OTELCOL / "agent-debug.yaml")
    assert config["exporters"]["debug"]["verbosity"] == "detailed"
    assert "logging" not in config["exporters"]  # removed from the Collector in v0.111


def test_prometheus_collectors_align_unit_one_names() -> None:
    """Without the transform, the collector would export ..._ratio and the dashboard breaks."""
    for name in ("prometheus.yaml", "gateway.yaml"):
        (config,) = load_all(OTELCOL / name)
        (pipeline,) = config["service"]["pipelines"].values()
        assert "transform/bpf_prometheus_names" in pipeline["processors"], name
        statements = config["processors"]["transform/bpf_prometheus_names"]["metric_statements"]
        assert 'metric.unit == "1"' in statements[0]["statements"][0]


def test_env_substitution_uses_the_env_provider_syntax() -> None:
    """``$VAR`` and ``${VAR}`` without ``env:`` are deprecated in the Collector."""
    for path in collector_configs():
        text = path.read_text()
        for match in re.finditer(r"\$\{([^}]*)\}", text):
            assert match.group(1).startswith("env:"), f"{path.name}: {match.group(0)}"


def kubernetes_docs(name: str) -> list[dict[str, Any]]:
    return load_all(KUBERNETES / name)


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (daemonset,) = [d for d in docs if d["kind"] == "DaemonSet"]
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize(
    "name", ["daemonset.yaml", "daemonset-with-collector-sidecar.yaml"], ids=lambda n: n
)
def test_daemonset_least_privilege(name: str) -> None:
    docs = kubernetes_docs(name)
    for key, value in walk(docs):
        assert not (key == "privileged" and value is True), f"{name}: privileged: true"
        assert not (key == "hostNetwork" and value is True), f"{name}: hostNetwork"
    spec = pod_spec(docs)
    assert spec["hostPID"] is True, "owner lookup needs the host's processes in /proc"
    assert spec["automountServiceAccountToken"] is False
    (bpftop,) = [c for c in spec["containers"] if c["name"] == "bpftop-otel"]
    context = bpftop["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    added = set(context["capabilities"]["add"])
    assert "SYS_ADMIN" in added, "BPF_PROG_GET_NEXT_ID and BPF_ENABLE_STATS need CAP_SYS_ADMIN"
    assert added <= DOCUMENTED_CAPABILITIES, added - DOCUMENTED_CAPABILITIES
    text = (KUBERNETES / "daemonset.yaml").read_text()
    for capability in added:
        assert re.search(rf"^#\s+{capability}\s", text, re.MULTILINE), (
            f"daemonset.yaml does not explain {capability}"
        )
    for container in all_containers(spec):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", container["name"]
        assert "ALL" in ctx["capabilities"]["drop"], container["name"]
        assert container["resources"]["limits"]["memory"], container["name"]
        assert container["resources"]["requests"]["cpu"], container["name"]
    host_paths = {v["name"] for v in spec["volumes"] if "hostPath" in v}
    for container in all_containers(spec):
        for mount in container.get("volumeMounts", []):
            if mount["name"] in host_paths:
                assert mount.get("readOnly") is True, f"{name}: {mount['name']} is writable"


def test_sidecar_runs_the_agent_config_without_capabilities() -> None:
    docs = kubernetes_docs("daemonset-with-collector-sidecar.yaml")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    embedded = yaml.safe_load(config_map["data"]["agent.yaml"])
    assert embedded == load_all(OTELCOL / "agent.yaml")[0], "sidecar config drifted from agent"
    spec = pod_spec(docs)
    (collector,) = spec["initContainers"]
    assert collector["restartPolicy"] == "Always"  # a native sidecar
    assert "add" not in collector["securityContext"]["capabilities"]
    assert collector["securityContext"]["runAsNonRoot"] is True
    (bpftop,) = spec["containers"]
    assert "--endpoint=http://127.0.0.1:4317" in bpftop["args"]


def unit_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_systemd_unit_capabilities_match_the_daemonset() -> None:
    directives = unit_directives(UNIT.read_text())
    (bounding,) = directives["CapabilityBoundingSet"]
    (ambient,) = directives["AmbientCapabilities"]
    assert bounding.split() == ambient.split()
    spec = pod_spec(kubernetes_docs("daemonset.yaml"))
    added = set(spec["containers"][0]["securityContext"]["capabilities"]["add"])
    assert {c.removeprefix("CAP_") for c in bounding.split()} == added
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables"):
        assert directives[option] == ["yes"], option
    assert directives["ProtectSystem"] == ["strict"]
    assert directives["ProtectHome"] == ["yes"]
    assert "bpf" in directives["SystemCallFilter"][0].split()
    assert directives["RestrictAddressFamilies"][0].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    pairs = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        pairs.append((instruction.upper(), args.strip()))
    return pairs


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    known = {
        "ARG", "FROM", "WORKDIR", "COPY", "RUN", "LABEL", "ENV", "USER", "EXPOSE",
        "STOPSIGNAL", "ENTRYPOINT", "CMD",
    }  # fmt: skip
    assert {i for i, _ in instructions} <= known
    first = next(i for i, _ in instructions if i != "ARG")
    assert first == "FROM", "only ARG may come before the first FROM"
    stages = [args for i, args in instructions if i == "FROM"]
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim\b", s) for s in stages), stages
    final = instructions[max(n for n, (i, _) in enumerate(instructions) if i == "FROM") :]
    final_kinds = [i for i, _ in final]
    assert final_kinds.count("ENTRYPOINT") == 1 and final_kinds.count("USER") == 1
    entrypoint = json.loads(dict(final)["ENTRYPOINT"])
    assert entrypoint == ["bpftop-otel"], "exec form, so SIGTERM reaches bpftop-otel"
    assert isinstance(json.loads(dict(final)["CMD"]), list)
    assert any("pip install" in args and "otel-bpf" in args for i, args in final if i == "RUN")
    for instruction, args in instructions:
        if instruction == "COPY" and not args.startswith("--from="):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key == key.strip() and value == value.strip(), line
            assert not value.startswith(("'", '"')), f"{path.name}: quotes are kept literally"
            values[key] = value
    return values


def rotel_agent() -> str | None:
    path = os.environ.get("ROTEL_AGENT")
    if path:
        return path
    try:
        import rotel
    except ImportError:
        return None
    candidate = Path(rotel.__file__).parent / "rotel-agent"
    return str(candidate) if candidate.exists() else None


@pytest.mark.parametrize("name", ["agent.env", "debug.env"])
def test_rotel_env_files_use_only_known_variables(name: str) -> None:
    values = env_file(CONFIG / "rotel" / name)
    assert all(key.startswith("ROTEL_") for key in values)
    agent = rotel_agent()
    if agent is None:
        pytest.skip("rotel is not installed (pip install rotel)")
    help_text = subprocess.run(
        [agent, "start", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    known = set(re.findall(r"\[env: (ROTEL_[A-Z0-9_]+)=", help_text))
    assert known, "rotel-agent start --help lists no environment variables"
    assert set(values) <= known, f"unknown to rotel-agent: {set(values) - known}"


def test_systemd_env_file_format() -> None:
    values = env_file(CONFIG / "systemd" / "bpftop-otel.env")
    assert all(key.startswith("OTEL_") for key in values)


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(CONFIG / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    text = DASHBOARD.read_text()
    for used in set(re.findall(r"\$\{?([a-z_]+)", text)):
        assert used in variables or used.startswith("__"), f"undefined variable ${used}"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("cpu", "events per second", "average run time", "by type", "stats"):
        assert topic in titles, topic


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana variables filled in)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    substitutions = {"$__rate_interval": "1m", "$topk": "10", "$instance": ".*"}
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        # A "$1" in a string is label_replace's capture group, not a Grafana variable.
        assert "$" not in re.sub(r'"[^"]*"', "", expr), expr
        rules.append({"record": f"dashboard:query{n}", "expr": expr})
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""deploy/kubernetes/, the Dockerfile and their lock files, checked without a cluster.

No Kubernetes API server or Docker engine runs here, so every manifest is validated
against the Kubernetes OpenAPI schemas that the `kubernetes-validate` package ships
(offline), and the rules a cluster would enforce at admission (Pod Security
"restricted", selectors that must meet, ports that must agree) are checked directly.
KEDA's ScaledObject is a CRD with no bundled schema: it is checked against
`SCALED_OBJECT_SCHEMA` below, a JSON schema written here from KEDA's documented fields.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from siesta.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests promise to work with, and the newest schema shipped."""
K8S_VERSION = K8S_VERSIONS[0]

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    # Written from KEDA's ScaledObject spec (keda.sh/docs, "Scaling Deployments") and its
    # External Scaler docs (trigger types external / external-push: scalerAddress
    # required, other metadata passed through to the scaler as strings).
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                        "if": {"properties": {"type": {"enum": ["external", "external-push"]}}},
                        "then": {
                            "properties": {
                                "metadata": {
                                    "required": ["scalerAddress"],
                                    "properties": {
                                        "scalerAddress": {
                                            "type": "string",
                                            "pattern": r"^[A-Za-z0-9.-]+:\d+$",
                                        }
                                    },
                                }
                            }
                        },
                    },
                },
            },
        },
    },
}

CUSTOM_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SCHEMA}
NOT_KUBERNETES = {"Kustomization"}  # kustomize's own file, not applied to the cluster
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def _manifest_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _all() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _manifest_files() for doc in _documents(path)]


def _resources(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _all() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in _resources(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _ids(items: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return [f"{p.relative_to(DEPLOY)}:{d['kind']}/{d['metadata']['name']}" for p, d in items]


RESOURCES = [(p, d) for p, d in _all() if d["kind"] not in NOT_KUBERNETES]
WORKLOADS = [(p, d) for p, d in RESOURCES if d["kind"] in POD_KINDS]


def _siesta_config() -> Any:
    data = _one("ConfigMap", "siesta-config")["data"]["siesta.yaml"]
    return parse_config(data, source="configmap.yaml:siesta.yaml", base_dir=Path("/etc/siesta"))


def test_the_schemas_ship_with_the_package() -> None:
    # Validation must not need the network: the schemas are files inside the package.
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for version in K8S_VERSIONS:
        assert (schemas / f"v{version}-local-strict").is_dir(), version


def test_there_is_something_to_check() -> None:
    kinds = {d["kind"] for _, d in RESOURCES}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "ScaledObject",
    } <= kinds


@pytest.mark.parametrize(("path", "doc"), RESOURCES, ids=_ids(RESOURCES))
def test_manifest_matches_its_schema(path: Path, doc: dict[str, Any]) -> None:
    schema = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, schema)
        return
    # strict: an unknown field (a typo that kubectl would drop or refuse) fails too
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_bad_manifest_is_refused() -> None:
    # The validator itself works: a misspelt field and a wrong type are errors.
    deployment = _one("Deployment", "siesta")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(_one("ScaledObject", "nb-alice")))
    del scaled["spec"]["triggers"][0]["metadata"]["scalerAddress"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def test_every_manifest_is_applied_by_a_kustomization() -> None:
    listed: set[Path] = set()
    for path in DEPLOY.rglob("kustomization.yaml"):
        for entry in _documents(path)[0]["resources"]:
            target = (path.parent / entry).resolve()
            assert target.exists(), f"{path}: {entry} does not exist"
            listed.add(target)
    # a directory entry stands for its own kustomization
    files = {p.resolve() for p in _manifest_files() if p.name != "kustomization.yaml"}
    covered = {f for f in files if f in listed}
    examples = {f for f in files if f.name.endswith(".example.yaml")}
    assert files - covered - examples == set()
    assert (DEPLOY / "siesta").resolve() in listed
    assert (DEPLOY / "session-example").resolve() in listed


def test_namespaces_enforce_restricted_pod_security() -> None:
    namespaces = {d["metadata"]["name"]: d for d in _resources("Namespace")}
    assert set(namespaces) == {"siesta", "sessions"}
    for ns in namespaces.values():
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    used = {d["metadata"]["namespace"] for _, d in RESOURCES if d["kind"] != "Namespace"}
    assert used <= set(namespaces)


@pytest.mark.parametrize(("path", "doc"), WORKLOADS, ids=_ids(WORKLOADS))
def test_pod_template_is_restricted(path: Path, doc: dict[str, Any]) -> None:
    """The "restricted" Pod Security Standard, checked as admission would check it."""
    pod = doc["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext", {})
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    assert pod.get("automountServiceAccountToken") is False
    allowed_volumes = {"name", "configMap", "secret", "emptyDir", "persistentVolumeClaim"}
    for volume in pod.get("volumes", []):
        assert set(volume) <= allowed_volumes, volume
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container.get("securityContext", {})

        def setting(key: str, sc: dict[str, Any] = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        name = container["name"]
        assert setting("runAsNonRoot") is True, name
        assert setting("runAsUser") not in (None, 0), name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("privileged", False) is False, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, name
        assert setting("seccompProfile") == {"type": "RuntimeDefault"}, name
        for port in container.get("ports", []):
            assert "hostPort" not in port, name
        assert container["resources"]["requests"], name
        assert container["resources"]["limits"]["memory"], name
        assert ":" in container["image"], name  # a tag or a digest, never implicit
        assert ":latest" not in container["image"], name


def test_siesta_deployment() -> None:
    deployment = _one("Deployment", "siesta")
    spec = deployment["spec"]
    assert spec["replicas"] == 1  # SQLite store: no second replica until Redis exists
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    account = _one("ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert not _resources("Role")
    assert not _resources("ClusterRole")
    assert not _resources("RoleBinding")
    assert not _resources("ClusterRoleBinding")

    (container,) = pod["containers"]
    assert container["args"] == ["up", "-c", "/etc/siesta/siesta.yaml"]
    sc = container["securityContext"]
    assert sc["runAsUser"] == 10001
    assert pod["securityContext"]["runAsUser"] == 10001
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"gateway": 8080, "admin": 8081, "grpc": 9090}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}

    env = {e["name"]: e for e in container["env"]}
    ref = env["SIESTA_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = _one("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/siesta"]]["configMap"]["name"] == "siesta-config"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/lib/siesta"]]

    # The config listens where the container ports and the mounts are.
    config = _siesta_config()
    assert config.gateway.port == ports["gateway"]
    assert config.gateway.admin_address[1] == ports["admin"]
    assert config.keda is not None
    assert config.keda.address[1] == ports["grpc"]
    assert config.gateway.host == config.gateway.admin_address[0] == "0.0.0.0"
    assert config.keda.address[0] == "0.0.0.0"
    assert config.store_path is not None
    assert config.store_path.is_relative_to("/var/lib/siesta")


def _ports_by_name(workload: dict[str, Any]) -> dict[str, int]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("service", _resources("Service"), ids=lambda s: s["metadata"]["name"])
def test_service_selects_a_workload_and_its_ports(service: dict[str, Any]) -> None:
    namespace = service["metadata"]["namespace"]
    targets = [
        d
        for d in _resources("Deployment")
        if d["metadata"]["namespace"] == namespace
        and _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)}"
    (workload,) = targets
    assert _selects(
        workload["spec"]["selector"]["matchLabels"],
        workload["spec"]["template"]["metadata"]["labels"],
    )
    container_ports = _ports_by_name(workload)
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        number = container_ports[target] if isinstance(target, str) else target
        assert number in container_ports.values(), port
        assert port["port"] == number, port  # the same number on both sides: no surprises


def test_the_siesta_service_exposes_gateway_admin_and_grpc() -> None:
    ports = {p["name"]: p["port"] for p in _one("Service", "siesta")["spec"]["ports"]}
    assert ports == {"gateway": 8080, "admin": 8081, "grpc": 9090}


def _pods(namespace: str) -> list[dict[str, str]]:
    return [
        d["spec"]["template"]["metadata"]["labels"]
        for d in _resources("Deployment")
        if d["metadata"]["namespace"] == namespace
    ]


def test_network_policy_lets_only_the_gateway_reach_sessions() -> None:
    policies = [p for p in _resources("NetworkPolicy") if p["metadata"]["namespace"] == "sessions"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert deny
    assert all("ingress" not in p["spec"] for p in deny)

    allow = _one("NetworkPolicy", "allow-siesta-gateway")
    session_pods = _pods("sessions")
    assert session_pods
    for labels in session_pods:
        assert _selects(allow["spec"]["podSelector"]["matchLabels"], labels)
    (rule,) = allow["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "siesta"}
    siesta_pods = _pods("siesta")
    assert [_selects(peer["podSelector"]["matchLabels"], labels) for labels in siesta_pods] == [
        True
    ]
    session_ports = {
        port
        for d in _resources("Deployment")
        if d["metadata"]["namespace"] == "sessions"
        for port in _ports_by_name(d).values()
    }
    assert {p["port"] for p in rule["ports"]} == session_ports


def test_network_policy_lets_clients_keda_and_prometheus_reach_siesta() -> None:
    policy = _one("NetworkPolicy", "siesta")
    (labels,) = _pods("siesta")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    by_port = {
        port["port"]: rule["from"] for rule in policy["spec"]["ingress"] for port in rule["ports"]
    }
    assert set(by_port) == {8080, 8081, 9090}
    keda = by_port[9090][0]["namespaceSelector"]["matchLabels"]
    assert keda == {"kubernetes.io/metadata.name": "keda"}


def test_scaled_object_drives_the_session_workload_from_siesta() -> None:
    scaled = _one("ScaledObject", "nb-alice")
    spec = scaled["spec"]
    target = _one("Deployment", spec["scaleTargetRef"]["name"])
    assert target["metadata"]["namespace"] == scaled["metadata"]["namespace"]
    assert target["spec"]["replicas"] == 0
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] == 1
    assert spec["cooldownPeriod"] > 0
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "external-push"

    # scalerAddress is the siesta Service's gRPC port, by its cluster DNS name.
    service = _one("Service", "siesta")
    grpc = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert trigger["metadata"]["scalerAddress"] == f"{name}.{namespace}.svc:{grpc}"

    # The session is one siesta declares, on a keda template whose address is the
    # session's Service.
    config = _siesta_config()
    session = trigger["metadata"]["session"]
    assert session in config.sessions
    template = config.templates[config.sessions[session].template]
    assert template.provider == "keda"
    assert template.policy in config.policies
    assert template.address is not None
    address = template.address.replace("{session}", session)
    match = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", address)
    assert match, address
    backend = _one("Service", match[1])
    assert backend["metadata"]["namespace"] == match[2]
    assert int(match[3]) in {p["port"] for p in backend["spec"]["ports"]}
    assert _selects(backend["spec"]["selector"], target["spec"]["template"]["metadata"]["labels"])


def test_render_makes_a_session_for_another_user() -> None:
    script = DEPLOY / "session-example" / "render.sh"
    out = subprocess.run(
        ["bash", str(script), "bob"], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert {d["metadata"]["name"] for d in docs} == {"nb-bob"}
    assert "alice" not in out
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            assert doc["spec"]["triggers"][0]["metadata"]["session"] == "bob"
            jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    bad = subprocess.run(["bash", str(script), "Bob_1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "DNS label" in bad.stderr


# --- the container image -------------------------------------------------------------


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_is_multi_stage_slim_and_pinned() -> None:
    froms = [line.split()[1:] for line in _dockerfile() if line.startswith("FROM ")]
    assert len(froms) >= 2
    for image, *_ in froms:
        name, _, tag = image.partition(":")
        assert tag, image
        assert "latest" not in tag, image
        assert name == "python", image
        assert tag.startswith("3.11-slim"), image
    assert froms[0][1:] == ["AS", "builder"]
    assert len(froms[-1]) == 1  # the final stage is the unnamed last one


def test_dockerfile_final_stage_is_non_root_without_build_tools() -> None:
    lines = _dockerfile()
    last = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    final = lines[last:]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] == "10001"
    assert not any(
        re.search(r"\b(gcc|build-essential|apt-get install|pip install)\b", line) for line in final
    )
    assert any(line.startswith("COPY --from=builder") for line in final)
    assert 'ENTRYPOINT ["siesta"]' in final
    assert 'CMD ["up", "-c", "/etc/siesta/siesta.yaml"]' in final
    exposed = {p for line in final if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {"8080", "8081", "9090"}


def test_dockerfile_installs_only_hash_checked_dependencies() -> None:
    installs = [line for line in _dockerfile() if "pip install" in line]
    for line in installs:
        for part in line.split("&&"):
            if "pip install" not in part:
                continue
            # Everything from an index is hash-checked; only siesta's own wheel, built
            # in the same stage, goes in without (and with --no-deps --no-index).
            assert "--require-hashes" in part or ("--no-deps" in part and "--no-index" in part)
    assert sum("--require-hashes" in line for line in installs) >= 1


def _locked(path: Path) -> dict[str, list[str]]:
    """name -> hashes of every `name==version` pin in a pip-compile lock file."""
    pins: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==\S+", line):
            current = match[1].lower().replace("_", "-")
            pins[current] = []
        elif current and (match := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current].append(match[1])
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_files_pin_every_dependency_with_hashes() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = _locked(ROOT / "deploy" / "requirements.txt")
    for requirement in project["project"]["dependencies"]:
        name = _normal(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        assert name in runtime, f"{name} is not in deploy/requirements.txt: run deploy/lock.sh"
    assert {"grpcio", "protobuf"} <= set(runtime)
    build = _locked(ROOT / "deploy" / "build-requirements.txt")
    assert "hatchling" in build
    for name, hashes in {**runtime, **build}.items():
        assert hashes, f"{name} has no hash"

"""infra/k8s/ manifests against the code: settings names, the KubernetesBackend's defaults
(Secret, run volume), RBAC for exactly the calls it makes, images, probes and selectors."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from infra.backends.kubernetes import KubernetesBackend
from pipeline import settings
from tests.deploy.conftest import K8S, command_problems, image_pin_problem, load_yaml_documents, tokenmill_env_names

NAMESPACE = "tokenmill"
NOT_RESOURCES = {"kustomization.yaml", "secret.example.yaml"}


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def docs(kustomization) -> list[dict]:
    return [doc for name in kustomization["resources"] for doc in load_yaml_documents(K8S / name)]


@pytest.fixture(scope="module")
def secret_example() -> dict:
    (doc,) = load_yaml_documents(K8S / "secret.example.yaml")
    return doc


def by_kind(docs, kind) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def backend_default(name: str):
    return inspect.signature(KubernetesBackend.__init__).parameters[name].default


def pod_specs(docs) -> dict[str, dict]:
    return {name: d["spec"]["template"]["spec"] for name, d in by_kind(docs, "Deployment").items()}


def test_kustomization_lists_every_manifest(kustomization):
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert set(kustomization["resources"]) == on_disk
    assert kustomization["namespace"] == NAMESPACE
    assert "train-job.yaml.j2" not in kustomization["resources"]


def test_every_document_is_well_formed_and_namespaced(docs):
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ConfigMap",
        "PersistentVolumeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    } <= kinds
    names = set()
    for doc in docs:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in names, f"duplicate {key}"
        names.add(key)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, key
    assert by_kind(docs, "Namespace").keys() == {NAMESPACE}


def test_settings_are_the_ones_the_code_reads(docs):
    (configmap,) = by_kind(docs, "ConfigMap").values()
    names = {k for k in configmap["data"] if k.startswith("TOKENMILL_")}
    # credentials live in the Secret; AWS_REGION is only a fallback for TOKENMILL_S3_REGION
    assert names == tokenmill_env_names() - {settings.ENV_ACCESS_KEY, settings.ENV_SECRET_KEY, settings.ENV_SESSION_TOKEN, settings.ENV_AWS_REGION}
    assert configmap["data"][settings.ENV_DATA_ROOT].startswith("s3://")
    assert configmap["data"]["PREFECT_API_URL"].endswith("/api")
    for text in (p.read_text() for p in K8S.glob("*.yaml")):
        unknown = set(re.findall(r"\bTOKENMILL_[A-Z0-9_]+", text)) - tokenmill_env_names()
        assert not unknown, f"not defined in pipeline/settings.py: {unknown}"


def test_secret_example_is_the_backends_secret_with_placeholders(secret_example):
    assert secret_example["kind"] == "Secret"
    assert secret_example["metadata"]["name"] == backend_default("secret_name")
    assert set(secret_example["stringData"]) == {settings.ENV_ACCESS_KEY, settings.ENV_SECRET_KEY}
    assert all(value.startswith("REPLACE-WITH-") for value in secret_example["stringData"].values())


def test_pods_read_settings_and_secret_by_reference(docs, secret_example):
    configmap_name = next(iter(by_kind(docs, "ConfigMap")))
    for name, spec in pod_specs(docs).items():
        for container in spec["containers"]:
            refs = container.get("envFrom") or []
            if name == "dask-scheduler":
                assert not refs, "the scheduler touches no storage: it needs neither settings nor keys"
                continue
            assert {"configMapRef": {"name": configmap_name}} in refs, name
            assert {"secretRef": {"name": secret_example["metadata"]["name"]}} in refs, name
            for env in container.get("env") or []:
                assert "value" in env and not re.search(r"SECRET|PASSWORD|ACCESS_KEY", env["name"]), (
                    f"{name}: {env['name']} inline"
                )


def test_containers_are_pinned_non_root_probed_and_bounded(docs, kustomization):
    pinned = {entry["name"]: entry["newTag"] for entry in kustomization["images"]}
    for name, spec in pod_specs(docs).items():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
        for container in spec["containers"]:
            image = container["image"]
            assert image_pin_problem(image) is None, f"{name}: {image_pin_problem(image)}"
            assert image.rsplit(":", 1)[0] in pinned, f"{name}: {image} is not set in kustomization images"
            assert not command_problems(container["command"]), f"{name}: {command_problems(container['command'])}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container.get("livenessProbe") or container.get("readinessProbe"), f"{name}: no probe"
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
            for probe in (container.get("livenessProbe"), container.get("readinessProbe")):
                if probe:
                    assert probe["httpGet"]["port"] in ports, f"{name}: probe on an undeclared port"
            command = " ".join(container["command"])
            for port_name, port in ports.items():
                assert str(port) in command or any(e.get("value") == str(port) for e in container.get("env") or []), (
                    f"{name}: port {port_name}={port} is opened by neither command nor env"
                )
            mounts = {m["name"] for m in container.get("volumeMounts") or []}
            assert mounts <= {v["name"] for v in spec.get("volumes") or []}, name


def test_deployment_selectors_match_their_pods(docs):
    for name, deployment in by_kind(docs, "Deployment").items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name


def test_dask_scheduler_service_and_address_agree(docs):
    service = by_kind(docs, "Service")["dask-scheduler"]
    scheduler = by_kind(docs, "Deployment")["dask-scheduler"]
    assert service["spec"]["selector"].items() <= scheduler["spec"]["template"]["metadata"]["labels"].items()
    container_ports = {p["name"]: p["containerPort"] for p in scheduler["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(service_ports) == set(container_ports)
    for port in service_ports.values():
        assert port["port"] == container_ports[port["targetPort"]]
    address = f"tcp://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{service_ports['scheduler']['port']}"
    (configmap,) = by_kind(docs, "ConfigMap").values()
    assert configmap["data"][settings.ENV_DASK_ADDRESS] == address
    worker = by_kind(docs, "Deployment")["dask-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:3] == ["dask", "worker", address]


def test_training_worker_may_do_what_the_kubernetes_backend_calls(docs):
    """The calls in infra/backends/kubernetes.py: create/read/delete Jobs (+ status), create and
    delete the headless Service, list pods, read pod logs; nothing else, in one namespace."""
    needed = {
        ("batch", "jobs"): {"create", "get", "delete"},
        ("batch", "jobs/status"): {"get"},
        ("", "services"): {"create", "delete"},
        ("", "pods"): {"list"},
        ("", "pods/log"): {"get"},
    }
    source = Path(inspect.getsourcefile(KubernetesBackend)).read_text()
    for call in (
        "create_namespaced_job",
        "read_namespaced_job_status",
        "delete_namespaced_job",
        "create_namespaced_service",
        "delete_namespaced_service",
        "list_namespaced_pod",
        "read_namespaced_pod_log",
    ):
        assert call in source, f"backend no longer calls {call}: update this test and the Role"
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (role,) = by_kind(docs, "Role").values()
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"secrets", "configmaps"} & set(rule["resources"]), "the worker needs no access to secrets or configmaps"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    for key, verbs in needed.items():
        assert verbs <= granted.get(key, set()), f"Role lacks {key}: {verbs - granted.get(key, set())}"
    assert set(granted) == set(needed)
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    training = pod_specs(docs)["prefect-worker-training"]
    assert subject["name"] == training["serviceAccountName"] and subject["namespace"] == NAMESPACE
    for name, spec in pod_specs(docs).items():
        if name != "prefect-worker-training":
            assert spec.get("automountServiceAccountToken") is False, f"{name} must not get an API token"


def test_training_worker_shares_the_backends_run_volume(docs):
    claim = backend_default("volume_claim")
    mount_path = backend_default("mount_path")
    pvc = by_kind(docs, "PersistentVolumeClaim")[claim]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "training pods on several nodes and the worker mount it at once"
    spec = pod_specs(docs)["prefect-worker-training"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == mount_path]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim


def test_workers_poll_the_tokenmill_pool_on_separate_queues(docs):
    queues = {}
    for name in ("prefect-worker", "prefect-worker-training"):
        command = pod_specs(docs)[name]["containers"][0]["command"]
        assert command[:3] == ["prefect", "worker", "start"]
        assert command[command.index("--pool") + 1] == "tokenmill"
        assert command[command.index("--type") + 1] == "process"
        assert "--with-healthcheck" in command
        queues[name] = command[command.index("--work-queue") + 1]
    assert queues == {"prefect-worker": "default", "prefect-worker-training": "training"}

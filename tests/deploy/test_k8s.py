"""infra/k8s/ manifests against the code: settings names, the KubernetesBackend's defaults
(namespace, Secret, run volume), RBAC for exactly the calls it makes, the two namespaces and
their identities, Pod Security, NetworkPolicies, images, probes and selectors; and the
Dask TLS overlay infra/k8s-dask-tls rendered by kustomize (kubectl's, when installed)."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.backends import JobSpec
from infra.backends.kubernetes import KubernetesBackend, render_manifests
from pipeline import settings
from tests.deploy.conftest import K8S, REPO, command_problems, image_pin_problem, load_yaml_documents, tokenmill_env_names
from tests.security.pod_security import restricted_violations

PIPELINE_NS = "tokenmill"
TRAINING_NS = "tokenmill-training"
NOT_RESOURCES = {"kustomization.yaml", "secret.example.yaml"}
TLS_OVERLAY = REPO / "infra" / "k8s-dask-tls"
CREDENTIALS = {settings.ENV_ACCESS_KEY, settings.ENV_SECRET_KEY, settings.ENV_SESSION_TOKEN}


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def docs(kustomization) -> list[dict]:
    return [doc for name in kustomization["resources"] for doc in load_yaml_documents(K8S / name)]


@pytest.fixture(scope="module")
def secret_examples() -> dict[str, dict]:
    return {doc["metadata"]["namespace"]: doc for doc in load_yaml_documents(K8S / "secret.example.yaml")}


def by_kind(docs, kind, namespace: str | None = None) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == kind and (namespace is None or d["metadata"].get("namespace") == namespace)
    }


def backend_default(name: str):
    return inspect.signature(KubernetesBackend.__init__).parameters[name].default


def pod_specs(docs) -> dict[str, dict]:
    return {name: d["spec"]["template"]["spec"] for name, d in by_kind(docs, "Deployment").items()}


def namespace_of(docs, kind: str, name: str) -> str:
    return by_kind(docs, kind)[name]["metadata"]["namespace"]


def test_kustomization_lists_every_manifest(kustomization):
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert set(kustomization["resources"]) == on_disk
    assert "namespace" not in kustomization, "a kustomization namespace would move both namespaces' objects into one"


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
        "NetworkPolicy",
    } <= kinds
    names = set()
    for doc in docs:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc
        key = (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
        assert key not in names, f"duplicate {key}"
        names.add(key)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") in (PIPELINE_NS, TRAINING_NS), key
    assert by_kind(docs, "Namespace").keys() == {PIPELINE_NS, TRAINING_NS}
    assert backend_default("namespace") == TRAINING_NS


def test_namespaces_enforce_the_restricted_pod_security_standard(docs):
    for name, namespace in by_kind(docs, "Namespace").items():
        labels = namespace["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", (name, mode)


def test_every_pod_meets_the_restricted_standard_with_a_read_only_root(docs):
    job = render_manifests(
        JobSpec(name="x", command=["-m", "model.train"], run_dir="/runs/x"), job_name="x-abc123", image="ghcr.io/o/t:1"
    )[1]
    pods = {**pod_specs(docs), "training job": job["spec"]["template"]["spec"]}
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            writable = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in writable, f"{name}: a read-only root needs a writable /tmp"
        assert pod.get("enableServiceLinks") is False, name


def test_settings_are_the_ones_the_code_reads(docs):
    pipeline = by_kind(docs, "ConfigMap", PIPELINE_NS)["tokenmill-settings"]["data"]
    training = by_kind(docs, "ConfigMap", TRAINING_NS)["tokenmill-settings"]["data"]
    names = {k for k in pipeline if k.startswith("TOKENMILL_")}
    # credentials live in the Secrets; AWS_REGION is only a fallback for TOKENMILL_S3_REGION
    assert names == tokenmill_env_names() - CREDENTIALS - {settings.ENV_AWS_REGION}
    assert pipeline[settings.ENV_DATA_ROOT].startswith("s3://")
    assert pipeline["PREFECT_API_URL"].endswith("/api")
    assert training == {k: v for k, v in pipeline.items() if k != settings.ENV_DASK_ADDRESS}, "one set of settings"
    for text in (p.read_text() for p in K8S.glob("*.yaml")):
        unknown = set(re.findall(r"\bTOKENMILL_[A-Z0-9_]+", text)) - tokenmill_env_names()
        assert not unknown, f"not defined in pipeline/settings.py: {unknown}"


def test_secret_examples_are_one_per_identity_with_placeholders(secret_examples):
    assert set(secret_examples) == {PIPELINE_NS, TRAINING_NS}
    assert secret_examples[PIPELINE_NS]["metadata"]["name"] == "tokenmill-storage"
    assert secret_examples[TRAINING_NS]["metadata"]["name"] == backend_default("secret_name")
    for secret in secret_examples.values():
        assert secret["kind"] == "Secret"
        assert set(secret["stringData"]) == {settings.ENV_ACCESS_KEY, settings.ENV_SECRET_KEY}
        assert all(value.startswith("REPLACE-WITH-") for value in secret["stringData"].values())
    assert secret_examples[PIPELINE_NS]["stringData"] != secret_examples[TRAINING_NS]["stringData"]


def test_pods_read_settings_and_their_namespaces_secret_by_reference(docs, secret_examples):
    """The training namespace holds only the training identity: the worker that creates Jobs
    from flow parameters can mount nothing stronger."""
    for name, spec in pod_specs(docs).items():
        namespace = namespace_of(docs, "Deployment", name)
        for container in spec["containers"]:
            refs = container.get("envFrom") or []
            if name == "dask-scheduler":
                assert not refs, "the scheduler touches no storage: it needs neither settings nor keys"
                continue
            assert {"configMapRef": {"name": "tokenmill-settings"}} in refs, name
            assert {"secretRef": {"name": secret_examples[namespace]["metadata"]["name"]}} in refs, name
            for env in container.get("env") or []:
                inline_secret = re.search(r"SECRET|PASSWORD|ACCESS_KEY", env["name"])
                assert "value" in env and not inline_secret, f"{name}: {env['name']} inline"
    assert namespace_of(docs, "Deployment", "prefect-worker-training") == TRAINING_NS
    assert {namespace_of(docs, "Deployment", n) for n in ("prefect-worker", "dask-scheduler", "dask-worker")} == {PIPELINE_NS}


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
    address = f"tcp://{service['metadata']['name']}.{PIPELINE_NS}.svc.cluster.local:{service_ports['scheduler']['port']}"
    configmap = by_kind(docs, "ConfigMap", PIPELINE_NS)["tokenmill-settings"]
    assert configmap["data"][settings.ENV_DASK_ADDRESS] == address
    worker = by_kind(docs, "Deployment")["dask-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:3] == ["dask", "worker", address]


def selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def admitted_from(docs, namespace: str, target_labels: dict) -> list[dict] | None:
    """The `from` peers of every NetworkPolicy selecting the pod (None: not isolated)."""
    policies = [p for p in by_kind(docs, "NetworkPolicy", namespace).values() if selects(p["spec"]["podSelector"], target_labels)]
    if not policies:
        return None
    return [peer for p in policies for rule in p["spec"].get("ingress") or [] for peer in rule.get("from", [{}])]


def test_only_dask_workers_and_the_prefect_worker_reach_the_scheduler(docs):
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in by_kind(docs, "Deployment").items()}
    for namespace in (PIPELINE_NS, TRAINING_NS):
        (deny,) = [p for p in by_kind(docs, "NetworkPolicy", namespace).values() if p["spec"]["podSelector"] == {}]
        assert deny["spec"]["policyTypes"] == ["Ingress"] and not deny["spec"].get("ingress"), f"{namespace}: default deny"
    peers = admitted_from(docs, PIPELINE_NS, labels["dask-scheduler"])
    assert all(set(peer) == {"podSelector"} for peer in peers), "no namespace or IP peers"
    admitted = {name for name, pod_labels in labels.items() if any(selects(peer["podSelector"], pod_labels) for peer in peers)}
    assert admitted == {"dask-worker", "prefect-worker"}
    policies = by_kind(docs, "NetworkPolicy", PIPELINE_NS).values()
    selector = labels["dask-scheduler"]
    (scheduler_policy,) = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], selector)]
    assert [port["port"] for rule in scheduler_policy["spec"]["ingress"] for port in rule["ports"]] == ["scheduler"]
    # Training pods: only other training pods (their rendezvous and collectives).
    job = render_manifests(JobSpec(name="x", command=["x"], run_dir="/runs/x"), job_name="x-abc123", image="ghcr.io/o/t:1")[1]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    training_peers = admitted_from(docs, TRAINING_NS, job_labels)
    assert training_peers and all(selects(peer["podSelector"], job_labels) for peer in training_peers)


def test_training_worker_may_do_what_the_kubernetes_backend_calls(docs):
    """The calls in infra/backends/kubernetes.py: create/read/delete Jobs (+ status), create and
    delete the headless Service, list pods, read pod logs; nothing else, in the training
    namespace only."""
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
    assert role["metadata"]["namespace"] == TRAINING_NS == backend_default("namespace")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"secrets", "configmaps", "pods/exec", "pods/attach"} & set(rule["resources"]), "no secrets, no exec"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    for key, verbs in needed.items():
        assert verbs <= granted.get(key, set()), f"Role lacks {key}: {verbs - granted.get(key, set())}"
    assert set(granted) == set(needed)
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["metadata"]["namespace"] == TRAINING_NS
    (subject,) = binding["subjects"]
    training = pod_specs(docs)["prefect-worker-training"]
    assert subject["name"] == training["serviceAccountName"] and subject["namespace"] == TRAINING_NS
    for name, spec in pod_specs(docs).items():
        if name != "prefect-worker-training":
            assert spec.get("automountServiceAccountToken") is False, f"{name} must not get an API token"


def test_training_worker_shares_the_backends_run_volume(docs):
    claim = backend_default("volume_claim")
    mount_path = backend_default("mount_path")
    pvc = by_kind(docs, "PersistentVolumeClaim", TRAINING_NS)[claim]
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


def kustomize(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize output not checked (the manifests above still are)")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_builds_the_base_unchanged(docs):
    built = kustomize(K8S)
    key = lambda d: (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, docs))


def test_dask_tls_overlay_puts_every_dask_connection_on_tls():
    built = kustomize(TLS_OVERLAY)
    deployments = by_kind(built, "Deployment")
    address = "tls://dask-scheduler.tokenmill.svc.cluster.local:8786"
    assert by_kind(built, "ConfigMap", PIPELINE_NS)["tokenmill-settings"]["data"][settings.ENV_DASK_ADDRESS] == address
    assert deployments["dask-worker"]["spec"]["template"]["spec"]["containers"][0]["command"][2] == address
    tls = by_kind(built, "ConfigMap", PIPELINE_NS)["dask-tls-settings"]["data"]
    assert tls["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True" and tls["DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME"] == "tls"
    for name in ("dask-scheduler", "dask-worker", "prefect-worker"):
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert {"configMapRef": {"name": "dask-tls-settings"}} in container["envFrom"], name
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": "dask-tls", "defaultMode": 0o440}, name
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True
        for key in ("CA_FILE", "SCHEDULER__CERT", "WORKER__KEY", "CLIENT__CERT"):
            assert tls[f"DASK_DISTRIBUTED__COMM__TLS__{key}"].startswith(mount["mountPath"] + "/")
        assert restricted_violations(pod) == [] and pod["securityContext"]["fsGroup"] == 10001
    assert "dask-tls-settings" not in str(deployments["prefect-worker-training"]), "training uses no Dask"

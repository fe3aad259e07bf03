"""Kubernetes: every backend option and every Job manifest field is validated, manifests are
built as data, and what the API would receive, dumped to YAML and parsed back, shows exactly
the structure the backend built: no hostile value adds a field, a volume or a privilege.
(No cluster here: the manifests are the testable boundary; they are deserialized into the
kubernetes client's own models as the API client would send them.)"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client

from infra.backends import JobSpec
from infra.backends.kubernetes import (
    SCRATCH_MOUNTS,
    TORCH_EXTENSIONS_DIR,
    TRAINER_HOME,
    TRAINER_UID,
    KubernetesBackend,
    pull_policy,
    render_manifests,
)
from pipeline.names import InvalidName
from tests.deploy.conftest import DOCKER
from tests.security.pod_security import restricted_violations

IMAGE = "ghcr.io/org/trainer:1.2"
DIGEST = "ghcr.io/org/trainer@sha256:" + "a" * 64

# YAML that, pasted into a text template, turned a value into structure.
YAML_TRICKS = [
    "x\n  securityContext: {privileged: true}",
    "x\nprivileged: true",
    "x\n---\napiVersion: v1\nkind: Pod",
    "x}\n      hostPath: {path: /}",
    "{x: 1}",
    "[x]",
    "x # comment",
    "&a x",
    "*a",
    "!!python/object:os.system x",
    "x\u2028privileged: true",
    "x\x85hostNetwork: true",
    "",
]

BAD_OPTIONS = {
    "image": YAML_TRICKS + ["org/Upper:1", "img:tag with space", "img@sha256:short", "-img", "img:" + "a" * 200, 7],
    "namespace": YAML_TRICKS + ["kube-system.x", "Tokenmill", "a_b", "-a", "a" * 64],
    "service_account": YAML_TRICKS + ["Default", "a_b", "a/b", "a" * 254],
    "secret_name": YAML_TRICKS + ["Tokenmill-storage", "a_b", "../tokenmill-storage", "a" * 254],
    "volume_claim": YAML_TRICKS + ["runs\n      hostPath: {path: /}", "/", "runs/../root", "Runs"],
    "mount_path": ["runs", "/runs\nx", "/runs/../etc", "/runs\x00", "", 3],
    "kubeconfig": ["kube.yaml", "/root/.kube/config\nx"],
}


def spec(**changes) -> JobSpec:
    fields = dict(
        name="run-a0",
        command=["-m", "model.train", "--config", "/runs/run/config.yaml"],
        run_dir="/runs/run",
        env={"TOKENMILL_S3_ENDPOINT": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "s3cr3t"},
        nodes=2,
        procs_per_node=4,
        cpus_per_node=16,
        gpus_per_node=4,
        memory_gb=64,
        time_limit_s=3600,
    )
    return JobSpec(**{**fields, **changes})


@pytest.mark.parametrize("option, value", [(o, v) for o, values in BAD_OPTIONS.items() for v in values])
def test_every_backend_option_is_rejected_naming_it(option, value):
    options = {"image": IMAGE, option: value}
    with pytest.raises(InvalidName, match=rf"^backend_options\.{option}: "):
        KubernetesBackend(**options)
    if option != "kubeconfig":
        with pytest.raises(InvalidName, match=rf"^backend_options\.{option}: "):
            render_manifests(spec(), job_name="run-a0-abc123", **options)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("job_name", "run\nx", r"^job name: "),
        ("job_name", "Run-A0", r"^job name: "),
        ("run_dir", "/runs/x\n  privileged: true", r"^run_dir: "),
        ("run_dir", "/runs/../etc", r"^run_dir: "),
        ("run_dir", "/etc", r"not on the shared volume"),
        ("run_dir", "/runsx/y", r"not on the shared volume"),
        ("env", {"A\nprivileged": "x"}, r"^env name "),
        ("env", {"A=B": "x"}, r"^env name "),
        ("env", {"1A": "x"}, r"^env name "),
    ],
)
def test_job_fields_are_rejected_naming_them(field, value, error):
    job_name = value if field == "job_name" else "run-a0-abc123"
    job = spec() if field == "job_name" else spec(**{field: value})
    with pytest.raises(ValueError, match=error):
        render_manifests(job, job_name=job_name, image=IMAGE)


def walk(node: Any, path: str = ""):
    """(path, leaf) for every scalar of a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")
    else:
        yield path, node


def test_hostile_free_text_stays_data(tmp_path):
    """Free-text fields (command arguments, environment values, the run directory) keep any
    text: it must come back from YAML as the same single value, at the same place."""
    tricks = [t for t in YAML_TRICKS if t]
    job = spec(
        command=["-m", "model.train", *tricks],
        env={"TOKENMILL_S3_ENDPOINT": "http://minio:9000", **{f"V{i}": t for i, t in enumerate(tricks)}},
        run_dir="/runs/a: {b} # c &x *y",
    )
    docs = render_manifests(job, job_name="run-a0-abc123", image=IMAGE)
    text = yaml.safe_dump_all(docs)
    assert list(yaml.safe_load_all(text)) == docs, "YAML round trip changed the manifests"
    service, job_doc = (deserialize(d) for d in docs)
    container = job_doc.spec.template.spec.containers[0]
    assert container.command[-len(tricks) :] == tricks
    assert {e.name: e.value for e in container.env if e.name.startswith("V")} == {f"V{i}": t for i, t in enumerate(tricks)}
    assert container.working_dir == "/runs/a: {b} # c &x *y"
    where = {path for path, leaf in walk(docs) if isinstance(leaf, str) and any(t in leaf for t in tricks)}
    assert all(p.startswith("[1].spec.template.spec.containers[0].") for p in where), where
    assert {p.split(".")[-1].split("[")[0] for p in where} <= {"command", "value", "workingDir"}
    assert_hardened(docs)


def deserialize(doc: dict):
    kind = {"Service": "V1Service", "Job": "V1Job"}[doc["kind"]]
    return client.ApiClient()._ApiClient__deserialize(doc, kind)


def assert_hardened(docs: list[dict]) -> None:
    service, job = docs
    assert [d["kind"] for d in docs] == ["Service", "Job"] and service["spec"]["clusterIP"] == "None"
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsUser"] == TRAINER_UID and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False and security["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes) == {"runs", "dshm", *SCRATCH_MOUNTS}
    assert all(set(v) == {"name", "emptyDir"} for n, v in volumes.items() if n != "runs")
    assert all(volumes[n]["emptyDir"]["sizeLimit"] == size for n, (_, size) in SCRATCH_MOUNTS.items()), "bounded scratch"
    assert set(volumes["runs"]) == {"name", "persistentVolumeClaim"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes)
    assert not any(key in pod for key in ("hostNetwork", "hostPID", "hostIPC", "nodeName"))
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["tokenmill-training-storage"]
    assert not any(e["name"].startswith("AWS_") for e in container["env"]), "credentials only through the Secret"


def test_defaults_are_the_training_identity_and_namespace():
    docs = render_manifests(spec(), job_name="run-a0-abc123", image=IMAGE)
    assert_hardened(docs)
    assert {d["metadata"]["namespace"] for d in docs} == {"tokenmill-training"}
    assert "s3cr3t" not in yaml.safe_dump_all(docs)
    backend = KubernetesBackend(image=IMAGE)
    assert backend.namespace == "tokenmill-training" and backend.options["secret_name"] == "tokenmill-training-storage"


def test_resources_are_bounded_and_images_pulled_safely():
    (_, job) = render_manifests(spec(), job_name="run-a0-abc123", image=IMAGE)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "65536Mi", "nvidia.com/gpu": "4"}
    assert container["resources"]["requests"] == {"cpu": "16", "memory": "65536Mi", "nvidia.com/gpu": "4"}
    assert job["spec"]["activeDeadlineSeconds"] == 3600 and job["spec"]["backoffLimit"] == 0
    # A movable tag is pulled every time (and so checked against the registry's credentials);
    # a digest is one image for good.
    assert container["imagePullPolicy"] == "Always" == pull_policy(IMAGE)
    assert pull_policy(DIGEST) == "IfNotPresent"


def test_scratch_mounts_are_what_the_trainer_image_writes():
    """With a read-only root filesystem, the trainer image's home and DeepSpeed's extension
    folder must be the emptyDirs the Job mounts."""
    dockerfile = (DOCKER / "Dockerfile.trainer").read_text()
    assert f"TORCH_EXTENSIONS_DIR={TORCH_EXTENSIONS_DIR}" in dockerfile
    assert f"--uid {TRAINER_UID} --gid {TRAINER_UID} --home-dir {TRAINER_HOME}" in dockerfile
    assert f"USER {TRAINER_UID}:{TRAINER_UID}" in dockerfile


def test_the_restricted_check_refuses_what_the_text_template_let_through():
    """What a newline in `image` and a crafted `volume_claim` produced from the old template."""
    (_, job) = render_manifests(spec(), job_name="run-a0-abc123", image=IMAGE)
    pod = job["spec"]["template"]["spec"]
    escalated = {
        **pod,
        "containers": [{**pod["containers"][0], "securityContext": {"privileged": True}}],
        "volumes": [*pod["volumes"], {"name": "root", "hostPath": {"path": "/"}}],
        "hostNetwork": True,
    }
    problems = restricted_violations(escalated)
    assert any("hostPath" in p for p in problems) and any("privileged" in p for p in problems)
    assert any("hostNetwork" in p for p in problems) and any("allowPrivilegeEscalation" in p for p in problems)

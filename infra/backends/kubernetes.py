"""Run a job on Kubernetes: a headless Service plus an Indexed batch/v1 Job rendered from
infra/k8s/train-job.yaml.j2 (one torchrun per pod, c10d rendezvous on pod 0), created and
polled with the `kubernetes` client.

The run directory must lie on the shared volume (`volume_claim`, mounted at `mount_path`) so
that the flow can read metrics, heartbeats and checkpoints. Credentials reach the pods from
a Secret (`secret_name`); they are removed from the rendered environment.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import yaml

from infra.backends.base import JOB_ID_ENV, JobBackend, JobHandle, JobSpec, JobState, LogChunk, Phase
from pipeline.settings import ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN

TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "train-job.yaml.j2"
SECRET_ENV = {ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN}
RDZV_PORT = 29500
JOB_LABEL = "tokenmill.job"


def k8s_name(name: str) -> str:
    """A DNS-1035 label (Service names need it): lowercase, '-', starts with a letter, and a
    random suffix so resubmissions never clash with a job still being deleted."""
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "job"
    if not base[0].isalpha():
        base = f"t-{base}"
    return f"{base[:50].rstrip('-')}-{uuid.uuid4().hex[:6]}"


def render_manifests(
    spec: JobSpec,
    *,
    job_name: str,
    image: str,
    namespace: str = "default",
    volume_claim: str = "tokenmill-runs",
    mount_path: str = "/runs",
    secret_name: str = "tokenmill-storage",
    service_account: str | None = None,
) -> list[dict[str, Any]]:
    """The Service and Job as dicts (the order they are created in)."""
    if not (spec.run_dir == mount_path or spec.run_dir.startswith(mount_path.rstrip("/") + "/")):
        raise ValueError(f"run_dir {spec.run_dir} is not on the shared volume mounted at {mount_path}")
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text())
    text = template.render(
        name=job_name,
        namespace=namespace,
        nodes=spec.nodes,
        procs_per_node=spec.procs_per_node,
        cpus_per_node=spec.cpus_per_node,
        gpus_per_node=spec.gpus_per_node,
        memory_mi=int(spec.memory_gb * 1024) if spec.memory_gb else None,
        time_limit_s=spec.time_limit_s,
        image=image,
        run_dir=spec.run_dir,
        command=spec.command,
        env={k: v for k, v in spec.env.items() if k not in SECRET_ENV},
        secret_name=secret_name,
        service_account=service_account,
        volume_claim=volume_claim,
        mount_path=mount_path,
        rdzv_port=RDZV_PORT,
        job_id_env=JOB_ID_ENV,
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def state_from(job: Any, pods: list[Any]) -> JobState:
    """Job state from a V1Job and its V1Pods: the Job's conditions decide; a terminated
    container supplies the exit code."""
    exit_code = None
    for pod in pods:
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            term = cs.state.terminated if cs.state else None
            if term is not None and (exit_code is None or term.exit_code != 0):
                exit_code = term.exit_code
    status = job.status
    for cond in status.conditions or []:
        if cond.status != "True":
            continue
        if cond.type == "Complete":
            return JobState(Phase.SUCCEEDED, exit_code if exit_code is not None else 0)
        if cond.type == "Failed":
            return JobState(Phase.FAILED, exit_code, f"{cond.reason or 'Failed'}: {cond.message or ''}".strip(": "))
    if status.active:
        running = any(pod.status and pod.status.phase == "Running" for pod in pods)
        return JobState(Phase.RUNNING if running else Phase.PENDING)
    if status.failed:
        return JobState(Phase.FAILED, exit_code, f"{status.failed} pod(s) failed")
    return JobState(Phase.PENDING)


class KubernetesBackend(JobBackend):
    name = "kubernetes"

    def __init__(
        self,
        *,
        image: str,
        namespace: str = "default",
        volume_claim: str = "tokenmill-runs",
        mount_path: str = "/runs",
        secret_name: str = "tokenmill-storage",
        service_account: str | None = None,
        kubeconfig: str | None = None,
    ):
        self.image = image
        self.namespace = namespace
        self.volume_claim = volume_claim
        self.mount_path = mount_path
        self.secret_name = secret_name
        self.service_account = service_account
        self.kubeconfig = kubeconfig
        self._apis: tuple[Any, Any] | None = None

    def _clients(self):
        if self._apis is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(config_file=self.kubeconfig)
            self._apis = (client.BatchV1Api(), client.CoreV1Api())
        return self._apis

    def manifests(self, spec: JobSpec, job_name: str) -> list[dict[str, Any]]:
        return render_manifests(
            spec,
            job_name=job_name,
            image=self.image,
            namespace=self.namespace,
            volume_claim=self.volume_claim,
            mount_path=self.mount_path,
            secret_name=self.secret_name,
            service_account=self.service_account,
        )

    def submit(self, spec: JobSpec) -> JobHandle:
        job_name = k8s_name(spec.name)
        service, job = self.manifests(spec, job_name)
        batch, core = self._clients()
        core.create_namespaced_service(self.namespace, service)
        batch.create_namespaced_job(self.namespace, job)
        return JobHandle(backend=self.name, job_id=job_name, run_dir=spec.run_dir, extra={"namespace": self.namespace})

    def _pods(self, handle: JobHandle) -> list[Any]:
        _, core = self._clients()
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"job-name={handle.job_id}").items
        return sorted(pods, key=lambda p: (p.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index", "0"))

    def status(self, handle: JobHandle) -> JobState:
        batch, _ = self._clients()
        return state_from(batch.read_namespaced_job_status(handle.job_id, self.namespace), self._pods(handle))

    def logs(self, handle: JobHandle, since: int = 0) -> LogChunk:
        """Lines of every pod newer than `since` (microseconds since the epoch, from the
        timestamps Kubernetes puts on each line), each prefixed with the pod's index."""
        from kubernetes.client.exceptions import ApiException

        _, core = self._clients()
        stamped: list[tuple[int, str]] = []
        for pod in self._pods(handle):
            index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index", "?")
            try:
                text = core.read_namespaced_pod_log(pod.metadata.name, self.namespace, timestamps=True)
            except ApiException:  # a pod still pulling its image has no log yet
                continue
            for line in text.splitlines():
                stamp, _, message = line.partition(" ")
                micros = _micros(stamp)
                if micros > since:
                    stamped.append((micros, f"[node {index}] {message}"))
        stamped.sort()
        return LogChunk([line for _, line in stamped], max([since] + [m for m, _ in stamped]))

    def cancel(self, handle: JobHandle) -> None:
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.exceptions import ApiException

        batch, core = self._clients()
        for delete in (
            lambda: batch.delete_namespaced_job(
                handle.job_id, self.namespace, body=V1DeleteOptions(propagation_policy="Foreground")
            ),
            lambda: core.delete_namespaced_service(handle.job_id, self.namespace),
        ):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise
        deadline = time.monotonic() + 120
        while self._pods(handle) and time.monotonic() < deadline:
            time.sleep(1)


def _micros(stamp: str) -> int:
    """RFC 3339 with nanoseconds (`2024-01-01T00:00:00.123456789Z`) → microseconds since the epoch."""
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        base = datetime.fromisoformat(head + "+00:00")
        return int(base.timestamp()) * 1_000_000 + int((frac + "000000")[:6])
    except ValueError:
        return 0

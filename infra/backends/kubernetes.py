"""Run a job on Kubernetes: a headless Service plus an Indexed batch/v1 Job (one torchrun per
pod, c10d rendezvous on pod 0), built as Python dicts and sent to the API with the
`kubernetes` client as objects: no manifest is ever text with user values pasted in.

Every option (image, namespace, service account, Secret, volume claim, mount path) may come
from flow parameters, so each is checked against the pattern its Kubernetes field allows
(pipeline/names.py) before it is used. Pods run as the unprivileged user of the trainer
image with a read-only root filesystem, no capabilities, no privilege escalation, the
RuntimeDefault seccomp profile and no API token: they satisfy the `restricted` Pod Security
Standard of the training namespace (infra/k8s/namespace.yaml).

The run directory must lie on the shared volume (`volume_claim`, mounted at `mount_path`) so
that the flow can read metrics, heartbeats and checkpoints. Credentials reach the pods from
a Secret (`secret_name`, the training identity of infra/policies/); they are removed from
the job's inline environment.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import uuid
from datetime import datetime
from typing import Any

from infra.backends.base import JOB_ID_ENV, BackendUnavailable, JobBackend, JobHandle, JobSpec, JobState, LogChunk, Phase
from pipeline import names
from pipeline.settings import ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN

SECRET_ENV = {ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN}
RDZV_PORT = 29500
TERMINATION_GRACE_S = 180  # SIGTERM to SIGKILL, for the pod and for torchrun's ranks
# A log poll asks the kubelet only for lines this much older than the cursor: the margin
# covers skew between this host's clock and the node's, and lines stamped just before a
# poll that reach the log after it. The timestamp filter drops what was already seen, so a
# poll reads a bounded window, never the whole log of a job that has run for days.
LOG_OVERLAP_S = 300
JOB_LABEL = "tokenmill.job"
# The unprivileged user of docker/Dockerfile.trainer, and the folders it writes besides the
# run volume (its home for library caches, DeepSpeed's TORCH_EXTENSIONS_DIR): with a
# read-only root filesystem each is an emptyDir, bounded so that a job cannot fill the
# node's disk under other tenants' pods. name -> (mount path, size limit)
TRAINER_UID = 10001
TRAINER_HOME = "/home/tokenmill"
TORCH_EXTENSIONS_DIR = "/var/cache/torch_extensions"
SCRATCH_MOUNTS = {"tmp": ("/tmp", "20Gi"), "home": (TRAINER_HOME, "4Gi"), "torch-extensions": (TORCH_EXTENSIONS_DIR, "4Gi")}


def k8s_name(name: str) -> str:
    """A DNS-1035 label (Service names need it): lowercase, '-', starts with a letter, and a
    random suffix so resubmissions never clash with a job still being deleted."""
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "job"
    if not base[0].isalpha():
        base = f"t-{base}"
    return f"{base[:50].rstrip('-')}-{uuid.uuid4().hex[:6]}"


def validated_options(
    *,
    image: str,
    namespace: str,
    volume_claim: str,
    mount_path: str,
    secret_name: str,
    service_account: str | None,
) -> dict[str, Any]:
    """The backend's options, each checked against what its manifest field allows; raises
    InvalidName naming the option."""
    return {
        "image": names.image_reference(image, "backend_options.image"),
        "namespace": names.dns1123_label(namespace, "backend_options.namespace"),
        "volume_claim": names.dns1123_subdomain(volume_claim, "backend_options.volume_claim"),
        "mount_path": names.absolute_path(mount_path, "backend_options.mount_path"),
        "secret_name": names.dns1123_subdomain(secret_name, "backend_options.secret_name"),
        "service_account": (
            names.dns1123_subdomain(service_account, "backend_options.service_account") if service_account is not None else None
        ),
    }


def pull_policy(image: str) -> str:
    """A digest names one image for good, so a node's copy may be used; a tag can move, and a
    cached image must not be used without the pull credentials check of the registry."""
    return "IfNotPresent" if "@sha256:" in image else "Always"


def _resources(spec: JobSpec) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpus_per_node is not None:
        requests["cpu"] = str(spec.cpus_per_node)
    if spec.memory_gb is not None:
        requests["memory"] = limits["memory"] = f"{int(spec.memory_gb * 1024)}Mi"
    if spec.gpus_per_node:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return {"requests": requests, "limits": limits}


def _env(spec: JobSpec, job_name: str) -> list[dict[str, str]]:
    env = [{"name": JOB_ID_ENV, "value": job_name}]
    for key, value in sorted(spec.env.items()):
        if key in SECRET_ENV:
            continue
        env.append({"name": names.env_name(key, f"env name {key!r}"), "value": value})
    return env


def render_manifests(
    spec: JobSpec,
    *,
    job_name: str,
    image: str,
    namespace: str = "tokenmill-training",
    volume_claim: str = "tokenmill-runs",
    mount_path: str = "/runs",
    secret_name: str = "tokenmill-training-storage",
    service_account: str | None = None,
) -> list[dict[str, Any]]:
    """The Service and Job as dicts (the order they are created in). JobSpec guarantees its
    counts are integers and its command and env strings; every other value is checked here."""
    opts = validated_options(
        image=image,
        namespace=namespace,
        volume_claim=volume_claim,
        mount_path=mount_path,
        secret_name=secret_name,
        service_account=service_account,
    )
    job_name = names.dns1123_label(job_name, "job name")
    run_dir = names.absolute_path(spec.run_dir, "run_dir")
    mount_path = opts["mount_path"]
    if not (run_dir == mount_path or run_dir.startswith(mount_path.rstrip("/") + "/")):
        raise ValueError(f"run_dir {run_dir} is not on the shared volume mounted at {mount_path}")
    nodes, procs = spec.nodes, spec.procs_per_node
    labels = {"app.kubernetes.io/name": "tokenmill-train", "app.kubernetes.io/part-of": "tokenmill", JOB_LABEL: job_name}
    metadata = {"name": job_name, "namespace": opts["namespace"], "labels": labels}

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job_name},
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}],
        },
    }
    container = {
        "name": "trainer",
        "image": opts["image"],
        "imagePullPolicy": pull_policy(opts["image"]),
        "workingDir": run_dir,
        "command": [
            "python",
            "-m",
            "torch.distributed.run",
            f"--nnodes={nodes}",
            f"--nproc_per_node={procs}",
            "--max_restarts=0",
            f"--shutdown-timeout={TERMINATION_GRACE_S}",
            f"--rdzv_id={job_name}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={job_name}-0.{job_name}:{RDZV_PORT}",
            *spec.command,
        ],
        "ports": [{"name": "rendezvous", "containerPort": RDZV_PORT}],
        "env": _env(spec, job_name),
        "envFrom": [{"secretRef": {"name": opts["secret_name"]}}],
        "resources": _resources(spec),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "runs", "mountPath": mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *({"name": name, "mountPath": path} for name, (path, _) in SCRATCH_MOUNTS.items()),
        ],
    }
    pod: dict[str, Any] = {
        "subdomain": job_name,
        "restartPolicy": "Never",
        # At activeDeadlineSeconds or a delete, the ranks get SIGTERM and this long to save a
        # checkpoint (Kubernetes' default of 30 s, like torchrun's, is too short for a large model).
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        # The ranks never call the Kubernetes API, and need no Service variables.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            # A large shared run volume is not chowned file by file at every start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "runs", "persistentVolumeClaim": {"claimName": opts["volume_claim"]}},
            # torch's data loader workers and gloo/NCCL share tensors through /dev/shm (64 MiB by default).
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            *({"name": name, "emptyDir": {"sizeLimit": size}} for name, (_, size) in SCRATCH_MOUNTS.items()),
        ],
    }
    if opts["service_account"] is not None:
        pod["serviceAccountName"] = opts["service_account"]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        # Restarting is the training flow's job.
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 86400,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if spec.time_limit_s is not None:
        job_spec["activeDeadlineSeconds"] = spec.time_limit_s
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
    return [service, job]


# Container waiting reasons that no amount of waiting cures: the image name is malformed, a
# referenced Secret/ConfigMap key is missing, the pull policy forbids pulling.
NEVER_STARTS = {"InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull"}


def pending_reason(pods: list[Any]) -> tuple[str, bool]:
    """Why the job's pods are not running yet, from what the API server already reports on
    each pod (no Event access needed): the scheduler's Unschedulable message ('0/3 nodes are
    available: 3 Insufficient nvidia.com/gpu'), an image pull or container config error.
    Returns (reason, never_starts)."""
    reasons, never = [], False
    for pod in pods:
        status = pod.status
        if status is None:
            continue
        index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index", "?") if pod.metadata else "?"
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                reasons.append(f"pod {index}: {cond.reason or 'not scheduled'}: {cond.message or ''}".rstrip(": "))
        for cs in status.container_statuses or []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason and waiting.reason != "ContainerCreating":
                reasons.append(f"pod {index}: {waiting.reason}: {waiting.message or ''}".rstrip(": "))
                never = never or waiting.reason in NEVER_STARTS
    return "; ".join(dict.fromkeys(reasons)), never


def state_from(job: Any, pods: list[Any]) -> JobState:
    """Job state from a V1Job and its V1Pods: the Job's conditions decide; a terminated
    container supplies the exit code, pending pods the reason they wait."""
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
            reason = f"{cond.reason or 'Failed'}: {cond.message or ''}".strip(": ")
            # activeDeadlineSeconds (the job's time limit) ends it with reason DeadlineExceeded.
            return JobState(Phase.FAILED, exit_code, reason, time_limit=cond.reason == "DeadlineExceeded")
    if status.active:
        if any(pod.status and pod.status.phase == "Running" for pod in pods):
            return JobState(Phase.RUNNING)
        reason, never = pending_reason(pods)
        return JobState(Phase.PENDING, None, reason, never_starts=never)
    if status.failed:
        return JobState(Phase.FAILED, exit_code, f"{status.failed} pod(s) failed")
    return JobState(Phase.PENDING, None, "job created, no pod yet")


@contextlib.contextmanager
def api_call(what: str):
    """An API server that is busy (429), failing (5xx) or unreachable leaves a job's state
    unknown: BackendUnavailable, which the watcher asks again about. Other API errors stand."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        if exc.status == 429 or (exc.status or 0) >= 500:
            raise BackendUnavailable(f"{what}: HTTP {exc.status} {exc.reason}") from exc
        raise
    except HTTPError as exc:  # connection refused or reset, read timeout
        raise BackendUnavailable(f"{what}: {exc}") from exc


class KubernetesBackend(JobBackend):
    name = "kubernetes"

    def __init__(
        self,
        *,
        image: str,
        namespace: str = "tokenmill-training",
        volume_claim: str = "tokenmill-runs",
        mount_path: str = "/runs",
        secret_name: str = "tokenmill-training-storage",
        service_account: str | None = None,
        kubeconfig: str | None = None,
    ):
        # Options may come from flow parameters (backend_options): checked before any use.
        self.options = validated_options(
            image=image,
            namespace=namespace,
            volume_claim=volume_claim,
            mount_path=mount_path,
            secret_name=secret_name,
            service_account=service_account,
        )
        self.namespace = self.options["namespace"]
        self.kubeconfig = names.absolute_path(kubeconfig, "backend_options.kubeconfig") if kubeconfig is not None else None
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
        return render_manifests(spec, job_name=job_name, **self.options)

    def submit(self, spec: JobSpec) -> JobHandle:
        job_name = k8s_name(spec.name)
        service, job = self.manifests(spec, job_name)
        batch, core = self._clients()
        core.create_namespaced_service(self.namespace, service)
        batch.create_namespaced_job(self.namespace, job)
        return JobHandle(backend=self.name, job_id=job_name, run_dir=spec.run_dir, extra={"namespace": self.namespace})

    def _pods(self, handle: JobHandle) -> list[Any]:
        _, core = self._clients()
        with api_call(f"pods of job {handle.job_id}"):
            pods = core.list_namespaced_pod(self.namespace, label_selector=f"job-name={handle.job_id}").items
        return sorted(pods, key=lambda p: (p.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index", "0"))

    def status(self, handle: JobHandle) -> JobState:
        from kubernetes.client.exceptions import ApiException

        batch, _ = self._clients()
        try:
            with api_call(f"status of job {handle.job_id}"):
                job = batch.read_namespaced_job_status(handle.job_id, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            # deleted, or removed by ttlSecondsAfterFinished: over, and how cannot be told
            return JobState(Phase.EXITED, None, f"job {handle.job_id} no longer exists in namespace {self.namespace}")
        return state_from(job, self._pods(handle))

    def logs(self, handle: JobHandle, since: int = 0) -> LogChunk:
        """Lines of every pod newer than `since` (microseconds since the epoch, from the
        timestamps Kubernetes puts on each line), each prefixed with the pod's index; after
        the first poll only the window since the cursor is read (LOG_OVERLAP_S)."""
        from kubernetes.client.exceptions import ApiException

        _, core = self._clients()
        window = {"since_seconds": max(1, math.ceil(time.time() - since / 1e6) + LOG_OVERLAP_S)} if since else {}
        stamped: list[tuple[int, str]] = []
        for pod in self._pods(handle):
            index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index", "?")
            try:
                with api_call(f"log of pod {pod.metadata.name}"):
                    text = core.read_namespaced_pod_log(pod.metadata.name, self.namespace, timestamps=True, **window)
            except ApiException:  # a pod still pulling its image has no log yet
                continue
            for line in text.splitlines():
                stamp, _, message = line.partition(" ")
                micros = _micros(stamp)
                if micros > since:
                    stamped.append((micros, f"[node {index}] {message}"))
        stamped.sort()
        return LogChunk([line for _, line in stamped], max([since] + [m for m, _ in stamped]))

    def cancel(self, handle: JobHandle) -> str | None:
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
        while pods := self._pods(handle):
            if time.monotonic() >= deadline:
                return f"job {handle.job_id} deleted; {len(pods)} pod(s) still terminating after 120s (Kubernetes will remove them)"
            time.sleep(1)
        return None


def _micros(stamp: str) -> int:
    """RFC 3339 with nanoseconds (`2024-01-01T00:00:00.123456789Z`) → microseconds since the epoch."""
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        base = datetime.fromisoformat(head + "+00:00")
        return int(base.timestamp()) * 1_000_000 + int((frac + "000000")[:6])
    except ValueError:
        return 0

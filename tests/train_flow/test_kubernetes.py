"""Kubernetes backend without a cluster: the rendered manifests deserialize into the
kubernetes client's models with the structure a multi-node torchrun job needs, and job
states map from real client model objects."""

from __future__ import annotations

import pytest
from kubernetes import client

from infra.backends import JobSpec, Phase
from infra.backends.kubernetes import k8s_name, render_manifests, state_from

SPEC = JobSpec(
    name="Big_Run.7",
    command=["-m", "model.train", "--config", "/runs/big/config.yaml", "--set", "train.lr=0.001"],
    run_dir="/runs/big",
    env={"TOKENMILL_S3_ENDPOINT": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "AKIA"},
    nodes=4,
    procs_per_node=8,
    cpus_per_node=32,
    gpus_per_node=8,
    memory_gb=512,
    time_limit_s=7200,
)


def deserialize(data: dict, kind: str):
    return client.ApiClient()._ApiClient__deserialize(data, kind)


def test_manifests_describe_an_indexed_multi_node_torchrun_job():
    name = k8s_name(SPEC.name)
    assert name.startswith("big-run-7-") and len(name) <= 63
    service_doc, job_doc = render_manifests(
        SPEC, job_name=name, image="ghcr.io/x/trainer:1", namespace="ml", secret_name="store-creds"
    )
    service: client.V1Service = deserialize(service_doc, "V1Service")
    job: client.V1Job = deserialize(job_doc, "V1Job")

    assert (service.kind, service.spec.cluster_ip, service.metadata.namespace) == ("Service", "None", "ml")
    assert service.spec.selector == {"tokenmill.job": name}

    assert (job.api_version, job.kind, job.metadata.name) == ("batch/v1", "Job", name)
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == job.spec.parallelism == 4
    assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds == 7200
    pod = job.spec.template.spec
    assert pod.subdomain == service.metadata.name and pod.restart_policy == "Never"
    assert job.spec.template.metadata.labels["tokenmill.job"] == name  # the Service selects the pods

    (container,) = pod.containers
    argv = container.command
    assert argv[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=4" in argv and "--nproc_per_node=8" in argv and "--rdzv_backend=c10d" in argv
    # a deadline or a delete gives the ranks 180 s to save, in Kubernetes and in torchrun (both default to 30 s)
    assert pod.termination_grace_period_seconds == 180 and "--shutdown-timeout=180" in argv
    assert f"--rdzv_endpoint={name}-0.{name}:29500" in argv
    assert argv[-len(SPEC.command) :] == SPEC.command
    assert container.working_dir == "/runs/big"

    env = {e.name: e.value for e in container.env}
    assert env["TOKENMILL_S3_ENDPOINT"] == "http://minio:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env  # from the Secret instead
    assert "s3cr3t" not in str(job_doc)
    assert container.env_from[0].secret_ref.name == "store-creds"

    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert container.resources.requests["cpu"] == "32" and container.resources.requests["memory"] == "524288Mi"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts["runs"] == "/runs" and mounts["dshm"] == "/dev/shm"  # (+ emptyDirs for the read-only root: tests/security)
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim}
    assert claims == {"runs": "tokenmill-runs"}


def test_run_dir_must_be_on_the_shared_volume():
    with pytest.raises(ValueError, match="shared volume"):
        render_manifests(SPEC, job_name="x-1", image="img", mount_path="/data")


def job(conditions=(), active=None, failed=None):
    return client.V1Job(
        status=client.V1JobStatus(
            active=active,
            failed=failed,
            conditions=[client.V1JobCondition(type=t, status="True", reason=r, message=m) for t, r, m in conditions],
        )
    )


def pod(phase: str, exit_code: int | None = None):
    state = (
        client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=exit_code))
        if exit_code is not None
        else client.V1ContainerState()
    )
    status = client.V1ContainerStatus(name="trainer", image="i", image_id="", ready=False, restart_count=0, state=state)
    return client.V1Pod(status=client.V1PodStatus(phase=phase, container_statuses=[status]))


def test_job_states_from_client_models():
    assert state_from(job(active=2), [pod("Pending"), pod("Pending")]).phase == Phase.PENDING
    assert state_from(job(active=2), [pod("Running"), pod("Pending")]).phase == Phase.RUNNING
    done = state_from(job([("Complete", None, None)]), [pod("Succeeded", 0), pod("Succeeded", 0)])
    assert (done.phase, done.exit_code) == (Phase.SUCCEEDED, 0)
    failed = state_from(
        job([("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")], failed=1),
        [pod("Failed", 137), pod("Succeeded", 0)],
    )
    assert (failed.phase, failed.exit_code) == (Phase.FAILED, 137)
    assert "BackoffLimitExceeded" in failed.reason


def waiting_pod(reason: str, message: str = "", scheduled: bool = True):
    conditions = [] if scheduled else [client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable", message=message)]
    state = client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason=reason, message=message)) if scheduled else client.V1ContainerState()
    status = client.V1ContainerStatus(name="trainer", image="i", image_id="", ready=False, restart_count=0, state=state)
    return client.V1Pod(
        metadata=client.V1ObjectMeta(annotations={"batch.kubernetes.io/job-completion-index": "1"}),
        status=client.V1PodStatus(phase="Pending", conditions=conditions, container_statuses=[status] if scheduled else None),
    )


def test_pending_jobs_say_why_and_time_limits_are_not_failures():
    unschedulable = state_from(job(active=1), [waiting_pod("", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", scheduled=False)])
    assert unschedulable.phase == Phase.PENDING and not unschedulable.never_starts
    assert "pod 1: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." == unschedulable.reason
    pulling = state_from(job(active=1), [waiting_pod("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x/trainer:1"')])
    assert "ImagePullBackOff" in pulling.reason and not pulling.never_starts  # a registry hiccup heals
    for reason in ("InvalidImageName", "CreateContainerConfigError"):
        assert state_from(job(active=1), [waiting_pod(reason, "secret tokenmill-storage not found")]).never_starts
    assert state_from(job(active=1), [waiting_pod("ContainerCreating")]).reason == ""
    deadline = state_from(job([("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")]), [pod("Failed", 143)])
    assert deadline.phase == Phase.FAILED and deadline.time_limit
    assert not state_from(job([("Failed", "BackoffLimitExceeded", "")], failed=1), [pod("Failed", 1)]).time_limit


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (403, False), (422, False)])
def test_a_busy_or_failing_api_server_leaves_the_job_unknown(status, transient):
    """A 429 or 5xx while asking about a job is not the job failing (the watcher asks again);
    a 403 or 422 will recur and stands."""
    from kubernetes.client.exceptions import ApiException

    from infra.backends import BackendUnavailable
    from infra.backends.kubernetes import api_call

    with pytest.raises(BackendUnavailable if transient else ApiException):
        with api_call("status of job j"):
            raise ApiException(status=status, reason="x")


def test_an_unreachable_api_server_leaves_the_job_unknown():
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    from infra.backends import BackendUnavailable
    from infra.backends.kubernetes import api_call

    with pytest.raises(BackendUnavailable, match="status of job j"):
        with api_call("status of job j"):
            raise MaxRetryError(None, "https://k8s:6443/apis", NewConnectionError(None, "connection refused"))


class Kubelet:
    """The two CoreV1Api calls `logs` makes, answered as the API server does: pods by label,
    and a pod's log with RFC 3339 nanosecond stamps, honouring `since_seconds`. Counts the
    lines it sends."""

    def __init__(self, job_name: str, pods: int):
        self.job_name = job_name
        self.lines: dict[str, list[tuple[float, str]]] = {f"{job_name}-{i}": [] for i in range(pods)}
        self.sent = 0

    def write(self, pod_name: str, at: float, message: str) -> None:
        self.lines[pod_name].append((at, message))

    def list_namespaced_pod(self, namespace: str, label_selector: str):
        assert label_selector == f"job-name={self.job_name}"
        items = [
            client.V1Pod(metadata=client.V1ObjectMeta(name=name, annotations={"batch.kubernetes.io/job-completion-index": str(i)}))
            for i, name in enumerate(self.lines)
        ]
        return client.V1PodList(items=items)

    def read_namespaced_pod_log(self, name: str, namespace: str, timestamps: bool = False, since_seconds: int | None = None):
        import time
        from datetime import datetime, timezone

        assert timestamps and (since_seconds is None or since_seconds >= 1)
        after = time.time() - since_seconds if since_seconds is not None else float("-inf")
        out = []
        for at, message in self.lines[name]:
            if at >= after:
                stamp = datetime.fromtimestamp(int(at), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                out.append(f"{stamp}.{round((at % 1) * 1e9):09d}Z {message}")
        self.sent += len(out)
        return "".join(line + "\n" for line in out)


def test_log_polls_read_only_what_is_new_not_the_whole_log():
    """A job that has logged for two days: the first poll reads it all, every later poll only
    the window since its cursor (the whole log on every poll made watching a long job
    quadratic), and no line is lost or repeated."""
    import time

    from infra.backends import JobHandle
    from infra.backends.kubernetes import LOG_OVERLAP_S, KubernetesBackend

    backend = KubernetesBackend(image="ghcr.io/o/t:1")
    kubelet = Kubelet("run-abc123", pods=2)
    backend._apis = (None, kubelet)
    handle = JobHandle(backend="kubernetes", job_id="run-abc123", run_dir="/runs/x")
    start = time.time() - 2 * 86400
    for i in range(5000):
        kubelet.write(f"run-abc123-{i % 2}", start + i * 30, f"step {i}")
    chunk = backend.logs(handle)
    seen = list(chunk.lines)
    assert kubelet.sent == 5000 and len(seen) == 5000
    cursor = chunk.cursor
    stamp = time.time()
    for poll in range(20):
        kubelet.sent = 0
        for rank in range(2):
            stamp = max(time.time(), stamp + 1e-3)
            kubelet.write(f"run-abc123-{rank}", stamp, f"poll {poll} rank {rank}")
        chunk = backend.logs(handle, cursor)
        cursor = chunk.cursor
        seen += chunk.lines
        window = (LOG_OVERLAP_S + 60) // 30 + 2 * (poll + 1)  # old lines inside the overlap, and the new ones
        assert kubelet.sent <= window, f"poll {poll} read {kubelet.sent} lines"
    expected = [f"[node {i % 2}] step {i}" for i in range(5000)]
    expected += [f"[node {rank}] poll {poll} rank {rank}" for poll in range(20) for rank in range(2)]
    assert seen == expected

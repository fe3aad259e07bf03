"""The `restricted` Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
baseline rules included, as a check over a pod spec (a dict as in a manifest). The namespaces
enforce it; this finds a violation before a cluster refuses the pod."""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is set")
    pod_security = pod.get("securityContext") or {}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUME_TYPES)} not allowed")
    if pod_security.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    if pod_security.get("sysctls"):
        problems.append("sysctls set")
    for container in _all_containers(pod):
        name = container["name"]
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True):
            problems.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp profile {seccomp!r}")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities not dropped (drop: ALL)")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if security.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems

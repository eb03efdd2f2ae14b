"""The Pod Security Standards' "restricted" level, as the PodSecurity admission controller
checks a pod spec (k8s.io/pod-security-admission, `policy/check_*.go`, for the latest
version): every baseline control, then the restricted ones. A list of violations; empty when
a namespace labelled `pod-security.kubernetes.io/enforce: restricted` admits the pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# check_volumeTypes.go: the only volume sources restricted allows.
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# check_sysctls.go: the safe set (baseline).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name', '?')}]", container


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Why the PodSecurity admission controller would refuse this pod spec at "restricted"."""
    out: list[str] = []
    pod = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{field}=true")
    if (pod.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess=true")
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if "hostPath" in sources:
            out.append(f"volume {volume['name']}: hostPath")
        if sources - RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']}: {sorted(sources - RESTRICTED_VOLUMES)} not allowed")
    for sysctl in pod.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl['name']} is not a safe sysctl")
    out += _selinux("securityContext", pod)
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("securityContext.seccompProfile.type=Unconfined")
    if (pod.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append("securityContext.appArmorProfile.type=Unconfined")
    if pod.get("runAsUser") == 0:
        out.append("securityContext.runAsUser=0")
    for where, container in _containers(spec):
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            out.append(f"{where}: privileged")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: hostProcess")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']}")
        if ctx.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount {ctx['procMount']}")
        out += _selinux(f"{where}.securityContext", ctx)
        if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: appArmorProfile Unconfined")
        # restricted
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation != false")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f'{where}: capabilities.drop does not include "ALL"')
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            out.append(f"{where}: capabilities.add {sorted(added)}")
        non_root = ctx.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{where}: runAsNonRoot != true")
        if ctx.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser=0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost, got {seccomp}")
    return out


def _selinux(where: str, ctx: dict[str, Any]) -> list[str]:
    options = ctx.get("seLinuxOptions") or {}
    out = []
    if options.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type={options['type']}")
    for field in ("user", "role"):
        if options.get(field):
            out.append(f"{where}.seLinuxOptions.{field} must be unset")
    return out

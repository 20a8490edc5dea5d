"""A test-side checker of the Kubernetes Pod Security Standards `restricted` profile (baseline included).

The rules as https://kubernetes.io/docs/concepts/security/pod-security-standards/ lists them, for the fields a
pod spec (or a Tekton Task's steps and sidecars, which become the pod's containers) can set. Each violation is
one line naming the container and the field, so a failing test says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Baseline: capabilities beyond the runtime's defaults may not be added.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
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
# Restricted: only these volume types.
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
SECCOMP_OK = frozenset({"RuntimeDefault", "Localhost"})


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def containers_of(spec: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield f"{key}[{_map(c).get('name', '?')}]", _map(c)


def container_violations(where: str, c: Mapping[str, Any], pod_sc: Mapping[str, Any]) -> list[str]:
    """The restricted (and baseline) rules for one container, given the pod's securityContext."""
    sc = _map(c.get("securityContext"))
    caps = _map(sc.get("capabilities"))
    bad = []
    if sc.get("privileged") is True:
        bad.append(f"{where}: securityContext.privileged is true")
    added = set(caps.get("add") or [])
    if added - BASELINE_CAPABILITIES:
        bad.append(f"{where}: capabilities.add {sorted(added - BASELINE_CAPABILITIES)} beyond baseline")
    if added - {"NET_BIND_SERVICE"}:
        bad.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE")
    if "ALL" not in (caps.get("drop") or []):
        bad.append(f"{where}: capabilities.drop must include ALL")
    if sc.get("allowPrivilegeEscalation") is not False:
        bad.append(f"{where}: allowPrivilegeEscalation must be false")
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root is not True:
        bad.append(f"{where}: runAsNonRoot must be true (container or pod)")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        bad.append(f"{where}: runAsUser must not be 0")
    seccomp = _map(sc.get("seccompProfile")) or _map(pod_sc.get("seccompProfile"))
    if seccomp.get("type") not in SECCOMP_OK:
        bad.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (container or pod)")
    if sc.get("procMount", "Default") != "Default":
        bad.append(f"{where}: procMount must be Default")
    if _map(sc.get("seLinuxOptions")).get("type", "") not in SELINUX_TYPES:
        bad.append(f"{where}: seLinuxOptions.type not allowed")
    if _map(sc.get("seLinuxOptions")).get("user") or _map(sc.get("seLinuxOptions")).get("role"):
        bad.append(f"{where}: seLinuxOptions user/role must be unset")
    if _map(sc.get("appArmorProfile")).get("type") not in (None, "RuntimeDefault", "Localhost"):
        bad.append(f"{where}: appArmorProfile.type not allowed")
    if _map(sc.get("windowsOptions")).get("hostProcess") is True:
        bad.append(f"{where}: windowsOptions.hostProcess is true")
    for port in c.get("ports") or []:
        if _map(port).get("hostPort") not in (None, 0):
            bad.append(f"{where}: hostPort {_map(port).get('hostPort')}")
    return bad


def pod_violations(spec: Mapping[str, Any]) -> list[str]:
    """Every restricted-profile violation of a pod spec; [] when the pod is compliant."""
    pod_sc = _map(spec.get("securityContext"))
    bad = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key) is True:
            bad.append(f"pod: {key} is true")
    for volume in spec.get("volumes") or []:
        kinds = set(_map(volume)) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"pod: volume {_map(volume).get('name')} of type {sorted(kinds - RESTRICTED_VOLUMES)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if _map(sysctl).get("name") not in SAFE_SYSCTLS:
            bad.append(f"pod: sysctl {_map(sysctl).get('name')} not allowed")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod: runAsUser must not be 0")
    if _map(pod_sc.get("seccompProfile")).get("type") == "Unconfined":
        bad.append("pod: seccompProfile Unconfined")
    for where, c in containers_of(spec):
        bad += container_violations(where, c, pod_sc)
    return bad


def task_pod_spec(task_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The containers and volumes a Task spec puts in its pod (steps and sidecars, stepTemplate merged the way
    Tekton merges it: the step's own fields win), for checking an `inject`ed Task with pod_violations."""
    template = _map(task_spec.get("stepTemplate"))
    steps = [{**template, **_map(s)} for s in task_spec.get("steps") or []]
    return {
        "containers": [*steps, *(_map(s) for s in task_spec.get("sidecars") or [])],
        "volumes": list(task_spec.get("volumes") or []),
    }

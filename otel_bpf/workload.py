"""Which container and Kubernetes pod a cgroup path names: pure parsing, no ``/proc``.

Container runtimes and the kubelet name the cgroups they create after the container and the
pod, and that naming is the only thing a host-wide view sees without asking each runtime:

* a container: its 64-hex id, bare under the cgroupfs driver (``/docker/<id>``,
  ``/kubepods/burstable/pod<uid>/<id>``) or as ``<runtime>-<id>`` with or without a
  ``.scope`` suffix (``docker-``, ``cri-containerd-``, ``crio-``, ``libpod-``, ``nerdctl-``;
  the systemd driver, and CRI-O and Podman under cgroupfs).  ``crio-conmon-<id>.scope`` and
  ``libpod-conmon-<id>.scope`` hold the runtime's monitor, not the container: they name no
  container (their 64-hex id does not follow the runtime prefix, so they never match).
* a pod: ``pod<uid>`` under the cgroupfs driver, below ``kubepods`` (Guaranteed) or
  ``kubepods/burstable`` and ``kubepods/besteffort``; ``kubepods[-burstable|-besteffort]-
  pod<uid with _ for ->.slice`` under the systemd driver (also with a prefix, as kind's
  ``kubelet-kubepods-...`` when the kubelet's cgroup root is ``/kubelet``).

Paths nest: kind and minikube run the kubelet inside a Docker container, so a pod's cgroup is
under the node container's.  The innermost container and the innermost pod win, each on its
own: a pod's container inside a kind node is that container (not the node), and a container
started inside a pod's container (Docker in Docker) still belongs to that pod.

Only exact forms are accepted: a container id is 64 lowercase hex digits, a pod uid is a
canonical UUID (36 characters); anything else (uppercase, a wrong length, a static pod's
32-hex config hash) names nothing.  These are names, not proof: whoever may create a cgroup
(root, or a user below a delegated subtree) may give it any name.

A reader in a cgroup namespace of its own sees other processes' paths relative to its root,
with leading ``..`` components (``/../../kubepods.slice/...``); ids are still recognised in
what follows them.
"""

from __future__ import annotations

import functools
import re

from otel_bpf.records import UNKNOWN_WORKLOAD, Workload

_HEX64 = "[0-9a-f]{64}"
_CONTAINER = re.compile(
    rf"(?:(?:docker|cri-containerd|crio|libpod|nerdctl)-({_HEX64})(?:\.scope)?|({_HEX64}))"
)
_UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_POD_CGROUPFS = re.compile(r"pod([0-9a-f-]{36})")
_POD_SYSTEMD = re.compile(
    r"(?:[^/]*-)?kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]{36})\.slice"
)
_QOS_DIRS = ("burstable", "besteffort")
_UP = ".."
"""A component of a path seen from another cgroup namespace: an ancestor we cannot name."""

# v1 hierarchies to take a path from when the v2 one names no container, in this order:
# systemd's own tracking hierarchy, then the controllers every runtime configures.
_V1_PREFERRED = ("name=systemd", "cpu", "memory")


def container_id_of(components: list[str]) -> str | None:
    """The innermost container id named by a path's components."""
    for name in reversed(components):
        m = _CONTAINER.fullmatch(name)
        if m is not None:
            return m.group(1) or m.group(2)
    return None


def _pod_cgroupfs(components: list[str], i: int) -> tuple[str, str | None] | None:
    m = _POD_CGROUPFS.fullmatch(components[i])
    if m is None or _UUID.fullmatch(m.group(1)) is None:
        return None
    parent = components[i - 1] if i > 0 else None
    if parent == "kubepods":
        return m.group(1), "guaranteed"
    if parent in _QOS_DIRS:
        grandparent = components[i - 2] if i > 1 else None
        if grandparent in ("kubepods", _UP):
            return m.group(1), parent
        return None
    if parent == _UP:
        return m.group(1), None  # the QoS level is above what this namespace shows
    return None


def _pod_systemd(name: str) -> tuple[str, str | None] | None:
    m = _POD_SYSTEMD.fullmatch(name)
    if m is None:
        return None
    uid = m.group(2).replace("_", "-")
    if _UUID.fullmatch(uid) is None:
        return None
    return uid, m.group(1) or "guaranteed"


def pod_of(components: list[str]) -> tuple[str, str | None] | None:
    """``(pod uid, QoS class or None)`` of the innermost pod named by a path's components."""
    for i in range(len(components) - 1, -1, -1):
        found = _pod_systemd(components[i]) or _pod_cgroupfs(components, i)
        if found is not None:
            return found
    return None


def workload_of_path(path: str) -> Workload:
    """The container and pod named by one cgroup path (``/system.slice/docker-<id>.scope``)."""
    components = [c for c in path.split("/") if c]
    pod = pod_of(components)
    return Workload(
        cgroup=path,
        container_id=container_id_of(components),
        pod_uid=pod[0] if pod else None,
        qos_class=pod[1] if pod else None,
    )


def _candidate_paths(text: str) -> list[str]:
    """The paths of ``text``'s well-formed lines: the v2 one first, then the preferred v1
    ones, then the other v1 ones in file order (no duplicates)."""
    v2: str | None = None
    preferred: dict[str, str] = {}
    others: list[str] = []
    for line in text.split("\n"):
        hierarchy, sep, rest = line.partition(":")
        if not sep or not (hierarchy.isascii() and hierarchy.isdigit()):
            continue
        controllers, sep, path = rest.partition(":")
        if not sep or not path.startswith("/"):
            continue
        if hierarchy == "0" and not controllers:
            # The kernel prints a cgroup name as it is, newlines included, so a name can
            # make more lines that look like this one; they follow the real line's start.
            if v2 is None:
                v2 = path
            continue
        if hierarchy == "0" or not controllers:
            continue  # hierarchy 0 is v2 only, and a v1 hierarchy always names its controllers
        names = controllers.split(",")
        for name in _V1_PREFERRED:
            if name in names and name not in preferred:
                preferred[name] = path
        others.append(path)
    ordered = ([v2] if v2 is not None else []) + [
        preferred[n] for n in _V1_PREFERRED if n in preferred
    ]
    return list(dict.fromkeys(ordered + others))


@functools.lru_cache(maxsize=256)
def parse_proc_cgroup(text: str) -> Workload:
    """The workload of a process from its ``/proc/<pid>/cgroup`` text.

    The cgroup v2 line (``0::/path``) is the one that counts.  On a v1 or hybrid host its path
    may say nothing (``0::/`` while the runtime only uses v1), so the first path that names a
    container or a pod is taken, in this order: the v2 one, ``name=systemd``, ``cpu``,
    ``memory``, then the other v1 hierarchies.  When none names one, ``cgroup`` is the v2 path
    (else the first of that order) and the rest is None.  Malformed lines are ignored; text
    with no well-formed line gives :data:`~otel_bpf.records.UNKNOWN_WORKLOAD`.

    Cached by text: the processes of one container have the same file.
    """
    candidates = _candidate_paths(text)
    if not candidates:
        return UNKNOWN_WORKLOAD
    for path in candidates:
        found = workload_of_path(path)
        if found.container_id is not None or found.pod_uid is not None:
            return found
    return Workload(cgroup=candidates[0])

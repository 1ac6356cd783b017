"""Containers and pods from /proc/<pid>/cgroup text: a table of real-world shapes, no kernel."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_bpf.kernel.owners import process_workload, read_cgroup
from otel_bpf.records import UNKNOWN_WORKLOAD, Workload
from otel_bpf.workload import parse_proc_cgroup, workload_of_path

C1 = "ec8bf5994520b1e0285709dda72fc9f0069f488a7b56b7c5ca9660c3f99dcf73"
C2 = "05c45fae4a1941581616a248d2611ade321b80a34b2d558edfb7adec56efe055"
C3 = "2af8ecadc29763a64b0e715d28eac7cbad5136bf9c52eb92c10aa08cd3c689d0"
C4 = "f629e09e82e608746cdb8468e0d30f2d70dd21e80149a94f15cb8ab3dd15bf68"
C5 = "1420a7376e1eb30ababb314a055061a111d1a8bec0dd116f77fa989214d3f51a"
C6 = "8ef198eef0aa502074c33a265f23397e60a59107ab59bd57eee202705bb87771"
C7 = "c46903392aa5d551c6019f8cf8c7f210fc0d746fd07475bc0256f782c810a2c5"
C8 = "a5bea3945efd8d03311d40dc1e42802c801a14e484debff2206938f51217a1fb"
P1 = "aae539e1-920b-4b7a-93b8-866d97491d06"
P2 = "26988ab4-5b95-45c2-bf6d-29387c585ff9"
P3 = "0bff18c9-b619-4e5c-830b-f2a3d7a6f08f"
P4 = "bd24864b-6bfc-4f13-b51b-362dac73bc42"


def _(uid: str) -> str:
    """A pod uid as the systemd driver writes it in a slice name."""
    return uid.replace("-", "_")


def v1(path: str, *, systemd: str | None = None, v2: str | None = None) -> str:
    """A cgroup v1 file (every controller at ``path``, ``name=systemd`` at ``systemd``) with,
    when ``v2`` is given, the hybrid layout's ``0::`` line last, as the kernel prints them."""
    lines = [
        f"12:pids:{path}",
        f"11:hugetlb:{path}",
        f"10:net_cls,net_prio:{path}",
        f"9:perf_event:{path}",
        f"8:blkio:{path}",
        f"7:cpuset:{path}",
        f"6:freezer:{path}",
        f"5:memory:{path}",
        f"4:devices:{path}",
        f"3:cpu,cpuacct:{path}",
        "2:rdma:/",
        f"1:name=systemd:{systemd or path}",
    ]
    if v2 is not None:
        lines.append(f"0::{v2}")
    return "\n".join(lines) + "\n"


KP_BURST = "/kubepods.slice/kubepods-burstable.slice"
KP_BEST = "/kubepods.slice/kubepods-besteffort.slice"
POD2 = f"{KP_BURST}/kubepods-burstable-pod{_(P2)}.slice"

# (id, /proc/<pid>/cgroup text, expected (cgroup, container id, pod uid, QoS class))
CASES: list[tuple[str, str, tuple[str | None, str | None, str | None, str | None]]] = [
    # Docker
    ("docker-cgroupfs", f"0::/docker/{C1}\n", (f"/docker/{C1}", C1, None, None)),
    (
        "docker-systemd",
        f"0::/system.slice/docker-{C1}.scope\n",
        (f"/system.slice/docker-{C1}.scope", C1, None, None),
    ),
    (
        "docker-systemd-with-systemd-inside",
        f"0::/system.slice/docker-{C1}.scope/init.scope\n",
        (f"/system.slice/docker-{C1}.scope/init.scope", C1, None, None),
    ),
    (
        "docker-rootless-cgroupfs",
        f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker.service/docker/{C1}\n",
        (
            f"/user.slice/user-1000.slice/user@1000.service/app.slice/docker.service/docker/{C1}",
            C1,
            None,
            None,
        ),
    ),
    # containerd under Kubernetes, cgroupfs driver, the three QoS classes
    (
        "containerd-cgroupfs-guaranteed",
        f"0::/kubepods/pod{P1}/{C2}\n",
        (f"/kubepods/pod{P1}/{C2}", C2, P1, "guaranteed"),
    ),
    (
        "containerd-cgroupfs-burstable",
        f"0::/kubepods/burstable/pod{P2}/{C3}\n",
        (f"/kubepods/burstable/pod{P2}/{C3}", C3, P2, "burstable"),
    ),
    (
        "containerd-cgroupfs-besteffort",
        f"0::/kubepods/besteffort/pod{P3}/{C4}\n",
        (f"/kubepods/besteffort/pod{P3}/{C4}", C4, P3, "besteffort"),
    ),
    # containerd under Kubernetes, systemd driver, the three QoS classes
    (
        "containerd-systemd-guaranteed",
        f"0::/kubepods.slice/kubepods-pod{_(P1)}.slice/cri-containerd-{C2}.scope\n",
        (
            f"/kubepods.slice/kubepods-pod{_(P1)}.slice/cri-containerd-{C2}.scope",
            C2,
            P1,
            "guaranteed",
        ),
    ),
    (
        "containerd-systemd-burstable",
        f"0::{POD2}/cri-containerd-{C3}.scope\n",
        (f"{POD2}/cri-containerd-{C3}.scope", C3, P2, "burstable"),
    ),
    (
        "containerd-systemd-besteffort",
        f"0::{KP_BEST}/kubepods-besteffort-pod{_(P3)}.slice/cri-containerd-{C4}.scope\n",
        (
            f"{KP_BEST}/kubepods-besteffort-pod{_(P3)}.slice/cri-containerd-{C4}.scope",
            C4,
            P3,
            "besteffort",
        ),
    ),
    ("pod-slice-without-container", f"0::{POD2}\n", (POD2, None, P2, "burstable")),
    ("qos-slice-alone", f"0::{KP_BEST}\n", (KP_BEST, None, None, None)),
    (
        "static-pod-config-hash-is-no-uid",
        f"0::{KP_BURST}/kubepods-burstable-pod{'7' * 32}.slice/cri-containerd-{C2}.scope\n",
        (
            f"{KP_BURST}/kubepods-burstable-pod{'7' * 32}.slice/cri-containerd-{C2}.scope",
            C2,
            None,
            None,
        ),
    ),
    # CRI-O
    (
        "crio-systemd",
        f"0::{POD2}/crio-{C5}.scope\n",
        (f"{POD2}/crio-{C5}.scope", C5, P2, "burstable"),
    ),
    (
        "crio-systemd-crun-container-subgroup",
        f"0::{POD2}/crio-{C5}.scope/container\n",
        (f"{POD2}/crio-{C5}.scope/container", C5, P2, "burstable"),
    ),
    (
        "crio-conmon-is-skipped",
        f"0::{POD2}/crio-conmon-{C5}.scope\n",
        (f"{POD2}/crio-conmon-{C5}.scope", None, P2, "burstable"),
    ),
    (
        "crio-cgroupfs",
        f"0::/kubepods/burstable/pod{P2}/crio-{C5}\n",
        (f"/kubepods/burstable/pod{P2}/crio-{C5}", C5, P2, "burstable"),
    ),
    (
        "crio-cgroupfs-conmon-is-skipped",
        f"0::/kubepods/burstable/pod{P2}/crio-conmon-{C5}\n",
        (f"/kubepods/burstable/pod{P2}/crio-conmon-{C5}", None, P2, "burstable"),
    ),
    # Podman
    (
        "podman-rootful",
        f"0::/machine.slice/libpod-{C6}.scope\n",
        (f"/machine.slice/libpod-{C6}.scope", C6, None, None),
    ),
    (
        "podman-conmon-is-skipped",
        f"0::/machine.slice/libpod-conmon-{C6}.scope\n",
        (f"/machine.slice/libpod-conmon-{C6}.scope", None, None, None),
    ),
    (
        "podman-rootless",
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C6}.scope/container\n",
        (
            f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C6}.scope/container",
            C6,
            None,
            None,
        ),
    ),
    (
        "podman-cgroupfs",
        f"0::/libpod_parent/libpod-{C6}\n",
        (f"/libpod_parent/libpod-{C6}", C6, None, None),
    ),
    # nerdctl / plain containerd
    (
        "nerdctl-systemd",
        f"0::/system.slice/nerdctl-{C7}.scope\n",
        (f"/system.slice/nerdctl-{C7}.scope", C7, None, None),
    ),
    ("containerd-cgroupfs-namespace", f"0::/default/{C7}\n", (f"/default/{C7}", C7, None, None)),
    ("ecs-task", f"0::/ecs/{'3' * 32}/{C3}\n", (f"/ecs/{'3' * 32}/{C3}", C3, None, None)),
    # No container
    (
        "systemd-service",
        "0::/system.slice/sshd.service\n",
        ("/system.slice/sshd.service", None, None, None),
    ),
    (
        "docker-daemon-itself",
        "0::/system.slice/docker.service\n",
        ("/system.slice/docker.service", None, None, None),
    ),
    (
        "user-session",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        ("/user.slice/user-1000.slice/session-3.scope", None, None, None),
    ),
    (
        "user-app-scope",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope\n",
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope",
            None,
            None,
            None,
        ),
    ),
    ("init-scope", "0::/init.scope\n", ("/init.scope", None, None, None)),
    ("root-cgroup", "0::/\n", ("/", None, None, None)),
    (
        "non-ascii-name",
        "0::/system.slice/caf\u00e9.service\n",
        ("/system.slice/caf\u00e9.service", None, None, None),
    ),
    # Nested: the innermost container wins
    (
        "kind-node-pod-systemd",
        (
            f"0::/system.slice/docker-{C8}.scope/kubelet.slice/kubelet-kubepods.slice/"
            f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{_(P4)}.slice/"
            f"cri-containerd-{C2}.scope\n"
        ),
        (
            f"/system.slice/docker-{C8}.scope/kubelet.slice/kubelet-kubepods.slice/"
            f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{_(P4)}.slice/"
            f"cri-containerd-{C2}.scope",
            C2,
            P4,
            "besteffort",
        ),
    ),
    (
        "kind-node-own-process",
        f"0::/system.slice/docker-{C8}.scope/system.slice/containerd.service\n",
        (f"/system.slice/docker-{C8}.scope/system.slice/containerd.service", C8, None, None),
    ),
    (
        "kind-node-pod-cgroupfs",
        f"0::/docker/{C8}/kubelet/kubepods/burstable/pod{P4}/{C2}\n",
        (f"/docker/{C8}/kubelet/kubepods/burstable/pod{P4}/{C2}", C2, P4, "burstable"),
    ),
    (
        "docker-in-a-pod-container",
        f"0::/kubepods/burstable/pod{P2}/{C3}/docker/{C4}\n",
        (f"/kubepods/burstable/pod{P2}/{C3}/docker/{C4}", C4, P2, "burstable"),
    ),
    # Read from a cgroup namespace of our own: ancestors show as ".."
    (
        "private-cgroupns-systemd",
        f"0::/../../..{KP_BURST}/kubepods-burstable-pod{_(P2)}.slice/cri-containerd-{C3}.scope\n",
        (
            f"/../../..{KP_BURST}/kubepods-burstable-pod{_(P2)}.slice/cri-containerd-{C3}.scope",
            C3,
            P2,
            "burstable",
        ),
    ),
    (
        "private-cgroupns-cgroupfs-qos-hidden",
        f"0::/../../pod{P1}/{C2}\n",
        (f"/../../pod{P1}/{C2}", C2, P1, None),
    ),
    (
        "private-cgroupns-cgroupfs-qos-seen",
        f"0::/../../../burstable/pod{P2}/{C3}\n",
        (f"/../../../burstable/pod{P2}/{C3}", C3, P2, "burstable"),
    ),
    # cgroup v1 and hybrid hosts
    ("v1-docker-cgroupfs", v1(f"/docker/{C1}"), (f"/docker/{C1}", C1, None, None)),
    (
        "v1-k8s-cgroupfs",
        v1(f"/kubepods/burstable/pod{P2}/{C3}"),
        (f"/kubepods/burstable/pod{P2}/{C3}", C3, P2, "burstable"),
    ),
    (
        "hybrid-docker-systemd",
        v1(f"/system.slice/docker-{C1}.scope", v2=f"/system.slice/docker-{C1}.scope"),
        (f"/system.slice/docker-{C1}.scope", C1, None, None),
    ),
    (
        "hybrid-v2-path-names-nothing",
        v1(f"/docker/{C1}", v2="/"),
        (f"/docker/{C1}", C1, None, None),
    ),
    (
        "hybrid-v2-path-of-the-runtime",
        v1(f"/docker/{C1}", v2="/system.slice/containerd.service"),
        (f"/docker/{C1}", C1, None, None),
    ),
    (
        "hybrid-no-container-keeps-the-v2-path",
        v1("/", v2="/").replace("5:memory:/", f"5:memory:/process_api/{'5' * 32}"),
        ("/", None, None, None),
    ),
    (
        "v1-only-session-takes-name-systemd",
        v1("/user.slice", systemd="/user.slice/user-1000.slice/session-2.scope"),
        ("/user.slice/user-1000.slice/session-2.scope", None, None, None),
    ),
    (
        "v1-combined-controllers",
        f"4:cpu,cpuacct:/docker/{C1}\n3:pids:/\n",
        (f"/docker/{C1}", C1, None, None),
    ),
    # Names that look close but are not ids
    ("uppercase-id", f"0::/docker/{C1.upper()}\n", (f"/docker/{C1.upper()}", None, None, None)),
    ("id-63", f"0::/docker/{C1[:63]}\n", (f"/docker/{C1[:63]}", None, None, None)),
    ("id-65", f"0::/docker/{C1}a\n", (f"/docker/{C1}a", None, None, None)),
    (
        "scope-without-runtime-prefix",
        f"0::/system.slice/{C1}.scope\n",
        (f"/system.slice/{C1}.scope", None, None, None),
    ),
    (
        "unknown-runtime-prefix",
        f"0::/system.slice/rkt-{C1}.scope\n",
        (f"/system.slice/rkt-{C1}.scope", None, None, None),
    ),
    (
        "docker-service-suffix",
        f"0::/system.slice/docker-{C1}.service\n",
        (f"/system.slice/docker-{C1}.service", None, None, None),
    ),
    (
        "uppercase-pod-uid",
        f"0::/kubepods/pod{P1.upper()}/{C2}\n",
        (f"/kubepods/pod{P1.upper()}/{C2}", C2, None, None),
    ),
    (
        "pod-uid-dashes-misplaced",
        f"0::/kubepods/pod{P1.replace('-', '')[:32]}----/{C2}\n",
        (f"/kubepods/pod{P1.replace('-', '')[:32]}----/{C2}", C2, None, None),
    ),
    ("pod-outside-kubepods", f"0::/srv/pod{P1}\n", (f"/srv/pod{P1}", None, None, None)),
    (
        "newline-in-a-cgroup-name-makes-no-second-v2-line",
        f"0::/user.slice/evil\n0::/docker/{C1}\n",
        ("/user.slice/evil", None, None, None),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_real_world_cgroup_files(
    text: str, expected: tuple[str | None, str | None, str | None, str | None]
) -> None:
    assert parse_proc_cgroup(text) == Workload(*expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "garbage",
        "0::",
        "0::relative/path\n",
        f"x::/docker/{C1}\n",
        f"0:cpu:/docker/{C1}\n",  # hierarchy 0 is the v2 one, which has no controllers
        f"3::/docker/{C1}\n",  # a v1 hierarchy always names its controllers
        f"\u0663::/docker/{C1}\n",  # a non-ASCII digit
    ],
)
def test_malformed_files_name_nothing(text: str) -> None:
    assert parse_proc_cgroup(text) is UNKNOWN_WORKLOAD


def test_a_path_alone_names_its_container_and_pod() -> None:
    w = workload_of_path(f"/kubepods.slice/kubepods-pod{_(P1)}.slice/cri-containerd-{C2}.scope")
    assert (w.container_id, w.pod_uid, w.qos_class) == (C2, P1, "guaranteed")
    assert workload_of_path("/") == Workload(cgroup="/")


HEX64 = re.compile("[0-9a-f]{64}")
UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_invariants(w: Workload) -> None:
    assert w.cgroup is None or w.cgroup.startswith("/")
    assert w.container_id is None or HEX64.fullmatch(w.container_id)
    assert w.container_id is None or w.container_id in (w.cgroup or "")
    assert w.pod_uid is None or UUID.fullmatch(w.pod_uid)
    assert w.qos_class in (None, "guaranteed", "burstable", "besteffort")
    assert w.qos_class is None or w.pod_uid is not None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_parses_without_error(text: str) -> None:
    check_invariants(parse_proc_cgroup(text))


# Components close to the real ones, so the search reaches the id and uid rules.
COMPONENT = st.sampled_from(
    [
        "kubepods",
        "burstable",
        "besteffort",
        "..",
        "docker",
        f"pod{P1}",
        f"pod{P1.upper()}",
        f"kubepods-pod{_(P1)}.slice",
        f"kubepods-burstable-pod{_(P2)}.slice",
        f"x-kubepods-besteffort-pod{_(P3)}",
        C1,
        C1[:-1],
        f"docker-{C2}.scope",
        f"crio-conmon-{C3}.scope",
        f"libpod-{C4}",
        "system.slice",
        "",
    ]
) | st.text(alphabet="0123456789abcdef-_.:podkubes/\n", max_size=70)
LINE = st.builds(
    lambda h, c, parts: f"{h}:{c}:/" + "/".join(parts),
    st.sampled_from(["0", "1", "12", "x", ""]),
    st.sampled_from(["", "name=systemd", "cpu,cpuacct", "memory", "pids"]),
    st.lists(COMPONENT, max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=6))
def test_cgroup_shaped_text_parses_without_error(lines: list[str]) -> None:
    check_invariants(parse_proc_cgroup("\n".join(lines) + "\n"))


def test_read_cgroup_reads_the_whole_file_and_none_for_a_gone_process() -> None:
    with open("/proc/self/cgroup") as f:
        assert read_cgroup(os.getpid()) == f.read()
    gone = 2**22 + 1  # above pid_max's largest value (4194304)
    assert read_cgroup(gone) is None
    assert process_workload(gone) is UNKNOWN_WORKLOAD

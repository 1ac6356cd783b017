"""The network namespace list: one path per namespace, the own one first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otel_bpf.kernel.namespaces import host_netns, network_namespaces


def test_own_namespace_first_and_each_namespace_once(tmp_path: Path) -> None:
    named = tmp_path / "netns"
    named.mkdir()
    (named / "stale").write_text("")  # a left-over file, not a namespace mount
    found = network_namespaces(named_dirs=(str(named),))
    own = os.stat("/proc/self/ns/net").st_ino
    assert next(iter(found)) == own
    assert found[own] == "/proc/self/ns/net"
    assert len(set(found.values())) == len(found)
    assert all(os.stat(p).st_ino == ino for ino, p in found.items() if os.path.exists(p))
    assert not any(p.startswith(str(named)) for p in found.values())
    # Process 1 may refuse (ptrace access rules): then there is no host namespace to tell.
    assert host_netns() is None or host_netns() in found


def test_unreadable_proc_gives_nothing(tmp_path: Path) -> None:
    assert network_namespaces(proc=str(tmp_path), named_dirs=()) == {}
    assert host_netns(proc=str(tmp_path)) is None


FAKE_PIDS = {"10", "11", "12", "13"}


def fake_proc(root: Path, pids: dict[int, int]) -> dict[int, str]:
    """A /proc whose processes' ns/net are hard links to files standing for namespaces:
    pid -> namespace number; returns namespace number -> the file."""
    spaces: dict[int, str] = {}
    for pid, space in pids.items():
        ns = root / str(pid) / "ns"
        ns.mkdir(parents=True)
        target = spaces.setdefault(space, str(root / f"netns{space}"))
        if not os.path.exists(target):
            Path(target).write_text("")
        os.link(target, ns / "net")
    return spaces


def test_a_process_namespace_is_read_once_and_again_in_a_full_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_bpf.kernel import namespaces

    # Files stand for namespaces here: every file system counts as nsfs.
    monkeypatch.setattr(namespaces, "_is_nsfs", lambda st: True)
    fake_proc(tmp_path, {10: 1, 11: 1, 12: 2})
    stats: list[str] = []
    real = namespaces._netns_inode
    monkeypatch.setattr(namespaces, "_netns_inode", lambda p: (stats.append(p), real(p))[1])
    known = namespaces.ProcessNamespaces(str(tmp_path), full_rescan_every=3)
    first = known.list(())
    assert sorted(Path(p).parent.parent.name for p in first.values()) == ["10", "12"]
    per_process = [p for p in stats if p.split("/")[-3] in FAKE_PIDS]
    assert len(per_process) == 3
    stats.clear()
    fake_proc(tmp_path, {13: 3})  # a new process in a new namespace
    second = known.list(())
    # Only the new process is read: the others' namespaces are remembered.
    assert [p for p in stats if p.split("/")[-3] in FAKE_PIDS] == [f"{tmp_path}/13/ns/net"]
    assert len(second) == 3
    stats.clear()
    known.list(())
    stats.clear()
    known.list(())  # the third listing since the full one: every process read again
    assert len([p for p in stats if p.split("/")[-3] in FAKE_PIDS]) == 4


def test_exited_processes_are_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from otel_bpf.kernel import namespaces

    monkeypatch.setattr(namespaces, "_is_nsfs", lambda st: True)
    fake_proc(tmp_path, {20: 5, 21: 6})
    known = namespaces.ProcessNamespaces(str(tmp_path), full_rescan_every=100)
    assert len(known.list(())) == 2
    shutil.rmtree(tmp_path / "21")
    assert [Path(p).parent.parent.name for p in known.list(()).values()] == ["20"]

"""The network namespace list: one path per namespace, the own one first."""

from __future__ import annotations

import os
from pathlib import Path

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

"""Programs, maps, links and iterators are KernelFd objects: ids known, closed exactly once,
and closing them releases the kernel object."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from kernel_progs import PASS_ALL

from otel_bpf.kernel._uapi import MapType, ProgType
from otel_bpf.kernel.errors import BpfNotFoundError
from otel_bpf.kernel.iterator.progs import ProgIterator, ProgIterLayout
from otel_bpf.kernel.loader import attach_socket_filter, load_owned_program, program_id
from otel_bpf.kernel.maps import create_owned_map, read_map
from otel_bpf.kernel.programs import read_one
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]


def gone(read: Callable[[], object], within: float = 5.0) -> bool:
    """Whether ``read`` raises BpfNotFoundError within ``within`` s (a link may let go of its
    program after an RCU grace period)."""
    deadline = time.monotonic() + within
    while True:
        try:
            read()
        except BpfNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_program_is_unloaded_when_its_kernel_fd_closes() -> None:
    with load_owned_program(ProgType.SOCKET_FILTER, PASS_ALL, "otel_t_kfd") as prog:
        assert prog.kind == "prog" and prog.id == program_id(prog)
        assert repr(prog) == f"<KernelFd prog id={prog.id} fd={prog.fileno()}>"
        assert prog.id is not None
        assert read_one(prog.id).name == "otel_t_kfd"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            attach_socket_filter(sock, prog)  # accepted where an fd number is
    assert prog.closed and prog.id is not None
    assert gone(lambda: read_one(prog.id))
    prog.close()  # idempotent


def test_map_is_freed_when_its_kernel_fd_closes() -> None:
    with create_owned_map(MapType.ARRAY, 4, 8, 1, "otel_t_kfd_map") as owned:
        assert owned.kind == "map" and owned.id
        assert read_map(owned.id).name == "otel_t_kfd_map"
    assert owned.id is not None
    assert gone(lambda: read_map(owned.id))


def test_iterator_holds_its_maps_program_and_link_and_closes_them() -> None:
    with VmlinuxBtf() as btf:
        layout = ProgIterLayout.from_btf(btf)
    with ProgIterator(layout) as it:
        kinds = [obj.kind for obj in it.objects]
        assert kinds == ["map", "map", "prog", "link"]
        assert all(obj.id for obj in it.objects)
        assert it.prog.id == it.prog_id and it.prog_fd == it.prog.fileno()
        assert any(raw.id == it.prog_id for raw in it.read())
        held = it.objects
    assert all(obj.closed for obj in held)
    assert gone(lambda: read_one(it.prog_id))
    it.close()

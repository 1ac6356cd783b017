"""Loading BPF programs from assembled bytecode (used by the demo workload and the tests)."""

from __future__ import annotations

import ctypes
import errno
import socket

from otel_bpf.kernel._uapi import (
    BPF_OBJ_NAME_LEN,
    SO_ATTACH_BPF,
    Cmd,
    InfoByFdAttr,
    ProgInfo,
    ProgLoadAttr,
)
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.fd import KernelFd, fd_number
from otel_bpf.kernel.syscall import bpf

_LOG_SIZE = 1 << 20


class VerifierError(BpfError):
    """The verifier rejected a program; ``log`` holds its explanation."""

    def __init__(self, err: int, message: str, log: str) -> None:
        super().__init__(err, message)
        self.log = log


def load_program(
    prog_type: int,
    insns: bytes,
    name: str,
    *,
    license: str = "GPL",
    expected_attach_type: int = 0,
    btf_fd: int = 0,
    func_info: bytes = b"",
    func_info_rec_size: int = 8,
    attach_btf_id: int = 0,
) -> int:
    """Load a program and return its fd (the caller closes it to unload).

    ``name`` is cut to the kernel's 15 characters; a longer name survives only through the
    BTF passed in ``btf_fd``/``func_info``.  On rejection the verifier log is in the error.
    """
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = ProgLoadAttr()
    attr.prog_type = prog_type
    attr.insn_cnt = len(insns) // 8
    attr.insns = ctypes.addressof(insn_buf)
    attr.license = ctypes.addressof(lic)
    attr.prog_name = name.encode()[: BPF_OBJ_NAME_LEN - 1]
    attr.expected_attach_type = expected_attach_type
    attr.attach_btf_id = attach_btf_id
    fi_buf = None
    if btf_fd:
        attr.prog_btf_fd = btf_fd
        if func_info:
            fi_buf = ctypes.create_string_buffer(func_info, len(func_info))
            attr.func_info = ctypes.addressof(fi_buf)
            attr.func_info_rec_size = func_info_rec_size
            attr.func_info_cnt = len(func_info) // func_info_rec_size
    try:
        return bpf(Cmd.PROG_LOAD, attr, name)
    except BpfError as first:
        if first.errno not in (errno.EINVAL, errno.EACCES, errno.E2BIG, errno.ENOSPC):
            raise
    # Load again with the verifier log on, only to explain the failure: the log costs
    # memory and time that the successful path does not need.
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr.log_level = 1
    attr.log_size = _LOG_SIZE
    attr.log_buf = ctypes.addressof(log)
    try:
        return bpf(Cmd.PROG_LOAD, attr, name)
    except BpfError as err:
        text = log.value.decode(errors="replace")
        raise VerifierError(
            err.errno or errno.EINVAL,
            f"the kernel rejected program {name!r}: {err.strerror}\n{text[-2000:]}",
            text,
        ) from None
    finally:
        del insn_buf, lic, fi_buf


def load_owned_program(
    prog_type: int,
    insns: bytes,
    name: str,
    *,
    license: str = "GPL",
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
) -> KernelFd:
    """:func:`load_program` as a :class:`KernelFd` (kind ``prog``, with the program's id):
    closing it unloads the program unless something else holds it."""
    fd = load_program(
        prog_type,
        insns,
        name,
        license=license,
        expected_attach_type=expected_attach_type,
        attach_btf_id=attach_btf_id,
    )
    return KernelFd.adopt(fd, "prog", program_id)


def attach_socket_filter(sock: socket.socket, prog_fd: KernelFd | int) -> None:
    """Attach a ``socket_filter`` program to ``sock`` (runs once per received packet)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, fd_number(prog_fd))


def program_info(prog_fd: KernelFd | int) -> ProgInfo:
    """``struct bpf_prog_info`` of the program behind ``prog_fd`` (ids, counters, sizes)."""
    fd = fd_number(prog_fd)
    info = ProgInfo()
    attr = InfoByFdAttr(fd, ctypes.sizeof(info), ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"program fd {fd}")
    return info


def program_id(prog_fd: KernelFd | int) -> int:
    """The kernel's id of the program behind ``prog_fd`` (what bpftool and procfs show)."""
    return int(program_info(prog_fd).id)

"""Maps referenced by programs: MAP_GET_FD_BY_ID + OBJ_GET_INFO_BY_FD -> :class:`MapRecord`."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from otel_bpf.kernel._uapi import (
    BPF_OBJ_NAME_LEN,
    Cmd,
    GetIdAttr,
    InfoByFdAttr,
    MapCreateAttr,
    MapInfo,
)
from otel_bpf.kernel.errors import BpfError, BpfNotFoundError
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.fdinfo import memlock_of_fd
from otel_bpf.kernel.prog_types import map_type_name
from otel_bpf.kernel.syscall import bpf, close
from otel_bpf.records import MapRecord


def record_from_map_info(info: MapInfo, memlock: int | None = None) -> MapRecord:
    """A :class:`MapRecord` from a filled ``bpf_map_info``."""
    return MapRecord(
        id=info.id,
        type=map_type_name(info.type),
        name=bytes(info.name).decode(errors="replace"),
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        memlock_bytes=memlock,
    )


def read_map(map_id: int, *, memlock: bool = True) -> MapRecord:
    """The record of map ``map_id`` (BpfNotFoundError when it is gone)."""
    fd = bpf(Cmd.MAP_GET_FD_BY_ID, GetIdAttr(start_id=map_id), f"map {map_id}")
    try:
        info = MapInfo()
        attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"map {map_id}")
        return record_from_map_info(info, memlock_of_fd(fd) if memlock else None)
    finally:
        close(fd)


def read_maps(map_ids: Iterable[int]) -> tuple[dict[int, MapRecord], list[str]]:
    """Records of the given maps, each read once; vanished maps are left out silently."""
    found: dict[int, MapRecord] = {}
    errors: list[str] = []
    tried: set[int] = set()
    for map_id in map_ids:
        if map_id in tried:
            continue
        tried.add(map_id)
        try:
            found[map_id] = read_map(map_id)
        except BpfNotFoundError:
            continue
        except (BpfError, OSError) as err:
            errors.append(f"map {map_id}: {err}")
    return found, errors


def create_map(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str = ""
) -> int:
    """``BPF_MAP_CREATE`` and return the map fd (the caller closes it)."""
    attr = MapCreateAttr(
        map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries
    )
    attr.map_name = name.encode()[: BPF_OBJ_NAME_LEN - 1]
    return bpf(Cmd.MAP_CREATE, attr, name)


def map_id(map_fd: int) -> int:
    """The kernel's id of the map behind ``map_fd``."""
    info = MapInfo()
    attr = InfoByFdAttr(bpf_fd=map_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"map fd {map_fd}")
    return int(info.id)


def create_owned_map(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str = ""
) -> KernelFd:
    """:func:`create_map` as a :class:`KernelFd` (kind ``map``, with the map's id)."""
    fd = create_map(map_type, key_size, value_size, max_entries, name)
    return KernelFd.adopt(fd, "map", map_id)

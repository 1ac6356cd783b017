"""``/proc/<pid>/fdinfo/<fd>`` of BPF objects: pure parsers and one small reader.

The kernel prints ``key:\\tvalue`` lines for BPF program, map and link fds (``memlock``,
``prog_id``, ``map_id``, ``link_type``, ...). The parsers take the text, so they are tested
without privileges; the reader is the only part that touches procfs.
"""

from __future__ import annotations

import os


def parse_fdinfo(text: str) -> dict[str, str]:
    """Every ``key: value`` line of an fdinfo text; lines without a colon are ignored."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key:
            fields[key.strip()] = value.strip()
    return fields


def int_field(fields: dict[str, str], key: str) -> int | None:
    """``fields[key]`` as an int; None when absent or not a number."""
    value = fields.get(key)
    if value is None:
        return None
    try:
        return int(value, 0) if value.startswith("0x") else int(value)
    except ValueError:
        return None


def memlock_from_fdinfo(data: bytes) -> int | None:
    """The ``memlock`` value of a program or map fdinfo, without building a dict.

    This runs once per program per pass, so it scans the bytes directly.
    """
    start = data.find(b"memlock:")
    if start < 0:
        return None
    end = data.find(b"\n", start)
    try:
        return int(data[start + 8 : end if end >= 0 else len(data)])
    except ValueError:
        return None


def prog_id_from_fdinfo(text: str) -> int | None:
    """The ``prog_id`` a program or link fdinfo names; None when absent or malformed.

    Program fds print ``prog_id`` since 4.13-era kernels; link fds print it since 5.8 (a link
    whose program was detached may omit it).
    """
    return int_field(parse_fdinfo(text), "prog_id")


def read_fdinfo_bytes(fd: int, pid: int | str = "self") -> bytes:
    """The raw fdinfo of ``fd`` in process ``pid`` (OSError if the fd or process is gone)."""
    path = f"/proc/{pid}/fdinfo/{fd}"
    f = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(f, 4096)
    finally:
        os.close(f)


def memlock_of_fd(fd: int) -> int | None:
    """``memlock`` of one of this process's BPF fds; None when procfs does not say."""
    try:
        return memlock_from_fdinfo(read_fdinfo_bytes(fd))
    except OSError:
        return None

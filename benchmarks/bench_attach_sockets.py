"""What the ``sockets`` attach-point source costs per discovery (run as root).

    python benchmarks/bench_attach_sockets.py [--sockets 0,100,1000] [--files 0,10000,100000]
                                              [--plain 0,10000] [--passes 20]

The source is one read of an ``iter/task_file`` program that visits every open file of
every process on the host, so its cost grows with the host's open files, not with its
programs.  For each number of sockets holding a filter (each its own socket filter program,
so 1,000 sockets means 1,000 programs), it prints the median milliseconds of one
:meth:`SocketSource.read` (the walk, the decoding and the attachments), first as the host
is, then with extra plain files (``/dev/null``) and extra sockets without a filter (each
passes ``bpf_sock_from_file`` and two more loads) held open by child processes.  The first
read, which loads the program (vmlinux BTF offsets, the verifier), is printed apart, and so
is a read whose records are all new (the first discovery after start, or a host whose
sockets all changed): the source keeps each record's attachment while it comes back.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from _bench import PASS_ALL, load_average, machine, median_s, raise_nofile

from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import DiscoveryContext
from otel_bpf.kernel.attach_sockets import SocketSource
from otel_bpf.kernel.loader import attach_socket_filter, load_program, program_id


def host_files() -> int:
    """Open files on the host (the first field of /proc/sys/fs/file-nr)."""
    with open("/proc/sys/fs/file-nr") as f:
        return int(f.read().split()[0])


@contextmanager
def filtered_sockets(count: int) -> Iterator[dict[int, str]]:
    """``count`` UDP sockets, each with a socket filter of its own; program id -> type."""
    with ExitStack() as stack:
        programs: dict[int, str] = {}
        for _ in range(count):
            prog = load_program(ProgType.SOCKET_FILTER, PASS_ALL, "bench_sock")
            stack.callback(os.close, prog)
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            attach_socket_filter(s, prog)
            programs[program_id(prog)] = "socket_filter"
        yield programs


# A child holding FILES open /dev/null files and PLAIN unfiltered sockets until stdin closes.
HOLDER = """
import os, resource, socket, sys
files, plain = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(files)]
held += [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(plain)]
print("ready", flush=True)
sys.stdin.read()
"""
_PER_HOLDER = 15_000  # below the usual 20,000 open files a process may have


@contextmanager
def extra_files(files: int, plain: int) -> Iterator[None]:
    """``files`` more open files that are not sockets and ``plain`` sockets without a filter,
    held by child processes (as on a real host, and past one process's open-files limit)."""
    with ExitStack() as stack:
        while files or plain:
            f = min(files, _PER_HOLDER)
            p = min(plain, _PER_HOLDER - f)
            files, plain = files - f, plain - p
            child = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(f), str(p)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            stack.callback(child.wait, 60)
            stack.callback(child.stdin.close)  # type: ignore[union-attr]
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", default="0,100,1000")
    parser.add_argument("--files", default="0,10000,100000")
    parser.add_argument("--plain", default="0,10000")
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    counts = [int(n) for n in args.sockets.split(",")]
    files = [int(n) for n in args.files.split(",")]
    plains = [int(n) for n in args.plain.split(",")]
    raise_nofile(2 * max(counts))
    print(machine(), "|", load_average())
    source = SocketSource()
    names = Names()
    try:
        for count in counts:
            with filtered_sockets(count) as programs:
                # One socket_filter program at least, or the source does not walk.
                ctx = DiscoveryContext(names, programs or {0: "socket_filter"})
                if source._iterator is None:
                    t0 = time.perf_counter()
                    source.read(ctx)
                    load_ms = (time.perf_counter() - t0) * 1e3
                    print(f"first read (loads the program): {load_ms:.1f} ms")
                found = source.read(ctx)
                assert sum(len(list(a)) for a in found.values()) >= count, found
                cold = median_s(lambda c=ctx: source.read(c), args.passes, source.forget) * 1e3
                print(f"{count:>5} filtered sockets, every record new: {cold:8.2f} ms")
                for extra in files:
                    for plain in plains:
                        with extra_files(extra, plain):
                            open_now = host_files()
                            ms = median_s(lambda c=ctx: source.read(c), args.passes) * 1e3
                        print(
                            f"{count:>5} filtered sockets, +{extra:>6} files, +{plain:>6} plain"
                            f" sockets ({open_now:>7} open on the host): {ms:8.2f} ms"
                        )
    finally:
        source.close()
        names.close()


if __name__ == "__main__":
    main()

"""What one walk of the BPF links costs at N links (run as root).

    python benchmarks/bench_attachments.py [--links 100,1000] [--passes 20]

Loads one ``iter/bpf_prog`` program (it never runs unless read, so the links cost nothing
else) and links it ``N`` times: iterator links carry a name, which takes a second info call,
the dearer case.  Prints the median milliseconds of :func:`read_link_attachments` (every
link: next id, fd, info, name, close), of a :class:`LinkWalk` (one ``iter/bpf_link`` read, no
syscall for a link already seen) and of a cached :meth:`AttachmentDiscovery.get` (what each
per-second pass pays between walks).
"""

from __future__ import annotations

import argparse
import os

from _bench import load_average, machine, median_s, raise_nofile

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.attach import LinkWalk, Names, read_link_attachments
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery
from otel_bpf.kernel.links import link_create
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf

RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])


def measure(count: int, pid: int, passes: int) -> str:
    names = Names()
    try:
        walk = median_s(lambda: read_link_attachments(names), passes)
        assert len(read_link_attachments(names)[pid]) == count
        with LinkWalk() as kept:
            fast = median_s(lambda: kept.read(names), passes)
            assert kept.fast and kept.read(names) == read_link_attachments(names)
        cache = AttachmentDiscovery(3600.0, names=names)
        cached = median_s(lambda: cache.get({pid: "tracing"}), passes * 10)
    finally:
        names.close()
    return (
        f"{count:>6} links: syscall walk {walk * 1e3:8.2f} ms ({walk / count * 1e6:.1f} µs a "
        f"link), iterator walk {fast * 1e3:.2f} ms ({fast / count * 1e6:.2f} µs a link), "
        f"cached get {cached * 1e6:.1f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", default="100,1000")
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.links.split(","))
    raise_nofile(counts[-1])
    with VmlinuxBtf() as vmlinux:
        target = vmlinux.func_id("bpf_iter_bpf_prog")
    prog = load_program(
        ProgType.TRACING,
        RETURN_0,
        "bench_iter",
        expected_attach_type=AttachType.TRACE_ITER,
        attach_btf_id=target,
    )
    links: list[int] = []
    print(machine(), "|", load_average())
    try:
        pid = program_id(prog)
        for count in counts:
            while len(links) < count:
                links.append(link_create(prog, 0, AttachType.TRACE_ITER))
            print(measure(count, pid, args.passes))
    finally:
        for fd in links:
            os.close(fd)
        os.close(prog)


if __name__ == "__main__":
    main()

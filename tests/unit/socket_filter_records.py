"""A socket filter's ProgramRecord for the sampler and snapshot tests (plain data, no kernel)."""

from __future__ import annotations

from otel_bpf.records import ProgramRecord


def socket_filter(pid: int = 1, run_cnt: int = 0, run_time_ns: int = 0) -> ProgramRecord:
    """Program ``pid`` named ``p<pid>``, loaded at ``1000 + pid``, with these counters."""
    return ProgramRecord(
        id=pid,
        type="socket_filter",
        type_id=1,
        name=f"p{pid}",
        tag="00" * 8,
        run_time_ns=run_time_ns,
        run_cnt=run_cnt,
        recursion_misses=0,
        load_time=1000.0 + pid,
        uid=0,
        verified_insns=2,
        xlated_size=16,
        jited_size=40,
        map_ids=(),
        btf_id=0,
        memlock_bytes=4096,
    )

"""bpftool's lowercase names for program and map types (``enum bpf_prog_type``/``bpf_map_type``).

The names are the ones libbpf and bpftool print (``socket_filter``, ``sched_cls``, ...). A
number this table does not know (a newer kernel) is shown as ``type_N`` rather than dropped.
"""

from __future__ import annotations

# Index = enum value, in the kernel header's order.
PROG_TYPE_NAMES: tuple[str, ...] = (
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",  # 5.14
    "netfilter",  # 6.4
)

# The program types whose ``recursion_misses`` the kernel can ever increment.  Only
# bpf_prog_inc_misses_counter() adds to it, and its callers are:
# - kernel/bpf/trampoline.c, __bpf_prog_enter_recur() and __bpf_prog_enter_sleepable_recur(),
#   chosen by bpf_trampoline_enter() when bpf_prog_check_recur() (include/linux/
#   bpf_verifier.h) is true: tracing (fentry, fexit, fmod_ret; not iterators, which a type
#   name cannot tell apart) and, since 6.13, struct_ops programs the JIT gives a private
#   stack.  lsm returns false there; ext programs are jumped to from their target program
#   (BPF_TRAMP_REPLACE), never through __bpf_prog_enter*, so a nested run counts against
#   the target.
# - kernel/trace/bpf_trace.c, trace_call_bpf() (6.7): kprobe and uprobe perf events
#   (kprobe) and tracepoints, including the syscall ones (tracepoint); and
#   kprobe_multi_link_prog_run() (6.7, kprobe).
# - kernel/trace/bpf_trace.c, __bpf_trace_run() (behind bpf_trace_run1..12): raw
#   tracepoints, writable ones, and tp_btf tracing programs.
# Everything else runs through bpf_prog_run() without a recursion guard (socket filters, XDP,
# tc, cgroup, sk_*, lwt, flow dissector, netfilter, syscall ...) or skips a nested run
# without counting it: perf_event's bpf_overflow_handler() (kernel/events/core.c) only
# checks bpf_prog_active and returns.  A series for those types would be zero forever.
RECURSION_CHECKED_TYPES: frozenset[str] = frozenset(
    {"kprobe", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "tracing", "struct_ops"}
)


def can_count_recursion_misses(type_name: str) -> bool:
    """Whether the kernel can count recursion misses for programs of ``type_name``.

    A type newer than :data:`PROG_TYPE_NAMES` (``type_N``) may be recursion-checked: its
    counter is kept rather than hidden."""
    return type_name in RECURSION_CHECKED_TYPES or type_name not in PROG_TYPE_NAMES


MAP_TYPE_NAMES: tuple[str, ...] = (
    "unspec",
    "hash",
    "array",
    "prog_array",
    "perf_event_array",
    "percpu_hash",
    "percpu_array",
    "stack_trace",
    "cgroup_array",
    "lru_hash",
    "lru_percpu_hash",
    "lpm_trie",
    "array_of_maps",
    "hash_of_maps",
    "devmap",
    "sockmap",
    "cpumap",
    "xskmap",
    "sockhash",
    "cgroup_storage",
    "reuseport_sockarray",
    "percpu_cgroup_storage",
    "queue",
    "stack",
    "sk_storage",
    "devmap_hash",
    "struct_ops",
    "ringbuf",
    "inode_storage",
    "task_storage",
    "bloom_filter",  # 5.16
    "user_ringbuf",  # 6.1
    "cgrp_storage",  # 6.2
    "arena",  # 6.9
)


def prog_type_name(type_id: int) -> str:
    """bpftool's name for program type ``type_id``, or ``type_N`` for an unknown number."""
    if 0 <= type_id < len(PROG_TYPE_NAMES):
        return PROG_TYPE_NAMES[type_id]
    return f"type_{type_id}"


def map_type_name(type_id: int) -> str:
    """bpftool's name for map type ``type_id``, or ``type_N`` for an unknown number."""
    if 0 <= type_id < len(MAP_TYPE_NAMES):
        return MAP_TYPE_NAMES[type_id]
    return f"type_{type_id}"

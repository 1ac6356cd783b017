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

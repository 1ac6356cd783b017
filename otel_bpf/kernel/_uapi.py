"""ctypes mirrors of the parts of ``include/uapi/linux/bpf.h`` that otel_bpf uses.

Layouts follow the kernel header field for field.  Fields that appeared after Linux 5.8
carry the version that added them: the kernel copies back only as many bytes of an info
struct as it knows (and reports that length in ``info_len``), so a field past that
length was not filled in and must be treated as unknown, not as zero.
"""

from __future__ import annotations

import ctypes
import enum

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s32 = ctypes.c_int32
s64 = ctypes.c_int64

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8


class Cmd(enum.IntEnum):
    """``enum bpf_cmd``."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    TASK_FD_QUERY = 20
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    ITER_CREATE = 33
    LINK_DETACH = 34
    PROG_BIND_MAP = 35
    TOKEN_CREATE = 36

    @property
    def uapi_name(self) -> str:
        """The name as the kernel header spells it, e.g. ``BPF_ENABLE_STATS``."""
        return "BPF_" + self.name


BPF_STATS_RUN_TIME = 0


class GetIdAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_*_GET_NEXT_ID`` and ``BPF_*_GET_FD_BY_ID``."""

    _fields_ = [
        ("start_id", u32),  # also prog_id / map_id / btf_id / link_id
        ("next_id", u32),
        ("open_flags", u32),
    ]


class InfoByFdAttr(ctypes.Structure):
    """The ``bpf_attr.info`` member used by ``BPF_OBJ_GET_INFO_BY_FD``."""

    _fields_ = [
        ("bpf_fd", u32),
        ("info_len", u32),
        ("info", u64),
    ]


class EnableStatsAttr(ctypes.Structure):
    """The ``bpf_attr.enable_stats`` member (Linux 5.8)."""

    _fields_ = [("type", u32)]


class ProgInfo(ctypes.Structure):
    """``struct bpf_prog_info``."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", u8 * BPF_TAG_SIZE),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", u64),
        ("xlated_prog_insns", u64),
        ("load_time", u64),  # ns since boot (CLOCK_BOOTTIME)
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", u64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("gpl_compatible", u32),  # bit 0; the other 31 bits are padding
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("nr_jited_ksyms", u32),
        ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64),
        ("jited_func_lens", u64),
        ("btf_id", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("nr_func_info", u32),
        ("nr_line_info", u32),
        ("line_info", u64),
        ("jited_line_info", u64),
        ("nr_jited_line_info", u32),
        ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32),
        ("nr_prog_tags", u32),
        ("prog_tags", u64),
        ("run_time_ns", u64),  # 5.1
        ("run_cnt", u64),  # 5.1
        ("recursion_misses", u64),  # 5.12
        ("verified_insns", u32),  # 5.16
        ("attach_btf_obj_id", u32),  # 6.0
        ("attach_btf_id", u32),  # 6.0
        ("_pad", u32),  # the struct is aligned(8)
    ]


class LinkInfoHead(ctypes.Structure):
    """The first fields of ``struct bpf_link_info`` (the kernel fills what fits)."""

    _fields_ = [("type", u32), ("id", u32), ("prog_id", u32)]


class MapInfo(ctypes.Structure):
    """``struct bpf_map_info``."""

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("btf_id", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_id", u32),  # 6.7
        ("map_extra", u64),  # 5.16
        ("hash", u64),  # 6.16
        ("hash_size", u32),  # 6.16
        ("_pad", u32),
    ]


class BtfInfo(ctypes.Structure):
    """``struct bpf_btf_info``."""

    _fields_ = [
        ("btf", u64),
        ("btf_size", u32),
        ("id", u32),
        ("name", u64),  # 5.11
        ("name_len", u32),  # 5.11
        ("kernel_btf", u32),  # 5.11
    ]


class FuncInfo(ctypes.Structure):
    """``struct bpf_func_info``: one record of a program's BTF func_info array."""

    _fields_ = [("insn_off", u32), ("type_id", u32)]


def filled(info: ctypes.Structure, field: str, info_len: int) -> bool:
    """Whether ``field`` lies within the ``info_len`` bytes the kernel filled in."""
    desc = getattr(type(info), field)
    return bool(desc.offset + desc.size <= info_len)


class ProgLoadAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_PROG_LOAD``."""

    _fields_ = [
        ("prog_type", u32),
        ("insn_cnt", u32),
        ("insns", u64),
        ("license", u64),
        ("log_level", u32),
        ("log_size", u32),
        ("log_buf", u64),
        ("kern_version", u32),
        ("prog_flags", u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", u32),
        ("expected_attach_type", u32),
        ("prog_btf_fd", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("func_info_cnt", u32),
        ("line_info_rec_size", u32),
        ("line_info", u64),
        ("line_info_cnt", u32),
        ("attach_btf_id", u32),
        ("attach_prog_fd", u32),  # also attach_btf_obj_fd
        ("core_relo_cnt", u32),  # 5.17
        ("fd_array", u64),
        ("core_relos", u64),
        ("core_relo_rec_size", u32),
        ("log_true_size", u32),  # 6.4
    ]


class ProgType(enum.IntEnum):
    """``enum bpf_prog_type`` values the project loads itself."""

    SOCKET_FILTER = 1
    SCHED_CLS = 3
    SCHED_ACT = 4
    XDP = 6
    CGROUP_SKB = 8
    RAW_TRACEPOINT = 17
    SK_REUSEPORT = 21
    TRACING = 26


class BtfLoadAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_BTF_LOAD``."""

    _fields_ = [
        ("btf", u64),
        ("btf_log_buf", u64),
        ("btf_size", u32),
        ("btf_log_size", u32),
        ("btf_log_level", u32),
        ("btf_log_true_size", u32),  # 6.4
        ("btf_flags", u32),  # 6.9
        ("btf_token_fd", u32),  # 6.9
    ]


class LinkCreateAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_LINK_CREATE`` (5.7), with the tail zeroed."""

    _fields_ = [
        ("prog_fd", u32),
        ("target_fd", u32),  # also target_ifindex
        ("attach_type", u32),
        ("flags", u32),
        ("_tail", u64 * 6),  # per-attach-type unions we do not use; must stay zero
    ]


class MapType(enum.IntEnum):
    """``enum bpf_map_type`` values the project creates itself."""

    HASH = 1
    ARRAY = 2
    PERCPU_ARRAY = 6
    SOCKMAP = 15
    SOCKHASH = 18


class AttachType(enum.IntEnum):
    """``enum bpf_attach_type`` values the project attaches with."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    TRACE_RAW_TP = 23
    TRACE_FENTRY = 24
    TRACE_ITER = 28  # 5.8
    XDP = 37
    SK_REUSEPORT_SELECT = 39  # 5.1
    SK_REUSEPORT_SELECT_OR_MIGRATE = 40  # 5.14
    TCX_INGRESS = 46  # 6.6
    TCX_EGRESS = 47  # 6.6


# Every ``enum bpf_attach_type`` name in value order, lowercase without ``BPF_`` (as bpftool
# prints them); a value past the end is written ``type_N``.
ATTACH_TYPE_NAMES: tuple[str, ...] = (
    "cgroup_inet_ingress",
    "cgroup_inet_egress",
    "cgroup_inet_sock_create",
    "cgroup_sock_ops",
    "sk_skb_stream_parser",
    "sk_skb_stream_verdict",
    "cgroup_device",
    "sk_msg_verdict",
    "cgroup_inet4_bind",
    "cgroup_inet6_bind",
    "cgroup_inet4_connect",
    "cgroup_inet6_connect",
    "cgroup_inet4_post_bind",
    "cgroup_inet6_post_bind",
    "cgroup_udp4_sendmsg",
    "cgroup_udp6_sendmsg",
    "lirc_mode2",
    "flow_dissector",
    "cgroup_sysctl",
    "cgroup_udp4_recvmsg",
    "cgroup_udp6_recvmsg",
    "cgroup_getsockopt",
    "cgroup_setsockopt",
    "trace_raw_tp",
    "trace_fentry",
    "trace_fexit",
    "modify_return",
    "lsm_mac",
    "trace_iter",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_getpeername",
    "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname",
    "xdp_devmap",
    "cgroup_inet_sock_release",
    "xdp_cpumap",
    "sk_lookup",
    "xdp",
    "sk_skb_verdict",
    "sk_reuseport_select",
    "sk_reuseport_select_or_migrate",
    "perf_event",
    "trace_kprobe_multi",
    "lsm_cgroup",
    "struct_ops",
    "netfilter",
    "tcx_ingress",
    "tcx_egress",
    "trace_uprobe_multi",
    "cgroup_unix_connect",
    "cgroup_unix_sendmsg",
    "cgroup_unix_recvmsg",
    "cgroup_unix_getpeername",
    "cgroup_unix_getsockname",
    "netkit_primary",
    "netkit_peer",
    "trace_kprobe_session",
    "trace_uprobe_session",
)


def attach_type_name(value: int) -> str:
    """The lowercase name of ``enum bpf_attach_type`` value ``value`` (``type_N`` if unknown)."""
    return ATTACH_TYPE_NAMES[value] if 0 <= value < len(ATTACH_TYPE_NAMES) else f"type_{value}"


class LinkType(enum.IntEnum):
    """``enum bpf_link_type``, with the release that added each."""

    RAW_TRACEPOINT = 1  # 5.8
    TRACING = 2
    CGROUP = 3
    ITER = 4
    NETNS = 5
    XDP = 6  # 5.9
    PERF_EVENT = 7  # 5.15
    KPROBE_MULTI = 8  # 5.18
    STRUCT_OPS = 9  # 6.4
    NETFILTER = 10  # 6.4
    TCX = 11  # 6.6
    UPROBE_MULTI = 12  # 6.6
    NETKIT = 13  # 6.7
    SOCKMAP = 14  # 6.10


class PerfEventType(enum.IntEnum):
    """``enum bpf_perf_event_type`` (``bpf_link_info.perf_event.type``, 6.6)."""

    UPROBE = 1
    URETPROBE = 2
    KPROBE = 3
    KRETPROBE = 4
    TRACEPOINT = 5
    EVENT = 6


BPF_LINK_INFO_SIZE = 64
"""``sizeof(struct bpf_link_info)``: 12 bytes of head, 4 of padding (the union holds 64-bit
pointers), and a 48-byte union (perf_event, uprobe_multi).  The union's members by link
type, as byte offsets from the start of the struct (every member starts at 16):

* raw_tracepoint: tp_name ptr @16, tp_name_len u32 @24, cookie u64 @32 (6.11);
* tracing: attach_type @16, target_obj_id @20, target_btf_id @24 (5.13), cookie @32 (6.11);
* cgroup: cgroup_id u64 @16, attach_type @24;
* iter: target_name ptr @16, target_name_len @24 (5.9), map.map_id @28, cgroup_id u64 @32,
  order @40 / task.tid @32, task.pid @36;
* netns: netns_ino @16, attach_type @20;  xdp: ifindex @16;  struct_ops: map_id @16;
* netfilter: pf @16, hooknum @20, priority s32 @24, flags @28;
* kprobe_multi: addrs ptr @16, count @24, flags @28, missed u64 @32 (6.9), cookies @40;
* uprobe_multi: path ptr @16, offsets @24, ref_ctr_offsets @32, cookies @40, path_size @48,
  count @52, flags @56, pid @60;
* perf_event: type @16, then at @24 per type: uprobe file_name ptr, name_len @32, offset @36;
  kprobe func_name ptr, name_len @32, offset @36, addr u64 @40, missed @48, cookie @56;
  tracepoint tp_name ptr, name_len @32; event config u64 @24, type @32;
* tcx, netkit: ifindex @16, attach_type @20;  sockmap: map_id @16, attach_type @20.

A field the running kernel does not fill stays zero (the buffer is zeroed before each call).
"""


class MapCreateAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_MAP_CREATE``."""

    _fields_ = [
        ("map_type", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("inner_map_fd", u32),
        ("numa_node", u32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", u32),
        ("btf_fd", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("map_extra", u64),  # 5.16
    ]


class Helper(enum.IntEnum):
    """``enum bpf_func_id`` values the iterator programs call."""

    GET_CURRENT_PID_TGID = 14
    PROBE_READ_KERNEL = 113  # 5.5
    SEQ_WRITE = 127  # 5.7
    SOCK_FROM_FILE = 162  # 5.11
    MAP_LOOKUP_PERCPU_ELEM = 195  # 5.19


class TestRunAttr(ctypes.Structure):
    """The ``bpf_attr.test`` member used by ``BPF_PROG_TEST_RUN`` (4.12; ``cpu`` 5.10)."""

    __test__ = False  # not a pytest test class, whatever its name
    _fields_ = [
        ("prog_fd", u32),
        ("retval", u32),
        ("data_size_in", u32),
        ("data_size_out", u32),
        ("data_in", u64),
        ("data_out", u64),
        ("repeat", u32),
        ("duration", u32),
        ("ctx_size_in", u32),
        ("ctx_size_out", u32),
        ("ctx_in", u64),
        ("ctx_out", u64),
        ("flags", u32),
        ("cpu", u32),
        ("batch_size", u32),
        ("_pad", u32),
    ]


class IterCreateAttr(ctypes.Structure):
    """The ``bpf_attr.iter_create`` member used by ``BPF_ITER_CREATE`` (5.8)."""

    _fields_ = [("link_fd", u32), ("flags", u32)]


class MapElemAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_MAP_*_ELEM``."""

    _fields_ = [("map_fd", u32), ("_pad", u32), ("key", u64), ("value", u64), ("flags", u64)]


class ProgQueryAttr(ctypes.Structure):
    """The ``bpf_attr.query`` member used by ``BPF_PROG_QUERY`` (``target``: a target fd or
    an ifindex)."""

    _fields_ = [
        ("target", u32),
        ("attach_type", u32),
        ("query_flags", u32),
        ("attach_flags", u32),
        ("prog_ids", u64),
        ("count", u32),
        ("_pad", u32),
        ("prog_attach_flags", u64),
        ("link_ids", u64),
        ("link_attach_flags", u64),
        ("revision", u64),
    ]


class ProgAttachAttr(ctypes.Structure):
    """The ``bpf_attr`` member used by ``BPF_PROG_ATTACH`` and ``BPF_PROG_DETACH``
    (``relative_fd`` and ``expected_revision``: 6.6)."""

    _fields_ = [
        ("target_fd", u32),  # also target_ifindex
        ("attach_bpf_fd", u32),
        ("attach_type", u32),
        ("attach_flags", u32),
        ("replace_bpf_fd", u32),
        ("relative_fd", u32),  # also relative_id
        ("expected_revision", u64),
    ]


class RawTracepointOpenAttr(ctypes.Structure):
    """The ``bpf_attr.raw_tracepoint`` member used by ``BPF_RAW_TRACEPOINT_OPEN``
    (``cookie``: 6.10)."""

    _fields_ = [("name", u64), ("prog_fd", u32), ("_pad", u32), ("cookie", u64)]


# BPF_PROG_ATTACH flags a cgroup keeps per attach type (``query.attach_flags``): without
# either, the cgroup's program is the only one of its subtree.
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1


class TaskFdQueryAttr(ctypes.Structure):
    """The ``bpf_attr.task_fd_query`` member used by ``BPF_TASK_FD_QUERY`` (4.18)."""

    _fields_ = [
        ("pid", u32),
        ("fd", u32),
        ("flags", u32),
        ("buf_len", u32),  # in: buffer size; out: the name's length
        ("buf", u64),  # tracepoint name, kprobe function or uprobe file
        ("prog_id", u32),
        ("fd_type", u32),
        ("probe_offset", u64),
        ("probe_addr", u64),
    ]


class TaskFdType(enum.IntEnum):
    """``enum bpf_task_fd_type`` (``task_fd_query.fd_type``)."""

    RAW_TRACEPOINT = 0
    TRACEPOINT = 1
    KPROBE = 2
    KRETPROBE = 3
    UPROBE = 4
    URETPROBE = 5


# include/uapi/asm-generic/socket.h: setsockopt(SOL_SOCKET, SO_ATTACH_BPF, &prog_fd) attaches
# a socket filter program by fd.
SO_ATTACH_BPF = 50
SO_DETACH_BPF = 27
# ... and SO_ATTACH_REUSEPORT_EBPF the program that picks a socket of its reuseport group.
SO_ATTACH_REUSEPORT_EBPF = 52

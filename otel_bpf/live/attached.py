"""Where a program is attached, as the live view shows it: the table's short form, the detail
view's full listing and the words the filter matches (pure; every string sanitised).

Every attachment kind reads the same way whatever source found it (a BPF link, netlink, a
cgroup query, a socket scan): the text is built from :class:`~otel_bpf.records.Attachment`'s
fields only.  Targets, interface names, cgroup paths and process names come from the kernel
and from whoever named the object: untrusted, so they go through :func:`sanitize`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from otel_bpf.live.sanitize import ELLIPSIS, char_width, display_width, sanitize, truncate
from otel_bpf.records import Attachment, ProgramRecord

SHORT_MAX = 48
"""Display columns one attachment's short form takes at most (before ``+N``): the ``+N``
must stay readable when a long cgroup path or function name is cut."""

NOT_LOOKED_UP = "?"
NOWHERE = "-"

_KIND_WORDS = {
    "raw_tracepoint": "raw_tp",
    "socket": "sock",
    "tracepoint": "tp",
    "netfilter": "nf",
    "perf_event": "perf",
}
_DIRECTIONS = {"ingress": "in", "egress": "out"}
_TRACING_WORDS = {
    "trace_fentry": "fentry",
    "trace_fexit": "fexit",
    "modify_return": "fmod_ret",
    "lsm_mac": "lsm",
    "lsm_cgroup": "lsm_cgroup",
    "trace_freplace": "freplace",
}
_PROBES = frozenset({"kprobe", "kretprobe", "uprobe", "uretprobe"})
_DEVICE_KINDS = frozenset({"xdp", "tc", "tcx", "netkit"})
# cgroup2 mount points whose directory is the root itself: shown as "/".
_CGROUP_ROOTS = frozenset({"/sys/fs/cgroup", "/sys/fs/cgroup/unified"})
# Container ids (64 hex) cut as Docker shows them; pod uids (a UUID, '-' or '_' between the
# groups as the systemd driver writes it) to their first group.
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"([0-9a-f]{8})[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}")
_NETNS_DIGITS = 4
"""Last digits of a namespace's inode shown beside an interface (``eth0@ns...2280``): the
inodes of one host share their leading digits."""


def attached_text(program: ProgramRecord) -> str:
    """The Attached cell: the first attachment's short form, ``+N`` for the others; ``-``
    when none was found, ``?`` when not looked up (sanitised)."""
    found = program.attachments
    if found is None:
        return NOT_LOOKED_UP
    if not found:
        return NOWHERE
    text = short_form(found[0])
    return f"{text} +{len(found) - 1}" if len(found) > 1 else text


@lru_cache(maxsize=4096)
def short_form(a: Attachment) -> str:
    """One attachment in a few words: ``xdp eth0``, ``tc eth0 in``, ``cgroup .../x.slice``,
    ``sock python3(812)``, ``raw_tp sys_enter`` (sanitised, at most :data:`SHORT_MAX`
    columns).  Cached: every discovery (each 10 s) brings equal attachments again."""
    kind = a.kind
    if kind in _DEVICE_KINDS:
        words = [kind, _device(a), _DIRECTIONS.get(a.direction or "", sanitize(a.direction or ""))]
    elif kind == "cgroup":
        words = [kind, _cgroup_tail(a)]
    elif kind == "socket":
        words = ["sock", _process(a)]
    elif kind == "tracing":
        words = [_TRACING_WORDS.get(a.attach_type or "", "tracing"), sanitize(a.target)]
    elif kind in ("kprobe", "uprobe") and a.target.split(" ", 1)[0].split(".")[0] in _PROBES:
        words = [sanitize(a.target)]  # already "kprobe f", "kretprobe.multi 3 functions"
    else:
        words = [_KIND_WORDS.get(kind, sanitize(kind)), sanitize(a.target)]
    return _cap(" ".join(w for w in words if w), SHORT_MAX)


def _cap(text: str, width: int) -> str:
    if display_width(text) <= width:
        return text
    return truncate(text, width - 1).rstrip() + ELLIPSIS


def _device(a: Attachment) -> str:
    """The interface, with its namespace when the target names one (``eth0@ns...2280``)."""
    name, at, where = a.target.partition("@")
    shown = sanitize(a.ifname or name)
    if not at:
        return shown
    digits = re.search(r"(\d+)\D*$", where)
    if digits is None:
        return f"{shown}@{sanitize(where)}"
    return f"{shown}@ns...{digits.group(1)[-_NETNS_DIGITS:]}"


def _cgroup_tail(a: Attachment) -> str:
    """The last directory of the cgroup path, ids shortened: ``.../kubepods-pod1a2b3c4d.slice``."""
    path = (a.cgroup_path or a.target).rstrip("/")
    if path in _CGROUP_ROOTS or not path:
        return "/"
    if "/" not in path:  # not a path: "cgroup id 1234" (the directory was not found)
        return sanitize(path.removeprefix("cgroup "))
    tail = path.rsplit("/", 1)[1]
    tail = _UUID.sub(lambda m: m.group(1), _HEX64.sub(lambda m: m.group()[:12], tail))
    return ".../" + sanitize(tail)


def _process(a: Attachment) -> str:
    comm = getattr(a, "comm", None)  # not every source (or version) names the process
    if a.pid is None:
        return sanitize(a.target)
    if comm:
        return f"{sanitize(comm)}({a.pid})"
    return f"pid {a.pid}"


def filter_words(a: Attachment) -> tuple[str, ...]:
    """What the filter matches of an attachment (lowercase): its target, interface name and
    short form, raw and sanitised (so both ``\\x1b`` as typed and the raw name match)."""
    words = {a.target.lower(), sanitize(a.target).lower(), short_form(a).lower()}
    if a.ifname:
        words.update((a.ifname.lower(), sanitize(a.ifname).lower()))
    return tuple(sorted(words))


class _Haystacks:
    """Per program, the text the filter searches for its attachments, kept while the
    program's attachments read the same.

    The filter runs over every program on every frame; building the words of thousands of
    attachments each time (or hashing them for a cache) took 50 ms a frame at 2,000
    programs.  The attachments change only when discovery runs (every 10 s), and between
    runs a pass carries the very same objects, so the check is mostly an identity test.
    """

    LIMIT = 65_536
    """Entries kept at most (programs that went are dropped when it is reached)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[tuple[Attachment, ...], str]] = {}

    def get(self, program: ProgramRecord) -> str:
        found = program.attachments or ()
        entry = self._by_id.get(program.id)
        if entry is not None and (entry[0] is found or entry[0] == found):
            if entry[0] is not found:  # equal, not the same: same objects next time
                self._by_id[program.id] = (found, entry[1])
            return entry[1]
        # One string: "\n" never comes from typing, so a match never spans two words.
        text = "\n".join(w for a in found for w in filter_words(a))
        if len(self._by_id) >= self.LIMIT:
            self._by_id.clear()
        self._by_id[program.id] = (found, text)
        return text


_haystacks = _Haystacks()


def attachment_haystack(program: ProgramRecord) -> str:
    """What the filter matches of a program's attachments (:func:`filter_words` of each,
    lowercase, one string; empty for none)."""
    return _haystacks.get(program)


def detail_line(a: Attachment, width: int | None = None) -> str:
    """Everything about one attachment on one line, the target last (the longest):
    ``tcx via link 5 type tcx_ingress ifindex 1 direction ingress target lo``.  When the line
    is wider than ``width``, the target loses its start, not its end (``target ~/pod_x.slice/
    cri-containerd-...scope``): the end of a path or name is what tells it apart."""
    parts = [sanitize(a.kind), "via", sanitize(a.via)]
    if a.link_id is not None:
        parts.append(str(a.link_id) if a.via == "link" else f"link {a.link_id}")
    if a.attach_type and a.attach_type != a.kind:
        parts += ["type", sanitize(a.attach_type)]
    comm = getattr(a, "comm", None)
    fields: Sequence[tuple[str, object]] = (
        # How the target cgroup takes programs attached without a link (multi, override).
        ("flags", a.attach_flags),
        ("ifindex", a.ifindex),
        ("ifname", a.ifname if a.ifname != a.target else None),
        ("netns", a.netns),
        ("direction", a.direction),
        ("mode", a.mode),
        ("priority", a.priority),
        ("pid", a.pid),
        ("fd", a.fd),
        ("process", comm or None),
        ("map", a.map_id),
        ("prog", a.target_prog_id),
        # A container as Docker shows it, by its first 12 digits.
        ("container", a.container_id[:12] if a.container_id else None),
        ("pod", a.pod_uid),
        ("qos", a.qos_class),
    )
    parts += [f"{name} {sanitize(str(value))}" for name, value in fields if value is not None]
    head = " ".join([*parts, "target", ""])
    target = sanitize(a.target) or "-"
    room = width - display_width(head) if width is not None else None
    if room is not None and display_width(target) > room > 1:
        target = ELLIPSIS + keep_end(target, room - 1)
    return head + target


def keep_end(text: str, width: int) -> str:
    """The longest end of sanitised ``text`` at most ``width`` columns wide."""
    used = 0
    start = len(text)
    while start > 0:
        w = char_width(text[start - 1])
        if used + w > width:
            break
        used += w
        start -= 1
    return text[start:]


def detail_lines(
    attachments: Sequence[Attachment] | None, rows: int, width: int | None = None
) -> list[str]:
    """The detail view's Attached section in at most ``rows`` lines (at least 3): a title,
    one line per attachment (at most ``width`` columns, :func:`detail_line`), and
    ``+N more`` in the last line when they do not all fit."""
    if attachments is None:
        return ["Attached: not looked up"]
    if not attachments:
        return ["Attached: nowhere found"]
    lines = [f"Attached: {len(attachments)}"]
    room = max(rows, 3) - 1
    # All when they fit, else one line fewer: the last says how many are left out.
    shown = len(attachments) if len(attachments) <= room else room - 1
    inner = width - 2 if width is not None else None
    lines += [f"  {detail_line(a, inner)}" for a in attachments[:shown]]
    if shown < len(attachments):
        lines.append(f"  +{len(attachments) - shown} more")
    return lines

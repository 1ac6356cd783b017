"""What the live view shows and where the user is: pure state and pure key transitions.

The selection is a program id, never a row number, so it stays on the same program when the
rows re-sort or refresh.  Filter and sort are applied by :func:`visible_rows` on every frame,
so a change shows at once rather than at the next sample.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter, itemgetter
from typing import overload

from otel_bpf.live.attached import attached_text, attachment_haystack
from otel_bpf.live.keys import Key, KeyEvent
from otel_bpf.live.sanitize import sanitize
from otel_bpf.records import ProgramRecord
from otel_bpf.snapshot import CpuSample, ProgramSample


class Mode(enum.Enum):
    """Which screen is up, or what the keyboard is doing on the table."""

    TABLE = "table"
    FILTER = "filter"
    """The table, with keys typing into the filter."""
    SORT = "sort"
    """The table, with keys choosing the sort column and direction."""
    DETAIL = "detail"
    HELP = "help"


class Column(enum.Enum):
    """The table's columns, in display order."""

    ID = "id"
    TYPE = "type"
    NAME = "name"
    PERIOD_AVG = "period_avg"
    TOTAL_AVG = "total_avg"
    EVENTS = "events"
    CPU = "cpu"
    MAX_CPU = "max_cpu"
    """The busiest CPU's share of its time and its number (with per-CPU figures only)."""
    PROCESS = "process"
    ATTACHED = "attached"
    """Where the program is attached (:func:`otel_bpf.live.attached.attached_text`)."""

    @property
    def numeric(self) -> bool:
        """Right-aligned, sorted numerically, descending first."""
        return self in (
            Column.PERIOD_AVG,
            Column.TOTAL_AVG,
            Column.EVENTS,
            Column.CPU,
            Column.MAX_CPU,
        )


COLUMNS: tuple[Column, ...] = tuple(Column)
"""Every column, in display order (cells are kept in this order)."""

PER_CPU_COLUMNS: frozenset[Column] = frozenset({Column.MAX_CPU})
"""Columns offered only when the sampler reads per-CPU counters."""

PLAIN_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if c not in PER_CPU_COLUMNS)


def table_columns(per_cpu: bool) -> tuple[Column, ...]:
    """The columns the table offers (to show, to sort by): those needing per-CPU figures
    only when the sampler reads them."""
    return COLUMNS if per_cpu else PLAIN_COLUMNS


DIRECT_SORT_KEYS: dict[str, Column] = {
    "c": Column.CPU,
    "e": Column.EVENTS,
    "r": Column.PERIOD_AVG,
    "t": Column.TOTAL_AVG,
    "i": Column.ID,
    "n": Column.NAME,
    "p": Column.PROCESS,
    "m": Column.MAX_CPU,
}
"""Keys that sort by a column at once (pressing the same key again flips the direction);
a key whose column the table does not offer does nothing."""


def display_name(program: ProgramRecord) -> str:
    """The program's name as shown (sanitised; ``-`` for an unnamed program)."""
    return sanitize(program.name) if program.name else "-"


def process_text(program: ProgramRecord) -> str:
    """The owners as ``comm(pid)``, joined; ``-`` for none or not looked up (sanitised)."""
    if not program.owners:
        return "-"
    return ", ".join(f"{sanitize(o.comm)}({o.pid})" for o in program.owners)


def sort_value(sample: ProgramSample, column: Column) -> float | str | None:
    """The value a column sorts by (None sorts last in both directions)."""
    p = sample.program
    if column is Column.ID:
        return p.id
    if column is Column.TYPE:
        return p.type.lower()
    if column is Column.NAME:
        return p.name.lower() if p.name else None
    if column is Column.PROCESS:
        return process_text(p).lower() if p.owners else None
    if column is Column.ATTACHED:
        return attached_text(p).lower() if p.attachments else None
    if column is Column.PERIOD_AVG:
        return sample.period_avg_runtime_ns
    if column is Column.TOTAL_AVG:
        return sample.total_avg_runtime_ns
    if column is Column.EVENTS:
        return sample.events_per_sec
    if column is Column.MAX_CPU:
        return max_cpu_share(sample)
    return sample.cpu_percent


_SHARE = attrgetter("cpu_utilization")


def busiest_cpu(sample: ProgramSample) -> CpuSample | None:
    """The CPU where the program took the largest share of the CPU's time over the last
    period (the lowest-numbered of equals); None without per-CPU figures for the period."""
    cpus = sample.per_cpu
    if not cpus or cpus[0].cpu_utilization is None:
        return None
    # A period's shares are all known or all unknown (snapshot.derive_per_cpu).
    return max(cpus, key=_SHARE)


def max_cpu_share(sample: ProgramSample) -> float | None:
    """The busiest CPU's share of its time over the last period (0..1), or None.

    Computed by C-level ``max`` over the shares: sorting by it runs on every frame, for
    every program and possible CPU."""
    cpus = sample.per_cpu
    if not cpus or cpus[0].cpu_utilization is None:
        return None
    share: float = max(map(_SHARE, cpus))  # all known, see busiest_cpu
    return share


@dataclass(frozen=True, slots=True)
class ViewState:
    """Everything the user has chosen.  Replace it, never mutate it."""

    mode: Mode = Mode.TABLE
    selected_id: int | None = None
    selected_index: int = 0
    """Row of the selection when last seen: where the selection lands if its program goes."""
    scroll: int = 0
    """Index of the first table row on screen."""
    filter_text: str = ""
    sort_column: Column = Column.CPU
    sort_desc: bool = True
    sort_cursor: Column = Column.CPU
    """Column highlighted while choosing a sort (``s``)."""
    detail_id: int | None = None
    """The program of the detail view; it stays put even when the program goes."""
    help_from: Mode = Mode.TABLE
    """Screen to go back to when help closes."""


class Action(enum.Enum):
    """What the app should do after a key."""

    NONE = "none"
    QUIT = "quit"
    REDRAW = "redraw"
    """Repaint everything from scratch (Ctrl-L)."""


def matches(sample: ProgramSample, needle: str) -> bool:
    """Whether the filter text ``needle`` matches name, type, process or where the program
    is attached (an attach target, an interface name, the Attached text; any case)."""
    if not needle:
        return True
    needle = needle.lower()
    p = sample.program
    if needle in p.name.lower() or needle in sanitize(p.name).lower():
        return True
    if needle in p.type.lower():
        return True
    if p.owners and any(
        needle in o.comm.lower() or needle in f"{sanitize(o.comm)}({o.pid})".lower()
        for o in p.owners
    ):
        return True
    if p.attachments:
        return needle in attachment_haystack(p)
    return False


_BY_ID = attrgetter("program.id")

_FIGURE_KEYS: dict[Column, Callable[[ProgramSample], float | None]] = {
    Column.PERIOD_AVG: attrgetter("period_avg_runtime_ns"),
    Column.TOTAL_AVG: attrgetter("total_avg_runtime_ns"),
    Column.EVENTS: attrgetter("events_per_sec"),
    Column.CPU: attrgetter("cpu_percent"),
    Column.MAX_CPU: max_cpu_share,
}
""":func:`sort_value` of the number columns, as C-level getters: every frame sorts every
program."""


def visible_rows(samples: Iterable[ProgramSample], state: ViewState) -> list[ProgramSample]:
    """The table's rows: filtered, then sorted (ties and unknown values in id order)."""
    column = state.sort_column
    needle = state.filter_text
    rows = sorted((s for s in samples if matches(s, needle)) if needle else samples, key=_BY_ID)
    key = _FIGURE_KEYS.get(column)
    values = list(map(key, rows)) if key else [sort_value(s, column) for s in rows]
    known = [(v, s) for v, s in zip(values, rows, strict=True) if v is not None]
    unknown = [s for v, s in zip(values, rows, strict=True) if v is None]
    known.sort(key=itemgetter(0), reverse=state.sort_desc)  # stable: ties keep id order
    return [sample for _, sample in known] + unknown


class RowIds(Sequence[int]):
    """The table's row ids with lookups in constant time (:func:`apply_key` finds the
    selection in them on every move, and a paste is thousands of moves)."""

    def __init__(self, ids: Iterable[int]) -> None:
        self._ids = list(ids)
        self._rows = {prog_id: row for row, prog_id in enumerate(self._ids)}

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        return self._ids[index]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._rows

    def index(self, value: object, start: int = 0, stop: int = sys.maxsize) -> int:
        row = self._rows.get(value) if isinstance(value, int) else None
        if row is None or not start <= row < stop:
            raise ValueError(f"{value!r} is not in the rows")
        return row


def reconcile(state: ViewState, ids: Sequence[int], page: int) -> ViewState:
    """``state`` with the selection on a row that exists and the scroll showing it."""
    page = max(page, 1)
    if not ids:
        return replace(state, selected_id=None, scroll=0)
    try:
        index = ids.index(state.selected_id) if state.selected_id is not None else -1
    except ValueError:
        index = -1
    if index < 0:
        # The selected program is gone or filtered out: stay at the same height.
        index = min(max(state.selected_index, 0), len(ids) - 1)
    scroll = state.scroll
    if index < scroll:
        scroll = index
    elif index >= scroll + page:
        scroll = index - page + 1
    scroll = min(max(scroll, 0), max(len(ids) - page, 0))
    return replace(state, selected_id=ids[index], selected_index=index, scroll=scroll)


def _move(state: ViewState, ids: Sequence[int], page: int, to: int | None, by: int) -> ViewState:
    if not ids:
        return state
    if state.selected_id in ids:
        current = ids.index(state.selected_id)
    else:
        current = min(state.selected_index, len(ids) - 1)
    index = to if to is not None else current + by
    index = min(max(index, 0), len(ids) - 1)
    return reconcile(replace(state, selected_id=ids[index], selected_index=index), ids, page)


def sort_by(state: ViewState, column: Column, desc: bool | None = None) -> ViewState:
    """Sort by ``column``: the given direction, else flip when already sorted by it, else
    the natural first direction (numbers high to low, text and ids A to Z)."""
    if desc is None:
        desc = not state.sort_desc if state.sort_column is column else column.numeric
    return replace(state, sort_column=column, sort_desc=desc, sort_cursor=column)


def _navigate(state: ViewState, key: KeyEvent, ids: Sequence[int], page: int) -> ViewState | None:
    """Selection movement, after the mode has taken its own keys (None: not a move)."""
    if key in (Key.UP, "k"):
        return _move(state, ids, page, None, -1)
    if key in (Key.DOWN, "j"):
        return _move(state, ids, page, None, +1)
    if key is Key.PAGE_UP:
        return _move(state, ids, page, None, -page)
    if key is Key.PAGE_DOWN:
        return _move(state, ids, page, None, +page)
    if key in (Key.HOME, "g"):
        return _move(state, ids, page, 0, 0)
    if key in (Key.END, "G"):
        return _move(state, ids, page, len(ids) - 1, 0)
    return None


def apply_key(
    state: ViewState,
    key: KeyEvent,
    ids: Sequence[int],
    page: int,
    columns: Sequence[Column] = PLAIN_COLUMNS,
) -> tuple[ViewState, Action]:
    """The state after ``key``, given the table's current row ids and page height, and the
    columns it offers (:func:`table_columns`)."""
    if key is Key.CTRL_C:
        return state, Action.QUIT
    if key is Key.CTRL_L:
        return state, Action.REDRAW
    mode = state.mode
    if mode is Mode.FILTER:
        return _filter_key(state, key, ids, page), Action.NONE
    if key == "q":
        return state, Action.QUIT
    if mode is Mode.HELP:
        return replace(state, mode=state.help_from), Action.NONE
    if key == "?":
        return replace(state, mode=Mode.HELP, help_from=mode), Action.NONE
    if mode is Mode.DETAIL:
        if key in (Key.ESCAPE, Key.ENTER, Key.BACKSPACE, Key.LEFT, "h"):
            return replace(state, mode=Mode.TABLE), Action.NONE
        return state, Action.NONE
    if mode is Mode.SORT:
        return _sort_key(state, key, ids, page, columns), Action.NONE
    return _table_key(state, key, ids, page, columns), Action.NONE


def _direct_sort(key: KeyEvent, columns: Sequence[Column]) -> Column | None:
    column = DIRECT_SORT_KEYS.get(key) if isinstance(key, str) else None
    return column if column in columns else None


def _table_key(
    state: ViewState, key: KeyEvent, ids: Sequence[int], page: int, columns: Sequence[Column]
) -> ViewState:
    moved = _navigate(state, key, ids, page)
    if moved is not None:
        return moved
    if key is Key.ENTER:
        if state.selected_id is None:
            return state
        return replace(state, mode=Mode.DETAIL, detail_id=state.selected_id)
    if key in ("f", "/"):
        return replace(state, mode=Mode.FILTER)
    if key == "s":
        return replace(state, mode=Mode.SORT, sort_cursor=state.sort_column)
    if key is Key.ESCAPE:
        return replace(state, filter_text="")
    direct = _direct_sort(key, columns)
    if direct is not None:
        return sort_by(state, direct)
    return state


def _filter_key(state: ViewState, key: KeyEvent, ids: Sequence[int], page: int) -> ViewState:
    if key is Key.ENTER:
        return replace(state, mode=Mode.TABLE)
    if key is Key.ESCAPE:
        return replace(state, mode=Mode.TABLE, filter_text="")
    if key is Key.BACKSPACE:
        return replace(state, filter_text=state.filter_text[:-1])
    if isinstance(key, str):
        return replace(state, filter_text=(state.filter_text + key)[:200])
    moved = _navigate(state, key, ids, page)
    return moved if moved is not None else state


def _sort_key(
    state: ViewState, key: KeyEvent, ids: Sequence[int], page: int, columns: Sequence[Column]
) -> ViewState:
    if key in (Key.LEFT, "h", Key.RIGHT, "l"):
        step = -1 if key in (Key.LEFT, "h") else 1
        if state.sort_cursor in columns:
            cursor = columns.index(state.sort_cursor)
        else:  # a column the table no longer offers: start from the first one
            cursor, step = 0, 0
        return replace(state, sort_cursor=columns[(cursor + step) % len(columns)])
    if key in (Key.UP, "k"):
        return sort_by(state, state.sort_cursor, desc=False)
    if key in (Key.DOWN, "j"):
        return sort_by(state, state.sort_cursor, desc=True)
    if key is Key.ENTER:
        return replace(sort_by(state, state.sort_cursor), mode=Mode.TABLE)
    if key is Key.BACKSPACE:
        return replace(state, sort_column=Column.CPU, sort_desc=True, sort_cursor=Column.CPU)
    if key in (Key.ESCAPE, "s"):
        return replace(state, mode=Mode.TABLE)
    direct = _direct_sort(key, columns)
    if direct is not None:
        return sort_by(state, direct)
    moved = _navigate(state, key, ids, page)
    return moved if moved is not None else state

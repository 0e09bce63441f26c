"""Tool-call ids across reconnects: which ids the service's current session knows, so that an answer only ever goes
to an id it issued, and a call that ran but whose answer the service lost is never run a second time.

The service withholds resumption handles while a call runs, so a resume returns to a point before the call: the
resumed model has never heard of it and may ask for the same thing again under a new id ("open the garage",
twice). A fresh session (after a close that drops the handle) knows no earlier id at all. Either way the calls
issued after the point the service went back to are *lost*: their answers are not sent, and a re-issued call
with the same tool and arguments is answered with the lost call's result instead of being run again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..calls import ToolResponse


def call_key(name: str, args: dict[str, Any]) -> str:
    """The same tool with the same arguments, whatever the order of the keys."""
    return json.dumps([name, args], sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class _Issued:
    id: str
    name: str
    args: dict[str, Any]
    result: ToolResponse | None = None  # the answer, once the tool layer has it
    reused: bool = False  # a re-issued call took this one's result


@dataclass(frozen=True)
class Reuse:
    """A re-issued call: answer `new_id` with `earlier`'s result (now, or when `earlier` finishes)."""

    new_id: str
    earlier: str
    result: ToolResponse | None


class CallLedger:
    def __init__(self) -> None:
        self._issued: list[_Issued] = []  # every call of the conversation, in order
        self._by_id: dict[str, _Issued] = {}
        self._start = 0  # where the service's current session began in _issued (a fresh one knows no earlier id)
        self._at_handle: dict[str, tuple[int, int]] = {}  # handle → the calls its session had issued: a range
        self._known: set[str] = set()  # ids the service's current session issued (or resumed with)
        self._lost: list[_Issued] = []  # issued, but unknown to the service's current session
        self._waiting: dict[str, list[str]] = {}  # a lost call still running → re-issued ids waiting for it

    def handle(self, handle: str) -> None:
        """A resumption handle: a resume with it returns to the calls issued so far."""
        self._at_handle[handle] = (self._start, len(self._issued))

    def connected(self, handle: str | None) -> list[_Issued]:
        """A new connection, resumed with `handle` or fresh (None). Returns the calls it does not know about."""
        if handle is not None and handle in self._at_handle:
            self._start, upto = self._at_handle[handle]
        else:
            self._start = upto = len(self._issued)
        self._known = {c.id for c in self._issued[self._start : upto]}
        lost = [c for c in self._issued if c.id not in self._known and c not in self._lost and not c.reused]
        self._lost += lost
        return lost

    def issued(self, call_id: str, name: str, args: dict[str, Any]) -> Reuse | None:
        """A call from the service. None: run it. A Reuse: a lost call did this already; do not run it again."""
        self._known.add(call_id)
        key = call_key(name, args)
        earlier = next((c for c in self._lost if not c.reused and call_key(c.name, c.args) == key), None)
        entry = _Issued(call_id, name, args)
        self._issued.append(entry)
        self._by_id[call_id] = entry
        if earlier is None:
            return None
        earlier.reused = True
        entry.reused = True  # its answer is the earlier one's: it never ran, so it is never reused in turn
        if earlier.result is None:
            self._waiting.setdefault(earlier.id, []).append(call_id)
        return Reuse(call_id, earlier.id, earlier.result)

    def deliverable(self, call_id: str) -> bool:
        """Whether the service's current session issued this id (answering another one is never safe)."""
        return call_id in self._known

    def finished(self, response: ToolResponse) -> list[Reuse]:
        """A call's answer is ready; returns the re-issued calls that were waiting for it."""
        entry = self._by_id.get(response.id)
        if entry is not None and entry.result is None:
            entry.result = response
        return [Reuse(new_id, response.id, response) for new_id in self._waiting.pop(response.id, [])]

    def forget_waiting(self, call_id: str) -> None:
        """A re-issued call that was waiting was cancelled by the service: it gets no answer."""
        for waiting in self._waiting.values():
            if call_id in waiting:
                waiting.remove(call_id)

    def ran_before(self) -> list[tuple[str, dict[str, Any], ToolResponse | None]]:
        """The lost calls with their results (None: still running), for telling a fresh session what happened."""
        return [(c.name, c.args, c.result) for c in self._lost if not c.reused]

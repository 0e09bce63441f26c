"""Session resumption as the service does it: handles that snapshot a session, and the updates that carry them.

The service sends sessionResumptionUpdate unprompted after turns, and while the model runs a function call (any
call in the session issued, not answered, not cancelled) the update says `resumable: false` and has no handle
(ai.google.dev live-session; js-genai LiveServerSessionResumptionUpdate). So the newest handle a client holds
always predates an outstanding call, and resuming with it returns to a session that does not know that call.
A handle the service no longer knows is refused with 1008 "BidiGenerateContent session not found".
"""

from __future__ import annotations

import copy
import secrets
from typing import TYPE_CHECKING, Any

from .records import Call, Session

if TYPE_CHECKING:
    from .connection import Connection


class Handles:
    """Every handle the simulator issued, each with the session and its calls' fields at that moment."""

    def __init__(self) -> None:
        self._issued: dict[str, tuple[Session, dict[str, dict[str, Any]]]] = {}
        self._forgotten: set[str] = set()

    def issue(self, session: Session) -> str:
        handle = "simh-" + secrets.token_urlsafe(18)
        # The calls' fields as they are now, not deep copies of the calls: this runs after every turn, while the
        # client waits to read, and a deep copy grows with the session (2 ms after 100 calls).
        self._issued[handle] = (session, {cid: vars(call).copy() for cid, call in session.calls.items()})
        session.latest_handle = handle
        return handle

    def find(self, handle: str) -> tuple[Session, dict[str, Call]] | None:
        """The session and its calls as the handle saw them (a copy), or None if unknown or forgotten."""
        found = self._issued.get(handle)
        return (found[0], {cid: Call(**copy.deepcopy(f)) for cid, f in found[1].items()}) if found else None

    def forget(self) -> int:
        """Forget every handle issued so far (the scenario's `forget_handles`); how many there were."""
        self._forgotten |= set(self._issued)
        count = len(self._issued)
        self._issued.clear()
        return count

    def was_forgotten(self, handle: str) -> bool:
        return handle in self._forgotten


async def send_update(conn: Connection, handles: Handles, *, resumable: bool = True, force: bool = False,
                      auto: bool = False) -> None:
    """One sessionResumptionUpdate on `conn`: a fresh handle, or `resumable: false` without one while a call is
    outstanding (unless `force`) or when the scenario says so. `auto`: the one after a turnComplete."""
    session = conn.session
    assert session is not None
    busy = session.outstanding()
    if not resumable or (busy and not force):
        await conn.send("session_resumption_update", {"sessionResumptionUpdate": {"resumable": False}},
                        resumable=False, outstanding=busy, auto=auto)
        return
    handle = handles.issue(session)
    await conn.send("session_resumption_update", {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}},
                    handle=handle, resumable=True, outstanding=busy, auto=auto)

"""What both machines share: dispatch of an event through the state's table, and the error
raised for a pair the table does not hold."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar

from tandem.b2bua.actions import Action
from tandem.b2bua.events import Event

Handler = Callable[[Any, Any], None]


class ProtocolError(Exception):
    """An event the machine's state does not take (a peer out of step, or a bug here).

    The machine is left as it was; the edge logs it, counts it, and answers a request that
    caused it with `status`.
    """

    status = 500

    def __init__(self, machine: str, state: Enum, event: object) -> None:
        self.machine, self.state, self.event = machine, state, event
        super().__init__(f"{machine} in state {state.name} cannot take {type(event).__name__}")


class Step:
    """The step a machine is taking: its time, and the actions it has appended so far.

    The machine's parts that act on their own (its dialogs' `Side`s) hold this, never the
    machine: nothing of a call refers back to it, so an ended call is freed at once by
    reference counting instead of waiting, with everything it held, for the cycle
    collector (whose passes over thousands of such calls stalled an edge for 400 ms).
    """

    __slots__ = ("now", "out")

    def __init__(self) -> None:
        self.now = 0.0
        self.out: list[Action] = []

    def do(self, *actions: Action) -> None:
        self.out.extend(actions)


class Machine:
    """A state, a table of `(state, event type) -> handler`, and the actions of one step.

    `handle(event, now)` runs the handler the table names, which appends actions with
    `do(...)`; `now` is the wall-clock time in seconds, the only clock a machine sees.
    """

    KIND: ClassVar[str]
    TRANSITIONS: ClassVar[dict[tuple[Any, type], Handler]]
    state: Enum

    def __init__(self) -> None:
        self.step = Step()

    def handle(self, event: Event, now: float) -> list[Action]:
        handler = self.TRANSITIONS.get((self.state, type(event)))
        if handler is None:
            raise ProtocolError(self.KIND, self.state, event)
        step = self.step
        step.now, step.out = now, []
        handler(self, event)
        return step.out

    def do(self, *actions: Action) -> None:
        self.step.out.extend(actions)

    @property
    def now(self) -> float:
        return self.step.now

    @now.setter
    def now(self, now: float) -> None:
        self.step.now = now

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)

    @classmethod
    def accepts(cls, state: Enum, event: type) -> bool:
        return (state, event) in cls.TRANSITIONS

"""Plain records: equality and repr by their ``__slots__``.

The download path defines its small value types this way. A dataclass would
cost a new process 5 ms to import dataclasses (it imports inspect, ast and
dis) and 0.5 ms to generate each class; a NamedTuple, 0.4 ms a class. A
record class declares ``__slots__`` and an ``__init__``, and costs nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing where nothing else does

if TYPE_CHECKING:
    from typing import Any, Tuple


class Record:
    __slots__: "Tuple[str, ...]" = ()

    def _values(self) -> "Tuple[Any, ...]":
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"

"""The registered routines, and the decorator that declares them. No HTTP, no engine here."""

from routines.registry import (
    ENTRY_POINT_GROUP,
    Param,
    Routine,
    RoutineDefinitionError,
    discover,
    routine,
)

__all__ = ["ENTRY_POINT_GROUP", "Param", "Routine", "RoutineDefinitionError", "discover", "routine"]

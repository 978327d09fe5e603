"""Declaring routines, and finding them.

A routine is a plain function of *one sample*: each input feature arrives as a 0-d tensor in
positional order, each parameter as a 0-d tensor keyword. It returns a 0-d tensor when it has
one output, or M 0-d tensors (a tuple, a list or a 1-d tensor) when it has M outputs. The
service batches it with ``torch.func.vmap`` and differentiates it; the routine knows nothing
of either.

A routine whose code cannot be vmapped (data-dependent Python control flow, ``.item()``) is
declared ``vectorized=True``: it then receives each feature as a 1-d tensor of the whole
batch, each parameter as a 0-d tensor or a 1-d tensor of one value per sample, and returns
(N,) or (N, M). It promises that row i of the output depends only on row i of the input.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = ["ENTRY_POINT_GROUP", "Param", "Routine", "RoutineDefinitionError", "discover", "routine"]

ENTRY_POINT_GROUP = "dydc.routines"

RoutineFn = Callable[..., Any]


class RoutineDefinitionError(ValueError):
    """A routine's declaration is inconsistent; raised when it is declared or discovered."""


@dataclass(frozen=True)
class Param:
    """A differentiable scalar parameter. ``bounds`` is a closed interval; None is open."""

    name: str
    default: float
    description: str = ""
    bounds: tuple[float | None, float | None] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise RoutineDefinitionError(f"parameter name {self.name!r} is not an identifier")
        if not math.isfinite(self.default):
            raise RoutineDefinitionError(f"parameter {self.name}: default must be finite")
        if self.violates_bounds(self.default):
            raise RoutineDefinitionError(
                f"parameter {self.name}: default {self.default} is outside {self.bounds}"
            )

    def violates_bounds(self, value: float) -> bool:
        if self.bounds is None:
            return False
        low, high = self.bounds
        return (low is not None and value < low) or (high is not None and value > high)


@dataclass(frozen=True, eq=False)
class Routine:
    """A registered parametric routine y = f(params, x) of one sample (or of a batch)."""

    name: str
    description: str
    params: tuple[Param, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: RoutineFn = field(repr=False)
    vectorized: bool = False
    compile: bool = True  # False: forward mode always runs eagerly (app.engine.compiled.forward)
    # tensor operations of one evaluation, where known before it runs (a caller's expression):
    # the engine prices it by them instead of timing it on the device first
    operations: int | None = None
    # where no module holds the routine by name (a caller's expression): data from which
    # ``rebuild(source)``, a function of the module of ``fn``, makes it again in another
    # process (a build of its compiled forward mode). The data is parsed there, never run.
    source: str | None = None
    # how messages to callers name it where its name is not theirs ("the expression"); by
    # default "routine <name>" (see ``called``)
    title: str = ""

    @property
    def called(self) -> str:
        """The routine as a message to a caller names it."""
        return self.title or f"routine {self.name}"

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise RoutineDefinitionError(
                f"routine name {self.name!r} must be letters, digits, '_' or '-'"
            )
        for kind, names in (("params", [p.name for p in self.params]),
                            ("inputs", self.inputs), ("outputs", self.outputs)):
            if len(set(names)) != len(names):
                raise RoutineDefinitionError(f"routine {self.name}: duplicate names in {kind}")
        if not self.inputs or not self.outputs:
            raise RoutineDefinitionError(
                f"routine {self.name}: needs at least one input and output"
            )
        if not self.params:
            raise RoutineDefinitionError(f"routine {self.name}: needs at least one parameter")
        try:
            inspect.signature(self.fn).bind(
                *self.inputs, **{p.name: p.default for p in self.params}
            )
        except TypeError as exc:
            raise RoutineDefinitionError(
                f"routine {self.name}: its function must accept the {len(self.inputs)} inputs "
                f"positionally and the parameters {self.param_names} as keywords ({exc})"
            ) from exc

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __call__(self, *features: torch.Tensor, **params: torch.Tensor) -> Any:
        return self.fn(*features, **params)


def routine(
    *,
    name: str | None = None,
    description: str,
    params: Sequence[Param],
    inputs: Sequence[str],
    outputs: Sequence[str] = ("y",),
    vectorized: bool = False,
    compile: bool = True,
) -> Callable[[RoutineFn], Routine]:
    """Declare a function as a routine; the module attribute becomes a :class:`Routine`.

    ``compile=False`` keeps the service from compiling the routine's forward mode for large
    launches, for code where compiling costs more than it saves. (A long Python loop need not
    opt out: the service compiles one step of it, app.engine.compiled.rolled.)
    """

    def declare(fn: RoutineFn) -> Routine:
        return Routine(
            name=name or fn.__name__,
            description=description,
            params=tuple(params),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            fn=fn,
            vectorized=vectorized,
            compile=compile,
        )

    return declare


def _routines_in(obj: Any) -> Iterator[Routine]:
    if isinstance(obj, Routine):
        yield obj
    elif isinstance(obj, ModuleType):
        yield from (v for v in vars(obj).values() if isinstance(v, Routine))
    elif isinstance(obj, Iterable):
        for item in obj:
            if not isinstance(item, Routine):
                raise RoutineDefinitionError(f"{item!r} is not a Routine")
            yield item
    else:
        raise RoutineDefinitionError(f"{obj!r} is neither a Routine, a module nor a list of them")


def _builtin_modules() -> Iterator[ModuleType]:
    package = importlib.import_module(__package__ or "routines")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name != "registry":
            yield importlib.import_module(f"{package.__name__}.{info.name}")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _folder_modules(folders: Sequence[Path]) -> Iterator[tuple[str, ModuleType]]:
    """The ``.py`` modules of each folder (DYDC_ROUTINES_PATH), imported under names of their
    own (``dydc_routines_path.<n>.<stem>``) so that two folders may hold a ``util.py``."""
    for index, folder in enumerate(folders):
        for file in sorted(Path(folder).glob("*.py")):
            if file.name.startswith("_"):
                continue
            name = f"dydc_routines_path.{index}.{file.stem}"
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:  # pragma: no cover  (a .py always has one)
                raise RoutineDefinitionError(f"{file}: not importable")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise RoutineDefinitionError(f"{file}: {_one_line(exc)}") from exc
            yield str(file), module


def discover(group: str = ENTRY_POINT_GROUP, builtins: bool = True,
             folders: Sequence[Path] = ()) -> dict[str, Routine]:
    """Every routine in this package's modules, in the entry-point group and in the ``.py``
    modules of ``folders``, by name.

    An entry point may name a Routine, a module (all its Routines) or a list of Routines.
    Two routines with one name are an error: the service must not pick one silently. So is a
    module that fails to import, named by its file with the error on one line.
    """
    found: dict[str, tuple[Routine, str]] = {}
    sources: list[tuple[str, Any]] = []
    if builtins:
        sources += [(m.__name__, m) for m in _builtin_modules()]
    for ep in importlib.metadata.entry_points(group=group):
        try:
            sources.append((f"entry point {ep.name} ({ep.value})", ep.load()))
        except Exception as exc:
            raise RoutineDefinitionError(f"entry point {ep.name} ({ep.value}): {exc}") from exc
    sources += list(_folder_modules(folders))
    for origin, obj in sources:
        for r in _routines_in(obj):
            if r.name in found and found[r.name][0] is not r:
                raise RoutineDefinitionError(
                    f"routine {r.name!r} is declared twice: in {found[r.name][1]} and {origin}"
                )
            found[r.name] = (r, origin)
    return {name: r for name, (r, _) in sorted(found.items())}

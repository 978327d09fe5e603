"""Scenarios: a book revalued under shifted parameters and input features in one request,
``POST /v1/routines/{name}/scenarios`` (or ``/v1/expressions/scenarios`` for a caller's
function; v1 only: the v2 protocol has no scenarios), and the answer, read from its tensor
form (``Accept: application/vnd.dydc.tensors``) or JSON, as a :class:`ScenarioResult` with its
P&L table.

Shifts are written per factor as ``("relative", [-0.1, 0, 0.1])`` or as the service's
``{"type": "relative", "values": [...]}``; ``combine`` takes their ``product`` (the grid) or
their ``zip``; an explicit list of absolute shifts per scenario is the third form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from dydc import tensor_answer, v1
from dydc.batches import Batch
from dydc.calls import Call, request_id
from dydc.options import Options
from dydc.results import as_array

__all__ = [
    "COMBINE",
    "SHIFT_TYPES",
    "Asking",
    "ScenarioResult",
    "ShiftsLike",
    "call",
    "scenario_spec",
]

SHIFT_TYPES = {"absolute": "absolute", "abs": "absolute", "relative": "relative", "rel": "relative"}
COMBINE = ("product", "zip")
ShiftsLike = Mapping[str, Any]
"""Per factor: ``(type, values)`` or ``{"type": type, "values": values}``; values a number or
a list, type ``absolute``/``abs`` or ``relative``/``rel``."""
ListLike = Sequence[Mapping[str, float]]
Asked = list[dict[str, tuple[str, float]]]
"""Per scenario, each factor's shift as asked: (type, value)."""


def _shift(factor: str, given: Any) -> tuple[str, list[float]]:
    if isinstance(given, Mapping):
        extra = set(given) - {"type", "values"}
        if extra or "type" not in given or "values" not in given:
            raise ValueError(
                f"shifts[{factor!r}] = {dict(given)!r}: write "
                "{'type': 'relative' or 'absolute', 'values': [...]}"
            )
        kind, values = given["type"], given["values"]
    elif isinstance(given, Sequence) and not isinstance(given, str) and len(given) == 2:
        kind, values = given
    else:
        raise ValueError(
            f"shifts[{factor!r}] = {given!r}: write ('relative', [-0.1, 0, 0.1]) "
            "or ('absolute', [...])"
        )
    if not isinstance(kind, str) or kind not in SHIFT_TYPES:
        raise ValueError(f"shifts[{factor!r}]: type {kind!r}; use absolute or relative")
    listed = np.atleast_1d(_numbers(f"shifts[{factor!r}]", values,
                                    "a number or a non-empty flat list of numbers"))
    if listed.ndim != 1 or listed.size == 0:
        raise ValueError(f"shifts[{factor!r}]: give a number or a non-empty flat list of shifts")
    v1.finite(f"shifts[{factor!r}]", listed, _FINITE)
    return SHIFT_TYPES[kind], listed.tolist()


_FINITE = "shifts must be finite numbers"


def _numbers(where: str, given: Any, wanted: str) -> np.ndarray:
    """Shifts as float64; a ValueError naming ``where`` for anything but numbers (a string
    too: numpy would read ``"0.1"`` as one)."""
    try:
        array = np.asarray(given)
    except ValueError:  # ragged lists
        array = np.asarray(None)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{where} is {given!r}; give {wanted}")
    return array.astype(np.float64)


def scenario_spec(
    shifts: ShiftsLike | None, combine: str, scenario_list: ListLike | None
) -> tuple[dict[str, Any], Asked | None]:
    """The body's ``scenarios`` object, and each scenario's shifts as asked (None where the
    service would refuse them: it says why)."""
    if (shifts is None) == (scenario_list is None):
        raise ValueError(
            "give shifts= (per factor: type and values) or scenario_list= (one "
            "mapping of absolute shifts per scenario), not both and not neither"
        )
    if scenario_list is not None:
        rows = [_listed(i, s) for i, s in enumerate(_sequence(scenario_list))]
        return {"list": rows}, [{f: ("absolute", v) for f, v in row.items()} for row in rows]
    if combine not in COMBINE:
        raise ValueError(f"combine={combine!r}; use product or zip")
    if not isinstance(shifts, Mapping):
        raise ValueError(f"shifts is {shifts!r}; give a mapping of factor to (type, values), "
                         "e.g. {'sigma': ('relative', [-0.1, 0.1])}")
    lists = {str(f): _shift(str(f), s) for f, s in shifts.items()}
    spec = {
        "shifts": {f: {"type": kind, "values": values} for f, (kind, values) in lists.items()},
        "combine": combine,
    }
    labelled = {f: [(kind, v) for v in values] for f, (kind, values) in lists.items()}
    if combine == "zip":
        if len({len(v) for v in labelled.values()}) > 1:
            return spec, None
        combos = list(zip(*labelled.values(), strict=True))
    else:
        combos = list(itertools.product(*labelled.values()))
    return spec, [dict(zip(labelled, combo, strict=True)) for combo in combos]


def _sequence(scenario_list: Any) -> list[Any]:
    if isinstance(scenario_list, (str, Mapping)) or not isinstance(scenario_list, Sequence):
        raise ValueError(f"scenario_list is {scenario_list!r}; give a list of mappings of "
                         "factor to absolute shift, e.g. [{'sigma': 0.01}, {'r': -0.005}]")
    return list(scenario_list)


def _listed(i: int, scenario: Any) -> dict[str, float]:
    """Scenario ``i`` of a scenario_list: each factor's absolute shift, a finite number."""
    if not isinstance(scenario, Mapping):
        raise ValueError(f"scenario_list[{i}] is {scenario!r}; give a mapping of factor to "
                         "absolute shift, e.g. {'sigma': 0.01}")
    row: dict[str, float] = {}
    for f, v in scenario.items():
        where = f"scenario_list[{i}][{f!r}]"
        value = _numbers(where, v, "a number (the factor's absolute shift)")
        if value.ndim != 0:
            raise ValueError(f"{where} is {v!r}; give a number (the factor's absolute shift)")
        v1.finite(where, value, _FINITE)
        row[str(f)] = float(value)
    return row


@dataclass(frozen=True)
class Asking:
    """What a scenarios request asks for besides the book: the scenarios (the body's
    ``scenarios`` object and each one's shifts as written), the explain, the answer's form."""

    spec: dict[str, Any]
    asked: Asked | None
    explain: bool = False
    totals_only: bool = False
    tensors: bool = True


def call(
    routine: str | None,
    batch: Batch,
    options: Options,
    asking: Asking,
    function: dict[str, Any] | None = None,
    names: list[str] | None = None,
) -> Call[ScenarioResult]:
    """``POST /v1/routines/{routine}/scenarios``, or with ``function`` (``{"expression":
    ...}`` or ``{"ode": {...}}``) and the input features' ``names``
    ``POST /v1/expressions/scenarios``; ``options`` of kind sensitivities carry wrt, order
    and cross for the explain. The answer comes as tensors unless ``asking.tensors`` is
    false (JSON), and reads the same either way."""
    doc = {**v1.document(batch, options), "scenarios": asking.spec}
    if function is not None:
        doc = {**function, **doc, "inputs": {"names": names, "values": doc["inputs"]}}
    if asking.explain:
        doc["explain"] = True
    if asking.totals_only:
        doc["totals_only"] = True

    def read(response: httpx.Response) -> ScenarioResult:
        return ScenarioResult.from_json(tensor_answer.loads(response), asking.asked,
                                        request_id(response))

    path = ("/v1/expressions/scenarios" if routine is None
            else f"/v1/routines/{quote(routine, safe='')}/scenarios")
    accept = tensor_answer.ACCEPT if asking.tensors else "application/json"
    return Call(
        "POST",
        path,
        read,
        query=options.query(),
        headers={"Content-Type": "application/json", "Accept": accept},
        parts=[v1.dumps(doc)],
        timeout_s=options.timeout_s,
    )


def _stack(rows: list[dict[str, Any]], key: str, dtype: str) -> np.ndarray | None:
    if not rows or key not in rows[0]:
        return None
    return np.stack([as_array(r[key], dtype) for r in rows])


@dataclass
class ScenarioResult:
    """The answer to ``scenarios``. With S scenarios, N samples and M outputs (the last axis
    left out when M = 1): ``base`` (N[, M]); ``values``, ``pnl`` and with ``explain``
    ``delta_pnl``, ``gamma_pnl`` (order 2) and ``unexplained``, each (S, N[, M]); the
    ``total_*`` sums over samples, each (S[, M]); ``shifts[s]`` scenario s's absolute shift
    per factor (a number, or one per sample for a relative shift of an input feature)."""

    routine: str
    base: np.ndarray | None
    """None, as are ``values``, ``pnl`` and the explain's per-sample arrays, when asked for
    ``totals_only``."""
    values: np.ndarray | None
    pnl: np.ndarray | None
    total_pnl: np.ndarray
    shifts: list[dict[str, float | np.ndarray]]
    delta_pnl: np.ndarray | None = None
    gamma_pnl: np.ndarray | None = None
    unexplained: np.ndarray | None = None
    total_delta_pnl: np.ndarray | None = None
    total_gamma_pnl: np.ndarray | None = None
    total_unexplained: np.ndarray | None = None
    derivatives: dict[str, np.ndarray] = field(default_factory=dict)
    second_derivatives: dict[str, np.ndarray] = field(default_factory=dict)
    wrt: list[str] | None = None
    order: int | None = None
    strategy: str | None = None
    asked: Asked | None = None
    """Each scenario's shifts as the request wrote them, (type, value) per factor."""
    dtype: str = "float64"
    device: str = ""
    n: int = 0
    outputs: list[str] = field(default_factory=lambda: ["y"])
    params: dict[str, Any] = field(default_factory=dict)
    timing_ms: dict[str, float] | None = None
    request_id: str | None = None
    expression: str | None = None
    """For a caller's expression: its canonical text, as the service normalised it."""

    @property
    def scenario_count(self) -> int:
        return len(self.shifts)

    @property
    def factors(self) -> list[str]:
        """The shifted factors, in the order the request named them."""
        return list(dict.fromkeys(f for s in self.shifts for f in s))

    @classmethod
    def from_json(
        cls, doc: dict[str, Any], asked: Asked | None = None, request_id: str | None = None
    ) -> ScenarioResult:
        dtype = doc.get("dtype", "float64")
        rows: list[dict[str, Any]] = doc["scenarios"]
        outputs = list(doc.get("outputs") or ["y"])
        per_output = () if len(outputs) == 1 else (len(outputs),)
        base = as_array(doc["base"], dtype) if "base" in doc else None  # not with totals_only
        shape = (len(rows), *(base.shape if base is not None else (0, *per_output)))

        def stacked(key: str) -> np.ndarray | None:
            found = _stack(rows, key, dtype)
            return None if found is None else found.reshape(shape)

        def totals(key: str) -> np.ndarray | None:
            found = _stack(rows, key, dtype)
            return None if found is None else found.reshape((len(rows), *per_output))

        total = totals("total_pnl")
        assert total is not None
        return cls(
            routine=doc["routine"],
            base=base,
            values=stacked("values"),
            pnl=stacked("pnl"),
            total_pnl=total,
            shifts=[
                {
                    f: (float(v) if np.ndim(v) == 0 else as_array(v, "float64"))
                    for f, v in r["shifts"].items()
                }
                for r in rows
            ],
            delta_pnl=stacked("delta_pnl"),
            gamma_pnl=stacked("gamma_pnl"),
            unexplained=stacked("unexplained"),
            total_delta_pnl=totals("total_delta_pnl"),
            total_gamma_pnl=totals("total_gamma_pnl"),
            total_unexplained=totals("total_unexplained"),
            derivatives={k: as_array(v, dtype) for k, v in (doc.get("derivatives") or {}).items()},
            second_derivatives={
                k: as_array(v, dtype) for k, v in (doc.get("second_derivatives") or {}).items()
            },
            wrt=doc.get("wrt"),
            order=doc.get("order"),
            strategy=doc.get("strategy"),
            asked=asked,
            dtype=dtype,
            device=doc.get("device", ""),
            n=int(doc.get("n", 0)),
            outputs=outputs,
            params=dict(doc.get("params") or {}),
            timing_ms=doc.get("timing_ms"),
            request_id=request_id,
            expression=doc.get("expression"),
        )

    def table(self) -> tuple[list[str], list[list[float]]]:
        """The P&L per scenario as columns and rows, without pandas: ``scenario``, each
        factor's shift as asked (``sigma:rel``, ``r:abs``; the absolute shift ``sigma:abs``
        when the request's form is not known), ``total_pnl`` and with the explain
        ``total_delta_pnl``, ``total_gamma_pnl`` (order 2), ``total_unexplained``; one column
        per output (``total_pnl[price]``) when the routine has several."""
        factors = self.factors
        columns = ["scenario"]
        cells: list[list[float]] = [list(range(self.scenario_count))]
        for f in factors:
            kinds = {a[f][0] for a in self.asked if f in a} if self.asked else set()
            if len(kinds) == 1:
                (kind,) = kinds
                columns.append(f"{f}:{kind[:3]}")
                cells.append([a[f][1] if f in a else 0.0 for a in self.asked or []])
            else:
                columns.append(f"{f}:abs")
                cells.append([_one(s.get(f, 0.0)) for s in self.shifts])
        for name in ("total_pnl", "total_delta_pnl", "total_gamma_pnl", "total_unexplained"):
            totals = getattr(self, name)
            if totals is None:
                continue
            if totals.ndim == 1:
                columns.append(name)
                cells.append(totals.tolist())
            else:
                for j, o in enumerate(self.outputs):
                    columns.append(f"{name}[{o}]")
                    cells.append(totals[:, j].tolist())
        return columns, [list(row) for row in zip(*cells, strict=True)]


def _one(shift: float | np.ndarray) -> float:
    """A shift as one number: NaN where it differs by sample (ask for it as written to see
    the relative shift instead)."""
    if isinstance(shift, np.ndarray):
        return float(shift[0]) if shift.size and np.all(shift == shift[0]) else math.nan
    return float(shift)

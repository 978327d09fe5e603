"""One request to the engine, whatever protocol it came in: what to differentiate and how.

Each codec (v1 JSON, v2 JSON and binary, expressions, scenarios) builds one :class:`Request`
from its own format; :meth:`app.engine.runtime.service.Engine.prepare` checks it and turns it into a
:class:`app.engine.runtime.jobs.Job`, and :meth:`~app.engine.runtime.service.Engine.run` queues that
job and awaits its answer. Nothing here is checked yet: a request holds what the caller sent, in
Python and numpy types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.differentiation.bumping import Bump
from app.engine.runtime.jobs import JobKind
from routines import Routine

__all__ = ["ParamValue", "Request"]

# a parameter: one number for the batch, or one per sample
ParamValue = float | int | Sequence[float] | np.ndarray


@dataclass(frozen=True, slots=True)
class Request:
    """``routine`` is a registered routine's name, or a :class:`Routine` run as given (a
    caller's expression). ``inputs`` is (N,) or (N, D); ``params`` maps a name to one value
    or one per sample. ``timeout_ms`` shortens the default deadline (DYDC_REQUEST_TIMEOUT_MS),
    never extends it. ``wrt``, ``strategy``, ``order``, ``cross``, ``bump`` and ``check``
    apply to sensitivities only. ``any_strategy`` admits a strategy the server does not
    serve (compare prepares its request as finite differences, then runs only the strategies
    served)."""

    kind: JobKind
    routine: str | Routine
    inputs: np.ndarray | torch.Tensor
    params: Mapping[str, ParamValue]
    wrt: Sequence[str] | None = None
    strategy: str = "auto"
    dtype: str = "float64"
    timeout_ms: float | None = None
    order: int = 1
    cross: bool = False
    bump: Bump | None = None
    check: str | None = None
    any_strategy: bool = False

"""``dydc.Client`` and ``dydc.AsyncClient``: the service's v1 and v2 APIs as method calls
with numpy in and out, retries, and large batches split under the service's limits.

Each method is written once, as steps that yield the HTTP calls they need and receive their
answers (:class:`_Steps`); the sync client sends them with ``httpx.Client`` (several chunks
from a thread pool), the async one with ``httpx.AsyncClient`` (several chunks as tasks), each
with the same :class:`~dydc.retrying.RetryPolicy`. Both are context managers.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from dydc import scenarios, v1, v2
from dydc.batches import Batch, make_batch
from dydc.calls import Call, Progress, Upload
from dydc.chunking import answer_numbers, chunk_bounds, merge
from dydc.codings import accept_encoding
from dydc.errors import ConnectionFailed
from dydc.options import Kind, Options, options
from dydc.results import Bump, Comparison, Limits, Param, Result, RoutineInfo, StrategyInfo
from dydc.retrying import RetryPolicy
from dydc.scenarios import ScenarioResult, ShiftsLike

__all__ = ["AUTO_BINARY_MIN_SAMPLES", "PROTOCOLS", "AsyncClient", "Client"]

T = TypeVar("T")
Steps = Generator[list[Call[Any]], list[Any], T]

PROTOCOLS = ("auto", "json", "binary")
AUTO_BINARY_MIN_SAMPLES = 2048
"""``protocol="auto"`` sends batches of at least this many samples as v2 binary tensors and
smaller ones as v1 JSON (measured by bench/bench_client.py; client/README.md has the table)."""
DEFAULT_URL = "http://127.0.0.1:8000"
_UNPRICED_NUMBERS = 1024
"""A batch whose answer would fit the service's DYDC_MAX_RESPONSE_BYTES even at this many
numbers a sample, as JSON, is not priced (pricing needs the routine's outputs: a call)."""
Inputs = Any  # an ndarray (N,) or (N, D), nested lists, or a mapping of feature to column
Params = Mapping[str, Any] | None
Wrt = str | Sequence[str] | None
BumpLike = Bump | Mapping[str, Any] | None


def _json(response: httpx.Response) -> Any:
    return response.json()


# Catalogue answers are read inside the call, so that JSON of another shape is the ApiError
# that Call.outcome makes of it, as for a computation's answer.

def _routines(response: httpx.Response) -> list[RoutineInfo]:
    return [RoutineInfo.from_json(r) for r in _json(response)["routines"]]


def _routine(response: httpx.Response) -> RoutineInfo:
    return RoutineInfo.from_json(_json(response))


def _strategies(response: httpx.Response) -> list[StrategyInfo]:
    return [StrategyInfo.from_json(s) for s in _json(response)["strategies"]]


def _limits(response: httpx.Response) -> Limits:
    return Limits.from_json(_json(response))


def _expression_options(evaluate: bool, wrt: Wrt, order: int, cross: bool, strategy: str,
                        dtype: str | None, timeout_ms: float | None,
                        check: str | bool | None, bump: BumpLike) -> Options:
    if evaluate:
        given = _derivative_options(wrt, order, cross, strategy, check, bump)
        if given:
            raise ValueError("wrt, order, cross, strategy, check and bump shape the "
                             "derivatives, and evaluate=True asks for values only: leave "
                             f"them out (given: {', '.join(given)})")
        return options(Kind.EVALUATE, dtype=dtype, timeout_ms=timeout_ms)
    return options(Kind.SENSITIVITIES, wrt=wrt, order=order, cross=cross, strategy=strategy,
                   dtype=dtype, timeout_ms=timeout_ms, check=check, bump=bump)


def _derivative_options(wrt: Wrt, order: int, cross: bool, strategy: str,
                        check: str | bool | None = None, bump: BumpLike = None) -> list[str]:
    """The names of the arguments given that only a derivative can honour."""
    given = {"wrt": wrt is not None, "order": order != 1, "cross": bool(cross),
             "strategy": strategy != "auto", "check": check not in (None, False),
             "bump": bump is not None}
    return [name for name, is_given in given.items() if is_given]


def url_problem(url: str) -> str | None:
    """What to change in a URL the client cannot call, or None: said by ``Client`` as a
    ValueError (not retried as a connection failure), by the command line as a usage error of
    ``--url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "give the service's address with its scheme, e.g. http://127.0.0.1:8000"
    return None


def api_key_problem(api_key: str) -> str | None:
    """What to change in an API key the service could not hold, or None (as
    :func:`url_problem`)."""
    if not all("!" <= char <= "~" for char in api_key.strip()):  # as the service holds keys
        return ("holds a space, a control or a non-ASCII character; an API key is visible "
                "ASCII (letters, digits and punctuation)")
    return None


def _check_url(url: str) -> None:
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"url {url!r}: {problem}")


def _check_timeout(timeout: Any) -> None:
    """Seconds above 0, or None to wait without limit (httpx's meaning). Refused here: httpx
    takes 0 as a timeout that fails every connect, retried as a connection failure, and
    refuses a negative one only when the first request goes out, in words that name no
    argument. An ``httpx.Timeout`` passes as it always has (httpx checks its own)."""
    if timeout is None or isinstance(timeout, httpx.Timeout):
        return
    if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
            or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f"timeout is {timeout!r}; give the seconds to wait for an answer, "
                         "a finite number above 0 (or None to wait without limit)")


class _Steps:
    """Configuration, caches and every method as steps; no I/O."""

    def __init__(self, url: str | None, *, api_key: str | None, timeout: float | None,
                 protocol: str, policy: RetryPolicy, max_concurrency: int,
                 binary_min_samples: int, progress: Progress | None) -> None:
        # as the command line does: an argument wins over the variable, which wins over the
        # default (api_key="" sends no key whatever DYDC_API_KEY says)
        url = url or os.environ.get("DYDC_URL") or DEFAULT_URL
        api_key = os.environ.get("DYDC_API_KEY") if api_key is None else api_key
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency is {max_concurrency}; use 1 or more")
        _check_timeout(timeout)
        _check_url(url)
        api_key = (api_key or "").strip()
        key_problem = api_key_problem(api_key)
        if key_problem is not None:
            raise ValueError(f"api_key {key_problem}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.protocol = protocol
        self.policy = policy
        self.max_concurrency = max_concurrency
        self.binary_min_samples = binary_min_samples
        self.progress = progress
        self.headers = {"User-Agent": "dydc-client", "Accept-Encoding": accept_encoding(url)}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._routines: dict[str, RoutineInfo] = {}
        self._limits: Limits | None = None

    def upload(self, calls: Sequence[Call[Any]]) -> Upload | None:
        total = sum(c.size for c in calls)
        return Upload(total, self.progress) if self.progress is not None and total else None

    # -- steps ---------------------------------------------------------------------------------

    def routines_steps(self) -> Steps[list[RoutineInfo]]:
        infos: list[RoutineInfo]
        (infos,) = yield [Call("GET", "/v1/routines", _routines)]
        self._routines |= {i.name: i for i in infos}
        return infos

    def routine_steps(self, name: str) -> Steps[RoutineInfo]:
        if name not in self._routines:
            info: RoutineInfo
            (info,) = yield [Call("GET", f"/v1/routines/{quote(name, safe='')}", _routine)]
            self._routines[name] = info
        return self._routines[name]

    def strategies_steps(self) -> Steps[list[StrategyInfo]]:
        rows: list[StrategyInfo]
        (rows,) = yield [Call("GET", "/v1/strategies", _strategies)]
        return rows

    def limits_steps(self) -> Steps[Limits]:
        """The service's limits, read once; none known from a service without the route."""
        if self._limits is None:
            limits: Limits
            (limits,) = yield [Call("GET", "/v1/limits", _limits, if_missing=Limits)]
            self._limits = limits
        return self._limits

    def compute_steps(self, routine: str, inputs: Inputs, params: Params,
                      opts: Options) -> Steps[Any]:
        info = (yield from self.routine_steps(routine)) if isinstance(inputs, Mapping) else None
        batch = make_batch(inputs, params, info.inputs if info else None, opts.dtype)
        binary = opts.binary_capable and (
            self.protocol == "binary"
            or (self.protocol == "auto" and batch.n >= self.binary_min_samples))
        if binary and info is None:
            info = yield from self.routine_steps(routine)
        limits = yield from self.limits_steps()
        answer = None
        if (limits.max_response_bytes is not None and opts.kind is not Kind.COMPARE
                and batch.n * _UNPRICED_NUMBERS * limits.json_number_bytes
                > limits.max_response_bytes):
            info = info or (yield from self.routine_steps(routine))
            answer = answer_numbers(info, opts, batch, binary)
        return (yield from _chunked(
            batch, limits, opts, binary, answer,
            lambda part: v2.call(info, part, opts) if binary and info is not None
            else v1.call(routine, part, opts)))

    def expression_steps(self, expression: str | Sequence[str] | None,
                         ode: Mapping[str, Any] | None, inputs: Inputs,
                         names: Sequence[str] | str | None, params: Params,
                         opts: Options) -> Steps[Any]:
        """A caller's expression (or ODE) as v1 JSON, split under the service's limits as a
        routine's batch is (the answer priced from the expression's outputs and parameters,
        with no call: the service has no description of a caller's function)."""
        function = _function(expression, ode)
        features = _feature_names(inputs, names)
        batch = make_batch(inputs, params, features, opts.dtype)
        limits = yield from self.limits_steps()
        answer = None
        if limits.max_response_bytes is not None and opts.kind is not Kind.COMPARE:
            answer = answer_numbers(_expression_info(function, features, batch), opts, batch,
                                    False)
        return (yield from _chunked(
            batch, limits, opts, False, answer,
            lambda part: v1.expression_call(function, features, part, opts)))

    def scenarios_steps(self, routine: str, inputs: Inputs, params: Params,
                        scenario: ScenarioArgs, opts: Options) -> Steps[ScenarioResult]:
        """Every scenario in one request (not split: the service runs them as one launch,
        S x N samples within its DYDC_MAX_SAMPLES), its answer as tensors unless the client's
        protocol is json."""
        info = (yield from self.routine_steps(routine)) if isinstance(inputs, Mapping) else None
        batch = make_batch(inputs, params, info.inputs if info else None, opts.dtype)
        (answer,) = yield [scenarios.call(routine, batch, opts, self._asking(scenario))]
        return answer  # type: ignore[no-any-return]

    def expression_scenarios_steps(self, function: Function, inputs: Inputs,
                                   names: Sequence[str] | str | None, params: Params,
                                   scenario: ScenarioArgs,
                                   opts: Options) -> Steps[ScenarioResult]:
        """A caller's expression (or ODE) under every scenario in one request."""
        features = _feature_names(inputs, names)
        batch = make_batch(inputs, params, features, opts.dtype)
        (answer,) = yield [scenarios.call(None, batch, opts, self._asking(scenario),
                                          _function(*function), features)]
        return answer  # type: ignore[no-any-return]

    def _asking(self, scenario: ScenarioArgs) -> scenarios.Asking:
        shifts, combine, scenario_list, explain, totals_only = scenario
        spec, asked = scenarios.scenario_spec(shifts, combine, scenario_list)
        return scenarios.Asking(spec, asked, explain, totals_only,
                                tensors=self.protocol != "json")


ScenarioArgs = tuple[ShiftsLike | None, str, Sequence[Mapping[str, float]] | None, bool, bool]
"""shifts, combine, scenario_list, explain, totals_only."""
Function = tuple[str | Sequence[str] | None, Mapping[str, Any] | None]
"""An expression (or a list of them), or an ODE: exactly one of the two."""


def _function(expression: str | Sequence[str] | None,
              ode: Mapping[str, Any] | None) -> dict[str, Any]:
    """The body's ``expression`` or ``ode``."""
    if (expression is None) == (ode is None):
        raise ValueError("give an expression, or ode= (rhs, state, initial, time, steps, "
                         "method), not both")
    if expression is not None:
        return {"expression": expression if isinstance(expression, str) else list(expression)}
    return {"ode": dict(ode or {})}


def _chunked(batch: Batch, limits: Limits, opts: Options, binary: bool, answer: int | None,
             call: Callable[[Batch], Call[Any]]) -> Steps[Any]:
    """The batch in chunks under ``limits`` (a comparison in one), one ``call`` each, sent
    together; the answers merged in order."""
    bounds = ([(0, batch.n)] if opts.kind is Kind.COMPARE
              else chunk_bounds(batch, limits, opts.strategy, binary, answer))
    started = time.perf_counter()
    results = yield [call(batch.part(start, stop)) for start, stop in bounds]
    if opts.kind is Kind.COMPARE:
        return results[0]
    return merge(results, (time.perf_counter() - started) * 1e3)


def _expression_info(function: Mapping[str, Any], features: list[str],
                     batch: Batch) -> RoutineInfo:
    """What pricing an expression's answer needs: its outputs (one per text of a list; an
    ODE's state is one) and its parameters (those the batch sends; wrt, when given, counts
    instead)."""
    texts = function.get("expression")
    outputs = [f"y{i}" for i in range(len(texts))] if isinstance(texts, list) else ["y"]
    names = [*batch.scalars, *batch.per_sample]
    return RoutineInfo(name="expression", description="", inputs=features, outputs=outputs,
                       params=[Param(name=n, default=0.0) for n in names])


def _scenario_options(explain: bool, wrt: Wrt, order: int, cross: bool, strategy: str,
                      dtype: str | None, timeout_ms: float | None) -> Options:
    """The base's options: a sensitivities job for the explain, an evaluation else."""
    if explain:
        return options(Kind.SENSITIVITIES, wrt=wrt, order=order, cross=cross,
                       strategy=strategy, dtype=dtype, timeout_ms=timeout_ms)
    given = _derivative_options(wrt, order, cross, strategy)
    if given:
        raise ValueError("wrt, order, cross and strategy shape the P&L explain: pass "
                         f"explain=True (given: {', '.join(given)})")
    return options(Kind.EVALUATE, dtype=dtype, timeout_ms=timeout_ms)


def _feature_names(inputs: Inputs, names: Sequence[str] | str | None) -> list[str]:
    """The input features' names: ``names`` (a list, or comma-separated), else the keys of
    inputs given as a mapping of columns."""
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    if names is not None:
        return list(names)
    if isinstance(inputs, Mapping):
        return [str(k) for k in inputs]
    raise ValueError("name the input features: names=['x', ...] in column order, or give "
                     "inputs as a mapping of name to column")


def _connection_failed(url: str, call: Call[Any], exc: httpx.TransportError,
                       attempts: int) -> ConnectionFailed:
    # (httpx's timeouts often carry no text: "WriteTimeout:  (after 1 attempt)")
    said = str(exc) or ("timed out: raise the client's timeout" if isinstance(
        exc, httpx.TimeoutException) else "no answer")
    return ConnectionFailed(f"{call.method} {url}{call.path}: {type(exc).__name__}: "
                            f"{said} (after {attempts} attempt{'s' if attempts > 1 else ''})")


class Client:
    """A synchronous client over ``httpx.Client``. ``url`` and ``api_key`` default to
    ``DYDC_URL`` (else http://127.0.0.1:8000) and ``DYDC_API_KEY``, as for the command line::

        with dydc.Client("http://127.0.0.1:8000") as client:
            r = client.sensitivities("black_scholes_call", x, {"sigma": 0.2}, wrt=["sigma"])
            r.derivatives["sigma"]   # vega, one per sample
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float | None = 60.0, retries: int = 3, protocol: str = "auto",
                 retry_on_timeout: bool = False, backoff: float = 0.5,
                 max_retry_after: float = 30.0, max_concurrency: int = 4,
                 binary_min_samples: int = AUTO_BINARY_MIN_SAMPLES,
                 progress: Progress | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        policy = RetryPolicy(retries, retry_on_timeout, backoff, max_retry_after=max_retry_after)
        self._steps = _Steps(url, api_key=api_key, timeout=timeout, protocol=protocol,
                             policy=policy, max_concurrency=max_concurrency,
                             binary_min_samples=binary_min_samples, progress=progress)
        self._http = httpx.Client(base_url=self._steps.url, headers=self._steps.headers,
                                  timeout=self._steps.timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API -------------------------------------------------------------------------------

    def routines(self) -> list[RoutineInfo]:
        return self._run(self._steps.routines_steps())

    def routine(self, name: str) -> RoutineInfo:
        return self._run(self._steps.routine_steps(name))

    def strategies(self) -> list[StrategyInfo]:
        return self._run(self._steps.strategies_steps())

    def limits(self) -> Limits:
        return self._run(self._steps.limits_steps())

    def evaluate(self, routine: str, inputs: Inputs, params: Params = None, *,
                 dtype: str | None = None, timeout_ms: float | None = None) -> Result:
        opts = options(Kind.EVALUATE, dtype=dtype, timeout_ms=timeout_ms)
        result: Result = self._run(self._steps.compute_steps(routine, inputs, params, opts))
        return result

    def sensitivities(self, routine: str, inputs: Inputs, params: Params = None,
                      wrt: Wrt = None, *, order: int = 1, cross: bool = False,
                      strategy: str = "auto", dtype: str | None = None,
                      timeout_ms: float | None = None, check: str | bool | None = None,
                      bump: BumpLike = None) -> Result:
        opts = options(Kind.SENSITIVITIES, wrt=wrt, order=order, cross=cross,
                       strategy=strategy, dtype=dtype, timeout_ms=timeout_ms, check=check,
                       bump=bump)
        result: Result = self._run(self._steps.compute_steps(routine, inputs, params, opts))
        return result

    def compare(self, routine: str, inputs: Inputs, params: Params = None, wrt: Wrt = None,
                *, order: int = 1) -> Comparison:
        opts = options(Kind.COMPARE, wrt=wrt, order=order)
        comparison: Comparison = self._run(
            self._steps.compute_steps(routine, inputs, params, opts))
        return comparison

    def expression(self, expression: str | Sequence[str] | None, inputs: Inputs,
                   params: Params = None, wrt: Wrt = None, *,
                   names: Sequence[str] | str | None = None, ode: Mapping[str, Any] | None = None,
                   evaluate: bool = False, order: int = 1, cross: bool = False,
                   strategy: str = "auto", dtype: str | None = None,
                   timeout_ms: float | None = None, check: str | bool | None = None,
                   bump: BumpLike = None) -> Result:
        """Values and derivatives of your own function (docs/expressions.md)::

            r = client.expression("K / (1 + (K - N0) / N0 * exp(-r * t))",
                                  {"N0": n0, "t": t}, {"r": 0.5, "K": 100.0})
            r.derivatives["r"], r.expression   # dN/dr; the canonical text

        ``inputs`` as a mapping of feature name to column, or an array with ``names`` in
        column order; ``ode={"rhs": ..., "state": ..., "initial": ..., "time": ...}`` in place
        of ``expression`` integrates an ODE; ``evaluate=True`` asks for values only."""
        opts = _expression_options(evaluate, wrt, order, cross, strategy, dtype, timeout_ms,
                                   check, bump)
        result: Result = self._run(self._steps.expression_steps(
            expression, ode, inputs, names, params, opts))
        return result

    def scenarios(self, routine: str, inputs: Inputs, params: Params = None,
                  shifts: ShiftsLike | None = None, *, combine: str = "product",
                  scenario_list: Sequence[Mapping[str, float]] | None = None,
                  explain: bool = False, order: int = 1, cross: bool = False, wrt: Wrt = None,
                  strategy: str = "auto", dtype: str | None = None,
                  timeout_ms: float | None = None, totals_only: bool = False) -> ScenarioResult:
        """The book revalued under every scenario in one request (docs/sensitivities.md,
        "Scenarios and P&L explain")::

            r = client.scenarios("black_scholes_call", book, {"sigma": 0.2, "r": 0.05},
                                 {"sigma": ("relative", [-0.1, 0, 0.1]),
                                  "r": ("absolute", [-0.01, 0.01])}, explain=True)
            r.pnl            # (6, N): values minus base, per scenario of the grid
            r.table()        # (columns, rows): shifts and total P&L per scenario

        ``combine="zip"`` pairs the i-th shifts instead of taking every combination;
        ``scenario_list=[{"sigma": 0.01, "r": -0.005}, ...]`` (absolute shifts) replaces
        ``shifts``. ``explain`` adds the Taylor terms of the base (``order=2``, ``cross``)
        with respect to ``wrt`` (default: the shifted factors). ``totals_only`` asks for
        the sums over the book only (``values``, ``pnl`` and ``base`` are None). The answer
        travels as binary tensors (as JSON with ``protocol="json"``)."""
        opts = _scenario_options(explain, wrt, order, cross, strategy, dtype, timeout_ms)
        return self._run(self._steps.scenarios_steps(
            routine, inputs, params, (shifts, combine, scenario_list, explain, totals_only),
            opts))

    def expression_scenarios(self, expression: str | Sequence[str] | None, inputs: Inputs,
                             params: Params = None, shifts: ShiftsLike | None = None, *,
                             names: Sequence[str] | str | None = None,
                             ode: Mapping[str, Any] | None = None, combine: str = "product",
                             scenario_list: Sequence[Mapping[str, float]] | None = None,
                             explain: bool = False, order: int = 1, cross: bool = False,
                             wrt: Wrt = None, strategy: str = "auto", dtype: str | None = None,
                             timeout_ms: float | None = None,
                             totals_only: bool = False) -> ScenarioResult:
        """:meth:`scenarios` for your own function (``POST /v1/expressions/scenarios``)::

            r = client.expression_scenarios("C * x", {"x": x}, {"C": 2.0},
                                            {"C": ("relative", [-0.1, 0.1])})

        ``inputs`` and ``names`` (or ``ode=``) as for :meth:`expression`; shifts name
        parameters or input features; ``r.expression`` is the canonical text."""
        opts = _scenario_options(explain, wrt, order, cross, strategy, dtype, timeout_ms)
        return self._run(self._steps.expression_scenarios_steps(
            (expression, ode), inputs, names, params,
            (shifts, combine, scenario_list, explain, totals_only), opts))

    # -- sending -------------------------------------------------------------------------------

    def _run(self, steps: Steps[T]) -> T:
        try:
            calls = next(steps)
            while True:
                calls = steps.send(self._send_all(calls))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _send_all(self, calls: list[Call[Any]]) -> list[Any]:
        upload = self._steps.upload(calls)
        if len(calls) == 1:
            return [self._send(calls[0], upload)]
        pool = ThreadPoolExecutor(min(self._steps.max_concurrency, len(calls)),
                                  thread_name_prefix="dydc-chunk")
        try:
            return list(pool.map(lambda c: self._send(c, upload), calls))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _send(self, call: Call[T], upload: Upload | None) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request(self._http, call.body(upload)))
            except httpx.TransportError as exc:
                wait = self._steps.policy.wait_after(attempt, exc=exc)
                if wait is None:
                    raise _connection_failed(self._steps.url, call, exc, attempt + 1) from exc
            else:
                wait = self._steps.policy.wait_after(
                    attempt, status=response.status_code,
                    retry_after=response.headers.get("Retry-After"))
                if wait is None:
                    return call.outcome(response)
            time.sleep(wait)
            attempt += 1


class AsyncClient:
    """The same API as :class:`Client`, async, over ``httpx.AsyncClient``::

        async with dydc.AsyncClient() as client:
            r = await client.sensitivities("linear", x, {"C": -5.0})
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None,
                 timeout: float | None = 60.0, retries: int = 3, protocol: str = "auto",
                 retry_on_timeout: bool = False, backoff: float = 0.5,
                 max_retry_after: float = 30.0, max_concurrency: int = 4,
                 binary_min_samples: int = AUTO_BINARY_MIN_SAMPLES,
                 progress: Progress | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        policy = RetryPolicy(retries, retry_on_timeout, backoff, max_retry_after=max_retry_after)
        self._steps = _Steps(url, api_key=api_key, timeout=timeout, protocol=protocol,
                             policy=policy, max_concurrency=max_concurrency,
                             binary_min_samples=binary_min_samples, progress=progress)
        self._http = httpx.AsyncClient(base_url=self._steps.url, headers=self._steps.headers,
                                       timeout=self._steps.timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API -------------------------------------------------------------------------------

    async def routines(self) -> list[RoutineInfo]:
        return await self._run(self._steps.routines_steps())

    async def routine(self, name: str) -> RoutineInfo:
        return await self._run(self._steps.routine_steps(name))

    async def strategies(self) -> list[StrategyInfo]:
        return await self._run(self._steps.strategies_steps())

    async def limits(self) -> Limits:
        return await self._run(self._steps.limits_steps())

    async def evaluate(self, routine: str, inputs: Inputs, params: Params = None, *,
                       dtype: str | None = None, timeout_ms: float | None = None) -> Result:
        opts = options(Kind.EVALUATE, dtype=dtype, timeout_ms=timeout_ms)
        result: Result = await self._run(
            self._steps.compute_steps(routine, inputs, params, opts))
        return result

    async def sensitivities(self, routine: str, inputs: Inputs, params: Params = None,
                            wrt: Wrt = None, *, order: int = 1, cross: bool = False,
                            strategy: str = "auto", dtype: str | None = None,
                            timeout_ms: float | None = None,
                            check: str | bool | None = None, bump: BumpLike = None) -> Result:
        opts = options(Kind.SENSITIVITIES, wrt=wrt, order=order, cross=cross,
                       strategy=strategy, dtype=dtype, timeout_ms=timeout_ms, check=check,
                       bump=bump)
        result: Result = await self._run(
            self._steps.compute_steps(routine, inputs, params, opts))
        return result

    async def compare(self, routine: str, inputs: Inputs, params: Params = None,
                      wrt: Wrt = None, *, order: int = 1) -> Comparison:
        opts = options(Kind.COMPARE, wrt=wrt, order=order)
        comparison: Comparison = await self._run(
            self._steps.compute_steps(routine, inputs, params, opts))
        return comparison

    async def expression(self, expression: str | Sequence[str] | None, inputs: Inputs,
                         params: Params = None, wrt: Wrt = None, *,
                         names: Sequence[str] | str | None = None,
                         ode: Mapping[str, Any] | None = None, evaluate: bool = False,
                         order: int = 1, cross: bool = False, strategy: str = "auto",
                         dtype: str | None = None, timeout_ms: float | None = None,
                         check: str | bool | None = None, bump: BumpLike = None) -> Result:
        """:meth:`Client.expression`, async."""
        opts = _expression_options(evaluate, wrt, order, cross, strategy, dtype, timeout_ms,
                                   check, bump)
        result: Result = await self._run(self._steps.expression_steps(
            expression, ode, inputs, names, params, opts))
        return result

    async def scenarios(self, routine: str, inputs: Inputs, params: Params = None,
                        shifts: ShiftsLike | None = None, *, combine: str = "product",
                        scenario_list: Sequence[Mapping[str, float]] | None = None,
                        explain: bool = False, order: int = 1, cross: bool = False,
                        wrt: Wrt = None, strategy: str = "auto", dtype: str | None = None,
                        timeout_ms: float | None = None,
                        totals_only: bool = False) -> ScenarioResult:
        """:meth:`Client.scenarios`, async."""
        opts = _scenario_options(explain, wrt, order, cross, strategy, dtype, timeout_ms)
        return await self._run(self._steps.scenarios_steps(
            routine, inputs, params, (shifts, combine, scenario_list, explain, totals_only),
            opts))

    async def expression_scenarios(
            self, expression: str | Sequence[str] | None, inputs: Inputs,
            params: Params = None, shifts: ShiftsLike | None = None, *,
            names: Sequence[str] | str | None = None, ode: Mapping[str, Any] | None = None,
            combine: str = "product", scenario_list: Sequence[Mapping[str, float]] | None = None,
            explain: bool = False, order: int = 1, cross: bool = False, wrt: Wrt = None,
            strategy: str = "auto", dtype: str | None = None, timeout_ms: float | None = None,
            totals_only: bool = False) -> ScenarioResult:
        """:meth:`Client.expression_scenarios`, async."""
        opts = _scenario_options(explain, wrt, order, cross, strategy, dtype, timeout_ms)
        return await self._run(self._steps.expression_scenarios_steps(
            (expression, ode), inputs, names, params,
            (shifts, combine, scenario_list, explain, totals_only), opts))

    # -- sending -------------------------------------------------------------------------------

    async def _run(self, steps: Steps[T]) -> T:
        try:
            calls = next(steps)
            while True:
                calls = steps.send(await self._send_all(calls))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _send_all(self, calls: list[Call[Any]]) -> list[Any]:
        upload = self._steps.upload(calls)
        if len(calls) == 1:
            return [await self._send(calls[0], upload)]
        slots = asyncio.Semaphore(self._steps.max_concurrency)

        async def send(call: Call[Any]) -> Any:
            async with slots:
                return await self._send(call, upload)

        tasks = [asyncio.ensure_future(send(c)) for c in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    async def _send(self, call: Call[T], upload: Upload | None) -> T:
        attempt = 0
        while True:
            content = call.body(None) if upload is None else call.abody(upload)
            try:
                response = await self._http.send(call.request(self._http, content))
            except httpx.TransportError as exc:
                wait = self._steps.policy.wait_after(attempt, exc=exc)
                if wait is None:
                    raise _connection_failed(self._steps.url, call, exc, attempt + 1) from exc
            else:
                wait = self._steps.policy.wait_after(
                    attempt, status=response.status_code,
                    retry_after=response.headers.get("Retry-After"))
                if wait is None:
                    return call.outcome(response)
            await asyncio.sleep(wait)
            attempt += 1

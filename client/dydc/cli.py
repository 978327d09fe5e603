"""The ``dydc`` command line (``pip install 'dydc-client[cli]'``): Typer parses the arguments,
Rich draws the tables and the upload progress bar.

The service's URL comes from ``--url`` or ``DYDC_URL``, its key from ``--api-key`` or
``DYDC_API_KEY``; these and the other global options may come before the command or after it
(``dydc routines --url URL``), as kubectl and gh take them. An error prints one line with the
service's detail and exits with 1; a usage error (a malformed option) exits with 2, as Click
answers an unknown option.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

try:
    import typer
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table
    from typer.core import TyperCommand, TyperGroup
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit("the dydc command line needs its extra: pip install 'dydc-client[cli]'") \
        from exc

from dydc.client import DEFAULT_URL, PROTOCOLS, Client, api_key_problem, url_problem
from dydc.errors import DydcError
from dydc.load import LoadPoint, run_load
from dydc.results import Comparison, Result, RoutineInfo
from dydc.scenarios import SHIFT_TYPES, ScenarioResult
from dydc.tables import (
    RESULT_SUFFIXES,
    TABLE_SUFFIXES,
    InputTable,
    input_suffix,
    json_text,
    output_suffix,
    read_inputs,
    result_columns,
    write_result,
    write_table,
)

__all__ = ["UsageError", "app", "main"]

P = ParamSpec("P")
R = TypeVar("R")


class UsageError(ValueError):
    """An option's value the command line cannot use: exit status 2, not 1."""


class _Commands(TyperGroup):
    """The group: its own options (``--url`` ...) are taken after the command as well, moved
    in front of it before Click parses (the command's options never share their names)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # ctx: Click's Context, which typer >= 0.29 vendors (typer._click) and older ones
        # import: typed Any to take either
        return super().parse_args(ctx, _hoist_options(self.params, args))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(self.get_params(ctx))
        super().format_help(ctx, formatter)


class _Command(TyperCommand):
    """A command whose help reads as its docstring's paragraphs, each one line that the
    terminal wraps (Rich would keep the source's line breaks, mid-sentence), and whose flags
    show no ``<bool>``: they take no value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _paragraphs(self.help)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(self.get_params(ctx))
        super().format_help(ctx, formatter)


def _paragraphs(text: str | None) -> str | None:
    """``text`` with each paragraph's line breaks made spaces (paragraphs stay apart)."""
    if text is None:
        return None
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def _untyped_flags(params: Sequence[Any]) -> None:
    """No type beside an option that takes no value (``--json``, ``--help``): Typer's help
    shows ``<bool>`` there, as if it took one."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _hoist_options(params: Sequence[Any], args: list[str]) -> list[str]:
    """``args`` with the options among ``params`` (Click's parameters, ``--url U``,
    ``--url=U``) put first, in their order; ``--`` ends the options."""
    valued = {name: not getattr(p, "is_flag", False)
              for p in params for name in p.opts if name.startswith("--")}
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.partition("=")[0]
        if name in valued:
            takes = valued[name] and "=" not in arg and i + 1 < len(args)
            hoisted += args[i:i + 1 + takes]
            i += 1 + takes
            continue
        rest.append(arg)
        i += 1
    return hoisted + rest


app = typer.Typer(cls=_Commands,
                  help="Call the dydc sensitivity service: routines, derivatives, comparisons, "
                  "load tests. The global options may also follow the command.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)

_PROGRESS_MIN_BYTES = 4 << 20  # a bar for uploads from 4 MiB: below, it would only flicker


@dataclass(frozen=True)
class _Service:
    url: str
    api_key: str | None
    protocol: str
    timeout: float
    retries: int

    @contextmanager
    def client(self, progress: bool = False) -> Iterator[Client]:
        with _UploadBar() if progress else _no_bar() as bar, Client(
                self.url, api_key=self.api_key, protocol=self.protocol, timeout=self.timeout,
                retries=self.retries, progress=bar) as client:
            yield client


class _UploadBar:
    """A Rich progress bar on stderr, shown once an upload of 4 MiB or more starts."""

    def __init__(self) -> None:
        self._progress = Progress(console=err, transient=True)
        self._task: TaskID | None = None

    def __enter__(self) -> _UploadBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._progress.stop()

    def __call__(self, sent: int, total: int) -> None:
        if total < _PROGRESS_MIN_BYTES:
            return
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("upload", total=total)
        self._progress.update(self._task, completed=sent)


@contextmanager
def _no_bar() -> Iterator[None]:
    yield None


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """One line on stderr with what to change, and exit status 1 (2 for a usage error)
    instead of a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:  # stdout's reader went away (| head): stop quietly, with
            # the status of a writer killed by SIGPIPE, and nothing more written at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None  # 128 + SIGPIPE
        except (DydcError, ValueError, OSError) as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None

    return run


def _service(ctx: typer.Context) -> _Service:
    service: _Service = ctx.obj
    return service


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="DYDC_URL", help="The service.")] = DEFAULT_URL,
    api_key: Annotated[str | None, typer.Option(envvar="DYDC_API_KEY",
                                                help="Sent as Authorization: Bearer.")] = None,
    protocol: Annotated[str, typer.Option(help="auto, json (v1) or binary (v2).")] = "auto",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 60.0,
    retries: Annotated[int, typer.Option(help="Retries on 503 and connection failures.")] = 3,
) -> None:
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"use one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    if not timeout > 0:
        raise typer.BadParameter(f"{timeout:g}; give a number of seconds above 0",
                                 param_hint="--timeout")
    if retries < 0:
        raise typer.BadParameter(f"{retries}; give 0 or more", param_hint="--retries")
    # said here as usage errors, not by the Client as a ValueError (exit 1); "" leaves the
    # Client to its default
    problem = url_problem(url) if url else None
    if problem is not None:
        raise typer.BadParameter(f"{url!r}: {problem}", param_hint=_hint(ctx, "url"))
    problem = api_key_problem(api_key) if api_key else None
    if problem is not None:  # not echoed: a key is a secret
        raise typer.BadParameter(f"the key {problem}", param_hint=_hint(ctx, "api_key"))
    ctx.obj = _Service(url, api_key, protocol, timeout, retries)


def _hint(ctx: typer.Context, name: str) -> str:
    """The option, or its variable (``DYDC_URL``) where the value came from there."""
    (param,) = (p for p in ctx.command.params if p.name == name)
    source = ctx.get_parameter_source(name)
    if getattr(source, "name", None) == "ENVIRONMENT" and param.envvar:
        return str(param.envvar)
    return str(param.opts[0])


# -- catalogue ---------------------------------------------------------------------------------

def _print_json(doc: Any) -> None:
    """Strict JSON: what has no value (a latency where no request completed, a relative
    difference the service sent as null) as null, not Python's NaN."""
    out.print_json(json_text(_plain(doc)))


def _plain(value: Any) -> Any:
    """Dataclasses as dicts, arrays as lists, all the way down."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _bounds(bounds: tuple[float | None, float | None] | None) -> str:
    if bounds is None:
        return ""
    low, high = bounds
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


@app.command(cls=_Command)
@_reports_errors
def routines(ctx: typer.Context,
             as_json: Annotated[bool, typer.Option("--json", help="JSON, not a table.")] = False,
             ) -> None:
    """List the routines."""
    with _service(ctx).client() as client:
        infos = client.routines()
    if as_json:
        _print_json(infos)
        return
    table = Table("routine", "params", "inputs", "outputs", "description")
    for i in infos:
        table.add_row(i.name, ", ".join(i.param_names), ", ".join(i.inputs),
                      ", ".join(i.outputs), i.description)
    out.print(table)


@app.command(cls=_Command)
@_reports_errors
def describe(ctx: typer.Context, name: str,
             as_json: Annotated[bool, typer.Option("--json", help="JSON, not a table.")] = False,
             ) -> None:
    """Describe one routine: its parameters, inputs and outputs."""
    with _service(ctx).client() as client:
        info = client.routine(name)
    if as_json:
        _print_json(info)
        return
    table = Table("parameter", "default", "bounds", "description",
                  title=f"{info.name}: {info.description}")
    for p in info.params:
        table.add_row(p.name, repr(p.default), _bounds(p.bounds), p.description)
    out.print(table)
    out.print(f"inputs: {', '.join(info.inputs)}    outputs: {', '.join(info.outputs)}")


@app.command(cls=_Command)
@_reports_errors
def strategies(ctx: typer.Context,
               as_json: Annotated[bool, typer.Option("--json", help="JSON, not a table.")] = False,
               ) -> None:
    """List the strategies: how each differentiates, and its cap on N."""
    with _service(ctx).client() as client:
        rows = client.strategies()
    if as_json:
        _print_json(rows)
        return
    table = Table("strategy", "mode", "cost", "cap", "batched", "order 2", "served")
    for s in rows:
        table.add_row(s.name, s.mode, s.cost, "" if s.cap is None else f"{s.cap:,}",
                      "yes" if s.batchable else "no", _yes_no(s.order2),
                      "yes" if s.enabled else "no (DYDC_STRATEGIES)")
    out.print(table)


def _yes_no(flag: bool | None) -> str:
    return "" if flag is None else "yes" if flag else "no"


# -- computations ------------------------------------------------------------------------------

def _params(given: Sequence[str], table: InputTable) -> dict[str, Any]:
    """``--param sigma=0.2`` (shared) or ``--param sigma=@vol`` (the column vol, per sample)."""
    params: dict[str, Any] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"--param {item!r}: write NAME=NUMBER, or NAME=@COLUMN for one "
                             "value per sample")
        if name.strip() in params:  # else the last would win, unsaid (as --shift)
            raise UsageError(f"--param {name.strip()} is given twice; give each parameter "
                             "once")
        value = value.strip()
        if value.startswith("@"):
            params[name.strip()] = table.column(value[1:])
            continue
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"--param {item!r}: {value!r} is not a number (a column is "
                             f"@{value})") from None
        if not math.isfinite(number):  # as --shift: the service reads finite numbers only
            raise UsageError(f"--param {item!r}: give a finite number")
        params[name.strip()] = number
    return params


def _wrt(given: str | None) -> list[str] | None:
    if given is None:
        return None
    names = [w.strip() for w in given.split(",") if w.strip()]
    if not names:
        raise UsageError("--wrt is empty; name at least one parameter, or leave --wrt out")
    return names


def _show(result: Result, columns: list[tuple[str, Any]], rows: int) -> None:
    subject = result.routine if result.expression is None else result.expression  # not a hash
    strategy = "" if result.strategy is None else f"strategy {result.strategy}, "  # evaluate
    table = Table(*(name for name, _ in columns),
                  title=f"{subject}: {result.n} samples, {strategy}{result.dtype} on "
                        f"{result.device}")
    for i in range(min(rows, result.n)):
        table.add_row(*(f"{float(values[i]):.10g}" for _, values in columns))
    out.print(table)
    if result.n > rows:
        out.print(f"the first {rows} of {result.n} rows; --out FILE writes them all",
                  soft_wrap=True)


def _emit(result: Result, info: RoutineInfo, samples: Any,
          kept: Sequence[tuple[str, Any]], target: str | None, rows: int) -> None:
    columns = result_columns(result, info, samples, kept)
    if target is None:
        _show(result, columns, rows)
    else:
        write_result(target, columns, result, sys.stdout)


InputsOption = Annotated[str, typer.Option(
    "--inputs", "-i", help=".csv (a column per feature, by name), .npy, .json, or - for stdin.")]
ParamOption = Annotated[list[str] | None, typer.Option(
    "--param", "-p", help="NAME=NUMBER, or NAME=@COLUMN for one value per sample; repeatable.")]
OutOption = Annotated[str | None, typer.Option(
    "--out", "-o", help=".csv, .json or .npy, or - for CSV on stdout; a table when left out.")]
RowsOption = Annotated[int, typer.Option(min=0, help="Rows of the table printed without --out.")]
DtypeOption = Annotated[str | None, typer.Option(help="float64 (default) or float32.")]
WrtOption = Annotated[str | None, typer.Option(
    help="Parameters and/or input features, comma-separated; default all parameters.")]
OrderOption = Annotated[int, typer.Option(help="1, or 2 for second derivatives.")]
CrossOption = Annotated[bool, typer.Option(help="Order 2: every pair, not only the diagonal.")]
StrategyOption = Annotated[str, typer.Option(help="How to differentiate (dydc strategies).")]
CheckOption = Annotated[bool, typer.Option(help="Also check against finite differences.")]
ShiftSizeOption = Annotated[float | None, typer.Option(
    "--shift", help="finite-difference: the bump size.")]
ShiftTypeOption = Annotated[str | None, typer.Option(help="absolute or relative.")]
SchemeOption = Annotated[str | None, typer.Option(help="central, forward or backward.")]
TimeoutOption = Annotated[float | None, typer.Option(help="The request's deadline.")]


def _files(inputs: str, out_file: str | None,
           suffixes: Sequence[str] = RESULT_SUFFIXES) -> None:
    """--inputs and --out by their suffixes, before anything is sent: a name the command
    cannot write would be refused only once the service had computed the answer."""
    try:
        input_suffix(inputs)
        if out_file is not None:
            output_suffix(out_file, suffixes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if out_file not in (None, "-") and not Path(out_file).resolve().parent.is_dir():
        raise UsageError(f"--out {out_file}: the folder {Path(out_file).parent} does not "
                         "exist; make it first, or write elsewhere")


def _inputs(source: str, info: RoutineInfo, param: list[str] | None
            ) -> tuple[Any, dict[str, Any], list[tuple[str, Any]]]:
    """The samples, the parameters, and the columns per-sample parameters were read from
    (kept in the output beside the features, so that it reads back as --inputs)."""
    table = read_inputs(source, sys.stdin)
    params = _params(param or [], table)  # first: a malformed --param before the data's faults
    return table.samples(info), params, _param_columns(param or [], table)


def _columns_taken(given: Sequence[str]) -> list[str]:
    """The columns ``--param NAME=@COLUMN`` names, in order, each once."""
    values = (item.partition("=")[2].strip() for item in given)
    return list(dict.fromkeys(v[1:] for v in values if v.startswith("@")))


def _param_columns(given: Sequence[str], table: InputTable) -> list[tuple[str, Any]]:
    return [(name, table.column(name)) for name in _columns_taken(given)]


@app.command(cls=_Command)
@_reports_errors
def evaluate(ctx: typer.Context, name: str, inputs: InputsOption, param: ParamOption = None,
             out_file: OutOption = None, rows: RowsOption = 20, dtype: DtypeOption = None,
             ) -> None:
    """Values only."""
    _files(inputs, out_file)
    with _service(ctx).client(progress=True) as client:
        info = client.routine(name)
        samples, params, kept = _inputs(inputs, info, param)
        result = client.evaluate(name, samples, params, dtype=dtype)
    _emit(result, info, samples, kept, out_file, rows)


@app.command(cls=_Command)
@_reports_errors
def sensitivities(
    ctx: typer.Context, name: str, inputs: InputsOption, param: ParamOption = None,
    wrt: WrtOption = None,
    order: OrderOption = 1,
    cross: CrossOption = False,
    strategy: StrategyOption = "auto",
    check: CheckOption = False,
    shift: ShiftSizeOption = None,
    shift_type: ShiftTypeOption = None,
    scheme: SchemeOption = None,
    dtype: DtypeOption = None,
    timeout_ms: TimeoutOption = None,
    out_file: OutOption = None, rows: RowsOption = 20,
) -> None:
    """Values and derivatives for every sample of a file."""
    _files(inputs, out_file)
    with _service(ctx).client(progress=True) as client:
        info = client.routine(name)
        samples, params, kept = _inputs(inputs, info, param)
        result = client.sensitivities(name, samples, params, _wrt(wrt), order=order,
                                      cross=cross, strategy=strategy, dtype=dtype,
                                      timeout_ms=timeout_ms, check=check or None,
                                      bump=_bump(shift, shift_type, scheme))
    _emit(result, info, samples, kept, out_file, rows)
    _print_check(result)


def _bump(shift: float | None, shift_type: str | None,
          scheme: str | None) -> dict[str, Any] | None:
    """--shift, --shift-type and --scheme as the client's ``bump``; None where none is given."""
    bump = {k: v for k, v in (("shift", shift), ("shift_type", shift_type),
                              ("scheme", scheme)) if v is not None}
    return bump or None


def _print_check(result: Result) -> None:
    if result.check is not None:
        table = Table("key", "max abs diff", "max rel diff",
                      title=f"check against {result.check.strategy}")
        for key, value in result.check.max_abs_diff.items():
            rel = result.check.max_rel_diff.get(key, math.nan)
            table.add_row(key, f"{value:.3g}", "-" if math.isnan(rel) else f"{rel:.3g}")
        err.print(table)


def _features(table: InputTable, names: str | None, param: list[str]) -> list[str]:
    """The input features: --names, else the file's columns that no --param NAME=@COLUMN
    takes."""
    if names is not None:
        return [n.strip() for n in names.split(",") if n.strip()]
    if table.columns is None:
        raise UsageError("--names: name the input features (comma-separated, in column "
                         "order); this file's columns have no names")
    taken = set(_columns_taken(param))
    # every column, those that are not numbers too: a feature's bad cell is then named
    return [c for c in table.names if c not in taken]


ExpressionArgument = Annotated[str | None, typer.Argument(
    metavar="EXPRESSION", help="Your function, e.g. 'C * x' (docs/expressions.md).")]
NamesOption = Annotated[str | None, typer.Option(
    help="The input features, comma-separated in column order; default: the file's columns, "
         "less those a --param NAME=@COLUMN takes.")]
OdeOption = Annotated[str | None, typer.Option(
    help='An ODE in place of EXPRESSION, as JSON: {"rhs": "r * n * (1 - n / K)", '
         '"state": "n", "initial": "N0", "time": "t", "steps": 200, "method": "rk4"}.')]


@dataclass(frozen=True)
class _Function:
    """A caller's function as the command line read it: the expression or the ODE, its input
    features, and the file's samples and parameters."""

    text: str | None
    ode: dict[str, Any] | None
    features: list[str]
    info: RoutineInfo
    samples: Any
    params: dict[str, Any]
    kept: list[tuple[str, Any]]
    """The columns per-sample parameters were read from."""


def _function(text: str | None, ode: str | None, inputs: str, names: str | None,
              param: list[str] | None) -> _Function:
    """EXPRESSION or --ode JSON, and --inputs read with --names and --param."""
    if (text is None) == (ode is None):
        raise UsageError("give an EXPRESSION, or --ode JSON, not both")
    spec = None
    if ode is not None:
        try:
            spec = json.loads(ode)
        except ValueError as exc:
            raise UsageError(f"--ode is not JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise UsageError("--ode: give a JSON object (rhs, state, initial, time, steps, "
                             "method)")
    table = read_inputs(inputs, sys.stdin)
    features = _features(table, names, param or [])
    info = RoutineInfo(name="expression", description=text or ode or "", params=[],
                       inputs=features, outputs=["y"])
    params = _params(param or [], table)  # first, as _inputs
    return _Function(text, spec, features, info, table.samples(info), params,
                     _param_columns(param or [], table))


def _print_expression(canonical: str | None) -> None:
    if canonical is not None:
        out.print(f"expression: {canonical}", markup=False, highlight=False, soft_wrap=True)


@app.command(cls=_Command)
@_reports_errors
def expression(
    ctx: typer.Context, inputs: InputsOption, text: ExpressionArgument = None,
    param: ParamOption = None, names: NamesOption = None, ode: OdeOption = None,
    wrt: WrtOption = None,
    order: OrderOption = 1,
    cross: CrossOption = False,
    strategy: StrategyOption = "auto",
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Values only.")] = False,
    check: CheckOption = False,
    shift: ShiftSizeOption = None,
    shift_type: ShiftTypeOption = None,
    scheme: SchemeOption = None,
    dtype: DtypeOption = None,
    timeout_ms: TimeoutOption = None,
    out_file: OutOption = None, rows: RowsOption = 20,
) -> None:
    """Values and derivatives of your own function (or ODE) for every sample of a file."""
    _files(inputs, out_file)
    if evaluate:
        given = [option for option, is_given in (
            ("--wrt", wrt is not None), ("--order", order != 1), ("--cross", cross),
            ("--strategy", strategy != "auto"), ("--check", check),
            ("--shift", shift is not None), ("--shift-type", shift_type is not None),
            ("--scheme", scheme is not None)) if is_given]
        if given:
            raise UsageError(f"{', '.join(given)}: --evaluate asks for values only; leave "
                             "out the options that shape derivatives")
    f = _function(text, ode, inputs, names, param)
    with _service(ctx).client(progress=True) as client:
        result = client.expression(f.text, f.samples, f.params, _wrt(wrt), names=f.features,
                                   ode=f.ode, evaluate=evaluate, order=order, cross=cross,
                                   strategy=strategy, dtype=dtype, timeout_ms=timeout_ms,
                                   check=check or None, bump=_bump(shift, shift_type, scheme))
    if out_file is None:
        _print_expression(result.expression)
    _emit(result, f.info, f.samples, f.kept, out_file, rows)
    _print_check(result)


def _worst(diffs: dict[str, float]) -> str:
    """The largest difference; NaN (the service's null: no reference to divide by) only
    where every one is."""
    numbers = [v for v in diffs.values() if not math.isnan(v)]
    return f"{max(numbers):.3g}" if numbers else "-" if diffs else ""


def _comparison_table(comparison: Comparison) -> Table:
    table = Table("strategy", "status", "time ms", "max abs diff", "max rel diff", "reason",
                  title=f"{comparison.routine}: {comparison.n} samples, order "
                        f"{comparison.order}, against {comparison.reference}")
    for row in comparison.strategies:
        table.add_row(row.strategy, row.status,
                      "" if row.time_ms is None else f"{row.time_ms:.3g}",
                      _worst(row.max_abs_diff), _worst(row.max_rel_diff), row.reason or "")
    return table


@app.command(cls=_Command)
@_reports_errors
def compare(
    ctx: typer.Context, name: str, inputs: InputsOption, param: ParamOption = None,
    wrt: Annotated[str | None, typer.Option(help="Comma-separated; default all parameters.")
                   ] = None,
    order: Annotated[int, typer.Option(help="1 or 2.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, not a table.")] = False,
) -> None:
    """Every strategy's time and disagreement with the reference, side by side."""
    _files(inputs, None)
    with _service(ctx).client() as client:
        info = client.routine(name)
        samples, params, _ = _inputs(inputs, info, param)
        comparison = client.compare(name, samples, params, _wrt(wrt), order=order)
    if as_json:
        _print_json({"routine": comparison.routine, "n": comparison.n,
                     "order": comparison.order, "reference": comparison.reference,
                     "strategies": comparison.strategies})
        return
    out.print(_comparison_table(comparison))


def _shifts(given: Sequence[str]) -> dict[str, tuple[str, list[float]]]:
    """``--shift sigma=rel:-0.1,0,0.1`` (relative: fractions of the value) or
    ``--shift r=abs:-0.01,0.01`` (absolute), one factor each."""
    shifts: dict[str, tuple[str, list[float]]] = {}
    for item in given:
        name, sep, spec = item.partition("=")
        kind, colon, values = spec.partition(":")
        name, kind = name.strip(), kind.strip().lower()
        if not sep or not name or not colon or kind not in SHIFT_TYPES:
            raise UsageError(f"--shift {item!r}: write NAME=rel:V1,V2,... (fractions of the "
                             "value) or NAME=abs:V1,V2,... (amounts added)")
        if name in shifts:
            raise UsageError(f"--shift {name} is given twice; give each factor's shifts once")
        parts = [v.strip() for v in values.split(",")] if values.strip() else []
        if "" in parts:  # (dropped, "-0.1,,0.1" had lost the base scenario, unsaid)
            raise UsageError(f"--shift {item!r}: a shift is empty between commas; write each "
                             "one (0 for the unshifted value)")
        try:
            numbers = [float(v) for v in parts]
        except ValueError:
            raise UsageError(f"--shift {item!r}: the shifts must be numbers separated by "
                             "commas") from None
        if not numbers:
            raise UsageError(f"--shift {item!r}: give at least one shift after {kind}:")
        if not all(math.isfinite(v) for v in numbers):
            raise UsageError(f"--shift {item!r}: the shifts must be finite numbers")
        shifts[name] = (SHIFT_TYPES[kind], numbers)
    if not shifts:
        raise UsageError("--shift: give at least one, e.g. --shift sigma=rel:-0.1,0,0.1")
    return shifts


def _show_scenarios(result: ScenarioResult, rows: int) -> None:
    columns, cells = result.table()
    name = result.routine if result.expression is None else "expression"  # not its hash
    table = Table(*columns, title=f"{name}: {result.scenario_count} scenarios x "
                  f"{result.n} samples, {result.dtype} on {result.device}")
    for row in cells[:rows]:
        table.add_row(str(row[0]), *(f"{float(v):.10g}" for v in row[1:]))
    out.print(table)
    if len(cells) > rows:
        out.print(f"the first {rows} of {len(cells)} scenarios; --out FILE writes them all",
                  soft_wrap=True)


ShiftOption = Annotated[list[str] | None, typer.Option(
    help="NAME=rel:V1,V2,... or NAME=abs:V1,V2,...: a parameter's or input feature's shifts; "
         "repeatable, one factor each.")]
CombineOption = Annotated[str, typer.Option(
    help="product (every combination) or zip (the i-th shift of every factor).")]
ExplainOption = Annotated[bool, typer.Option(
    help="Explain each scenario's P&L by the base's Taylor terms.")]
ExplainOrderOption = Annotated[int, typer.Option(help="The explain's order: 1, or 2 with gamma.")]
ExplainCrossOption = Annotated[bool, typer.Option(help="Order 2: the cross terms too.")]
ExplainWrtOption = Annotated[str | None, typer.Option(
    help="The explain's factors, comma-separated; default the shifted ones.")]
TotalsOnlyOption = Annotated[bool, typer.Option(
    "--totals-only", help="Only the sums over the book: the service sends no per-sample "
                          "arrays (the table is the same).")]
ScenarioOutOption = Annotated[str | None, typer.Option(
    "--out", "-o", help=".csv or .json, or - for CSV on stdout; a table when left out.")]
ScenarioRowsOption = Annotated[int, typer.Option(min=0, help="Scenarios shown without --out.")]


@dataclass(frozen=True)
class _Scenarios:
    """The scenario options both commands take, checked, as the client's arguments."""

    shifts: dict[str, tuple[str, list[float]]]
    combine: str
    explain: bool
    order: int
    cross: bool
    wrt: list[str] | None
    totals_only: bool

    @classmethod
    def read(cls, shift: list[str] | None, combine: str, explain: bool, order: int,
             cross: bool, wrt: str | None, totals_only: bool) -> _Scenarios:
        shifts = _shifts(shift or [])
        if combine not in ("product", "zip"):
            raise UsageError(f"--combine {combine!r}: use product or zip")
        if not explain and (order != 1 or cross or wrt is not None):
            raise UsageError("--order, --cross and --wrt shape the explain: add --explain")
        return cls(shifts, combine, explain, order, cross, _wrt(wrt), totals_only)

    def kwargs(self) -> dict[str, Any]:
        return {"combine": self.combine, "explain": self.explain, "order": self.order,
                "cross": self.cross, "wrt": self.wrt, "totals_only": self.totals_only}


def _emit_scenarios(result: ScenarioResult, target: str | None, rows: int) -> None:
    if target is None:
        _show_scenarios(result, rows)
    else:
        write_table(target, *result.table(), sys.stdout)


@app.command(cls=_Command)
@_reports_errors
def scenarios(
    ctx: typer.Context, inputs: InputsOption,
    name: Annotated[str | None, typer.Argument(
        help="The routine; leave it out for your own function (--expression or --ode).")
    ] = None,
    param: ParamOption = None,
    text: Annotated[str | None, typer.Option(
        "--expression", help="Your function in place of a routine, e.g. 'C * x' "
                             "(docs/expressions.md).")] = None,
    ode: OdeOption = None, names: NamesOption = None,
    shift: ShiftOption = None,
    combine: CombineOption = "product",
    explain: ExplainOption = False,
    order: ExplainOrderOption = 1,
    cross: ExplainCrossOption = False,
    wrt: ExplainWrtOption = None,
    totals_only: TotalsOnlyOption = False,
    dtype: DtypeOption = None,
    timeout_ms: TimeoutOption = None,
    out_file: ScenarioOutOption = None,
    rows: ScenarioRowsOption = 50,
) -> None:
    """The book revalued under a grid (or zip) of shifts in one request: P&L per scenario,
    and with --explain its delta, gamma and unexplained parts. A routine's (NAME), or your
    own function's (--expression TEXT, or --ode JSON, with --names)."""
    _files(inputs, out_file, TABLE_SUFFIXES)
    asked = _Scenarios.read(shift, combine, explain, order, cross, wrt, totals_only)
    if name is not None and (text is not None or ode is not None or names is not None):
        raise UsageError(f"give a routine ({name}) or --expression/--ode (with --names), "
                         "not both")
    if name is None:
        if text is None and ode is None:
            raise UsageError("give a routine's NAME, or your function as --expression TEXT "
                             "or --ode JSON")
        f = _function(text, ode, inputs, names, param)
    with _service(ctx).client(progress=True) as client:
        if name is None:
            result = client.expression_scenarios(f.text, f.samples, f.params, asked.shifts,
                                                 names=f.features, ode=f.ode, dtype=dtype,
                                                 timeout_ms=timeout_ms, **asked.kwargs())
        else:
            info = client.routine(name)
            samples, params, _ = _inputs(inputs, info, param)
            result = client.scenarios(name, samples, params, asked.shifts, dtype=dtype,
                                      timeout_ms=timeout_ms, **asked.kwargs())
    if out_file is None:
        _print_expression(result.expression)
    _emit_scenarios(result, out_file, rows)


# -- load and serving --------------------------------------------------------------------------

def _integers(given: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in given.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} {given!r}: write whole numbers separated by commas") \
            from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} {given!r}: every value must be 1 or more")
    return values


def _plot(points: Sequence[Any], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    for protocol in dict.fromkeys(p.protocol for p in points):
        mine = [p for p in points if p.protocol == protocol]
        ax.plot([p.concurrency for p in mine], [p.throughput for p in mine], marker="o",
                label=protocol)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests/s")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command(cls=_Command)
@_reports_errors
def bench(
    ctx: typer.Context, name: str,
    n: Annotated[int, typer.Option(help="Samples per request.")] = 16,
    concurrency: Annotated[str, typer.Option(help="Requests in flight, comma-separated.")
                           ] = "1,8,64",
    duration: Annotated[float, typer.Option(help="Seconds measured per point.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds before each point, not counted.")
                      ] = 1.0,
    protocols: Annotated[str, typer.Option(help="json (v1) and/or binary (v2).")
                         ] = "json,binary",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="NAME=NUMBER; repeatable.")] = None,
    plot: Annotated[str | None, typer.Option(help="Also draw requests/s to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, not a table.")] = False,
) -> None:
    """Load-test the service: throughput and latency percentiles per concurrency."""
    if n < 1 or duration <= 0 or warmup < 0:
        raise typer.BadParameter("--n must be 1 or more, --duration positive, --warmup >= 0")
    service = _service(ctx)
    with service.client() as client:
        info = client.routine(name)
    params = _params(param or [], InputTable())
    unknown = [p for p in params if p not in info.param_names]
    if unknown:  # said now, not after every point's --duration of refusals
        raise ValueError(f"--param {unknown[0]}: routine {name} has no such parameter (its "
                         f"parameters: {', '.join(info.param_names) or 'none'})")
    points = run_load(service.url, info, n=n, concurrency=_integers(concurrency, "--concurrency"),
                      duration=duration, warmup=warmup,
                      protocols=[p.strip() for p in protocols.split(",") if p.strip()],
                      params=params, api_key=service.api_key)
    _report_load(points, name, n, duration, plot, as_json)


def _report_load(points: Sequence[LoadPoint], name: str, n: int, duration: float,
                 plot: str | None, as_json: bool) -> None:
    """The points as a table (or JSON, or a plot); exit status 1 where every request of a
    point failed, which measures nothing, with the first failure's reason."""
    if plot:
        _plot(points, plot, f"{name}, {n} samples a request")
    if as_json:
        _print_json([{**asdict(p), "throughput": p.throughput} for p in points])
    else:
        table = Table("protocol", "concurrency", "req/s", "p50 ms", "p90 ms", "p99 ms",
                      "requests", "errors",
                      title=f"{name}: {n} samples a request, {duration:g} s a point")
        for p in points:
            table.add_row(p.protocol, str(p.concurrency), f"{p.throughput:,.0f}",
                          *(_ms(v) for v in (p.p50_ms, p.p90_ms, p.p99_ms)),
                          f"{p.requests:,}", str(p.errors))
        out.print(table)
    failed = [p for p in points if p.errors and not p.requests]
    if failed:
        p = failed[0]
        raise DydcError(f"every request failed ({p.protocol}, concurrency {p.concurrency}: "
                         f"{p.errors:,} errors); the first: {p.first_error}")
    for p in points:
        if p.errors:
            err.print(f"warning: {p.errors:,} of {p.requests + p.errors:,} requests failed "
                      f"({p.protocol}, concurrency {p.concurrency}); the first: "
                      f"{p.first_error}", markup=False, highlight=False, soft_wrap=True)


def _ms(latency: float) -> str:
    """A latency percentile; "-" where no request completed (NaN: nothing to rank)."""
    return "-" if math.isnan(latency) else f"{latency:.2f}"


@app.command(cls=_Command)
def serve(
    host: Annotated[str | None, typer.Option(help="Sets DYDC_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Sets DYDC_PORT.")] = None,
) -> None:
    """Start the service here (needs the server, the `dydc` distribution, installed)."""
    try:
        from app.__main__ import main as serve_main
    except ImportError:
        err.print("error: the dydc server is not installed here; install it with its "
                  "repository's scripts/install.sh, or run its container", markup=False)
        raise typer.Exit(1) from None
    if host is not None:
        os.environ["DYDC_HOST"] = host
    if port is not None:
        os.environ["DYDC_PORT"] = str(port)
    serve_main([])


def main() -> None:
    app()

"""The command line's files: inputs from CSV, ``.npy`` or JSON (or stdin), results to CSV,
JSON or ``.npy``.

A CSV has a header row and a column per feature, by the routine's feature names; other
columns may carry per-sample parameters (``--param sigma=@vol``) or anything else, and are
ignored otherwise; a JSON object of columns is read the same way. Files are UTF-8 (the
byte-order mark Excel writes is skipped), and what cannot be read is named by file, line or
sample, and column, not by numpy's message. Results are written as the inputs' columns (the
features, then those per-sample parameters were read from), then ``y`` (the output names
when a routine has several), ``dy_d<a>`` and ``d2y_d<a>_d<b>`` (``dy_d<a>[<output>]`` per
output when there are several), an output's name prefixed with ``out:`` where an input
already has it. Numbers are written as Python's shortest repr, so float64 values survive the
trip exactly; a result's ``.json`` is the service's JSON answer, strict (null, not NaN).

Hand-written over the standard library's ``csv`` and ``json`` and numpy's ``.npy``: pandas
would read these in one call, but as a dependency it weighs more than the whole client.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from dydc.results import Result, RoutineInfo

__all__ = ["RESULT_SUFFIXES", "TABLE_SUFFIXES", "InputTable", "input_suffix", "json_text",
           "output_suffix", "read_inputs", "result_columns", "result_document", "write_result",
           "write_table"]

SUFFIXES = (".csv", ".npy", ".json")
RESULT_SUFFIXES = (".csv", ".json", ".npy")
"""What :func:`write_result` writes."""
TABLE_SUFFIXES = (".csv", ".json")
"""What :func:`write_table` writes."""


@dataclass(frozen=True)
class InputTable:
    """What an input file held: named columns (CSV, a JSON object of columns), or an array
    of samples (``.npy``, a JSON list)."""

    columns: dict[str, np.ndarray] | None = None
    array: np.ndarray | None = None
    # columns that are not numbers (a label, an id): why, said only if one is used
    unreadable: dict[str, str] = field(default_factory=dict)
    header: tuple[str, ...] = ()
    """Every column's name in the file's order, the unreadable ones included."""

    @property
    def names(self) -> list[str]:
        """The columns' names, in the file's order."""
        return list(self.header or self.columns or ())

    @property
    def n(self) -> int:
        if self.array is not None:
            return int(self.array.shape[0])
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def samples(self, info: RoutineInfo) -> np.ndarray:
        """(N,) or (N, D) in the routine's feature order."""
        if self.array is not None:
            return self.array
        assert self.columns is not None
        for f in info.inputs:
            if f in self.unreadable:
                raise ValueError(self.unreadable[f])
        missing = [f for f in info.inputs if f not in self.columns]
        if missing:
            raise ValueError(f"the inputs have no column {', '.join(missing)}; routine "
                             f"{info.name} takes {', '.join(info.inputs)} (columns found: "
                             f"{', '.join(self.names) or 'none'}){_separator_hint(self.names)}")
        columns = [self.columns[f] for f in info.inputs]
        return columns[0] if len(columns) == 1 else np.stack(columns, axis=1)

    def column(self, name: str) -> np.ndarray:
        if name in self.unreadable:
            raise ValueError(self.unreadable[name])
        if self.columns is None or name not in self.columns:
            found = ", ".join(self.names) if self.names else "none: the file has no names"
            raise ValueError(f"no input column {name!r} for a per-sample parameter "
                             f"(columns: {found}){_separator_hint(self.names)}")
        return self.columns[name]


_OTHER_SEPARATORS = {";": "';'", "\t": "a tab"}


def _separator_hint(names: Sequence[str]) -> str:
    """Why a file may have fewer columns than it seems to: Excel saves "CSV" with ';' where
    the decimal mark is a comma, and a tab-separated file is one column to the csv module."""
    cells = [n for n in names if any(sep in n for sep in _OTHER_SEPARATORS)]
    if not cells:
        return ""
    held = " and ".join(said for sep, said in _OTHER_SEPARATORS.items()
                        if any(sep in n for n in cells))
    which = (f"column {cells[0]!r} holds" if len(cells) == 1
             else f"columns {', '.join(map(repr, cells))} hold")
    return f"; the header's {which} {held}: the file must be comma-separated"


def _csv(text: str, where: str) -> InputTable:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise ValueError(f"{where} is empty; send a header row of feature names, then rows")
    names = [name.strip() for name in header]
    twice = [name for name in dict.fromkeys(names) if names.count(name) > 1]
    if twice:  # a dict of columns would keep one of them, and count the fields wrong
        if len(twice) == 1:
            repeated = f"column {twice[0] or repr('')} appears {_times(names.count(twice[0]))}"
        else:
            counted = [f"{name or repr('')} ({_times(names.count(name))})" for name in twice]
            repeated = (f"columns {', '.join(counted[:-1])} and {counted[-1]} appear more "
                        "than once")
        raise ValueError(f"{where}: {repeated} in the header; give every column its own name")
    hint = _separator_hint(names)
    rows = [row for row in reader if row]
    columns: dict[str, list[float]] = {name: [] for name in names}
    unreadable: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise ValueError(f"{where} line {line} has {len(row)} fields; the header has "
                             f"{len(names)}{hint}")
        for name, value in zip(names, row, strict=True):
            if name in unreadable:
                continue
            try:
                columns[name].append(float(value))
            except ValueError:  # a label beside the numbers is fine until it is used
                unreadable[name] = (f"{where} line {line}, column {name}: {value!r} is not a "
                                    f"number{hint}")
    return InputTable(columns={k: np.asarray(v, dtype=np.float64) for k, v in columns.items()
                               if k not in unreadable}, unreadable=unreadable,
                      header=tuple(names))


def _times(count: int) -> str:
    return "twice" if count == 2 else f"{count} times"


def _json(text: str, where: str) -> InputTable:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None
    if isinstance(doc, Mapping) and "inputs" in doc:
        doc = doc["inputs"]
    if isinstance(doc, Mapping):
        return _json_columns(doc, where)
    if isinstance(doc, list):
        return InputTable(array=_json_samples(doc, where))
    raise ValueError(f"{where} holds {type(doc).__name__}; send a list of samples, an object "
                     "of columns, or {\"inputs\": ...}")


def _json_columns(doc: Mapping[str, Any], where: str) -> InputTable:
    """An object of columns: each a list of numbers, all of one length (a column of labels
    is fine until it is used, as in a CSV)."""
    columns: dict[str, np.ndarray] = {}
    unreadable: dict[str, str] = {}
    for key, values in doc.items():
        name = str(key)
        if not isinstance(values, list):
            unreadable[name] = (f"{where}, column {name}: {values!r} is not a list of "
                                "numbers")
            continue
        bad = [v for v in values if not _is_number(v)][:1]
        if bad:
            unreadable[name] = f"{where}, column {name}: {bad[0]!r} is not a number"
            continue
        columns[name] = np.asarray(values, dtype=np.float64)
    lengths = {name: len(values) for name, values in doc.items() if isinstance(values, list)}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise ValueError(f"{where}: the columns have different lengths ({sizes}); give "
                         "every column one number per sample")
    return InputTable(columns=columns, unreadable=unreadable,
                      header=tuple(str(k) for k in doc))


def _json_samples(doc: list[Any], where: str) -> np.ndarray:
    """A list of samples: numbers (one feature), or lists of numbers of one length."""
    for i, sample in enumerate(doc):
        numbers = sample if isinstance(sample, list) else [sample]
        bad = [v for v in numbers if not _is_number(v)][:1]
        if bad:
            raise ValueError(f"{where}, sample {i + 1}: {bad[0]!r} is not a number")
    widths = [len(s) if isinstance(s, list) else None for s in doc]
    if len(set(widths)) > 1:
        odd = next(i for i, w in enumerate(widths) if w != widths[0])
        size = _width(widths[0])
        raise ValueError(f"{where}: sample {odd + 1} has {_width(widths[odd])} where sample "
                         f"1 has {size}; give every sample the same features")
    return np.asarray(doc, dtype=np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _width(width: int | None) -> str:
    return "a single number" if width is None else f"{width} numbers"


def _npy(path: Path) -> InputTable:
    """An array of numbers (N,) or (N, D), or a structured array (what ``--out .npy``
    writes) as named columns."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise ValueError(f"{path} is not a .npy file numpy can read; write one with "
                         "numpy.save, or send .csv or .json") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under another name
        raise ValueError(f"{path} holds several arrays; send one, saved with numpy.save")
    if array.dtype.names is not None and array.ndim == 1:
        names = array.dtype.names
        bad = [n for n in names if array.dtype[n].kind not in "iuf"]
        if bad:
            raise ValueError(f"{path}, column {bad[0]}: {array.dtype[bad[0]]} is not numbers")
        return InputTable(columns={n: array[n].astype(np.float64) for n in names},
                          header=tuple(names))
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{path} holds {array.dtype} values; send numbers")
    if array.ndim not in (1, 2):
        raise ValueError(f"{path} has shape {array.shape}; send (N,) or (N, D)")
    return InputTable(array=array)


def _file_kinds(suffixes: Sequence[str]) -> str:
    return f"a {', '.join(suffixes[:-1])} or {suffixes[-1]} file"


def input_suffix(source: str) -> str:
    """The format ``--inputs`` names by its suffix (``-``: stdin); the command line asks it
    before it sends anything."""
    if source == "-":
        return "-"
    suffix = Path(source).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"--inputs {source}: use {_file_kinds(SUFFIXES)}, or - for stdin")
    return suffix


def output_suffix(target: str, suffixes: Sequence[str] = RESULT_SUFFIXES) -> str:
    """The format ``--out`` names by its suffix (``-``: CSV on stdout); the command line asks
    it before it sends anything, as a name it cannot write would be refused only once the
    service had computed the answer."""
    suffix = Path(target).suffix.lower() if target != "-" else ".csv"
    if suffix not in suffixes:
        raise ValueError(f"--out {target}: use {_file_kinds(suffixes)}, or - for stdout")
    return suffix


def read_inputs(source: str, stdin: IO[str] | None = None) -> InputTable:
    """Inputs from a ``.csv``, ``.npy`` or ``.json`` file, or ``-`` for stdin (JSON when it
    starts with ``[`` or ``{``, else CSV)."""
    if source == "-":
        text = (stdin.read() if stdin is not None else "").removeprefix("\ufeff")
        parse = _json if text.lstrip()[:1] in ("[", "{") else _csv
        return parse(text, "stdin")
    path = Path(source)
    suffix = input_suffix(source)
    if suffix == ".npy":
        return _npy(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                         "(Excel: CSV UTF-8)") from None
    return _csv(text, source) if suffix == ".csv" else _json(text, source)


def _named(prefix: str, array: np.ndarray, outputs: Sequence[str]) -> list[tuple[str, Any]]:
    if array.ndim == 1:
        return [(prefix, array)]
    return [(f"{prefix}[{o}]", array[:, j]) for j, o in enumerate(outputs)]


OUTPUT_PREFIX = "out:"
"""Put before an output column's name that an earlier column already has (an input feature
named ``y``, say), once more for each time it is still taken."""


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name = OUTPUT_PREFIX + name
    taken.add(name)
    return name


def result_columns(result: Result, info: RoutineInfo, samples: np.ndarray | None = None,
                   kept: Sequence[tuple[str, np.ndarray]] = ()) -> list[tuple[str, np.ndarray]]:
    """The output table's columns in order: inputs, values, first then second derivatives.

    The inputs are the routine's features, then ``kept``: other input columns the command
    read (those a per-sample parameter came from, ``--param sigma=@vol``), less any a feature
    already gives. Every name is unique, or a DictReader loses a column and ``.npy`` cannot be
    written: the inputs keep theirs, so that the table reads back as inputs, and an output
    whose name is taken is written as ``out:<name>``."""
    inputs: list[tuple[str, np.ndarray]] = []
    if samples is not None:
        matrix = samples.reshape(len(samples), -1)
        inputs = [(f, matrix[:, j]) for j, f in enumerate(info.inputs)]
    features = {name for name, _ in inputs}
    inputs += [(name, values) for name, values in dict(kept).items() if name not in features]
    outputs: list[tuple[str, np.ndarray]] = []
    if result.values.ndim == 1:
        outputs.append(("y", result.values))
    else:
        outputs += [(o, result.values[:, j]) for j, o in enumerate(result.outputs)]
    for key, d in result.derivatives.items():
        outputs += _named(f"dy_d{key}", d, result.outputs)
    for key, d in result.second_derivatives.items():
        a, _, b = key.partition(",")
        outputs += _named(f"d2y_d{a}_d{b}", d, result.outputs)
    taken = {name for name, _ in inputs}
    return inputs + [(_unique(name, taken), values) for name, values in outputs]


def result_document(result: Result) -> dict[str, Any]:
    """The result as the service's JSON answer has it, its keys in the service's order: an
    expression's canonical text, the parameters as used, and (over v1) ``timing_ms``; the
    strategy and derivatives only where derivatives were asked for. A relative difference
    the service sent as null (NaN here) is null again."""
    doc: dict[str, Any] = {"routine": result.routine}
    if result.expression is not None:
        doc["expression"] = result.expression
    if result.strategy is not None:  # None: values only (evaluate)
        doc["strategy"] = result.strategy
    doc.update({"dtype": result.dtype, "device": result.device, "n": result.n,
                "params": {k: _listed(v) for k, v in result.params.items()},
                "outputs": result.outputs, "values": result.values.tolist()})
    if result.strategy is not None:
        doc["derivatives"] = {k: v.tolist() for k, v in result.derivatives.items()}
    if result.second_derivatives:
        doc["second_derivatives"] = {k: v.tolist() for k, v in
                                     result.second_derivatives.items()}
    if result.bump is not None:
        doc["bump"] = {k: v for k, v in result.bump.__dict__.items() if v is not None}
    if result.check is not None:
        doc["check"] = dict(result.check.__dict__)
    if result.timing_ms is not None:  # None over binary, which does not carry it
        doc["timing_ms"] = result.timing_ms
    return doc


def _listed(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def json_text(doc: Any) -> str:
    """``doc`` as strict JSON: a NaN or an infinity (no number in JSON; Python's ``json``
    would write ``NaN``, which JavaScript, Go and serde_json refuse) as null, as the service
    writes what has no value."""
    return json.dumps(_nulled(doc), allow_nan=False)


def _nulled(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _nulled(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulled(v) for v in value]
    return value


def write_result(target: str, columns: list[tuple[str, np.ndarray]], result: Result,
                 stdout: IO[str]) -> None:
    """To ``.csv``, ``.json`` or ``.npy`` by suffix; ``-`` writes CSV to stdout."""
    suffix = output_suffix(target)
    if suffix == ".json":
        Path(target).write_text(json_text(result_document(result)))
        return
    if suffix == ".npy":
        table = np.empty(result.n, dtype=[(name, np.float64) for name, _ in columns])
        for name, values in columns:
            table[name] = values
        np.save(target, table, allow_pickle=False)
        return
    with (open(target, "w", newline="") if target != "-" else _keep(stdout)) as out:
        # "\n", as client/README.md shows and pipelines expect (the csv module's default is
        # the RFC's "\r\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([name for name, _ in columns])
        lists = [values.tolist() for _, values in columns]
        writer.writerows(zip(*lists, strict=True))


def write_table(target: str, columns: Sequence[str], rows: Sequence[Sequence[float]],
                stdout: IO[str]) -> None:
    """A table of rows (``dydc scenarios``) to ``.csv`` or ``.json`` (``{"columns": [...],
    "rows": [...]}``) by suffix; ``-`` writes CSV to stdout."""
    suffix = output_suffix(target, TABLE_SUFFIXES)
    if suffix == ".json":
        Path(target).write_text(json_text({"columns": list(columns),
                                           "rows": [list(r) for r in rows]}))
        return
    with (open(target, "w", newline="") if target != "-" else _keep(stdout)) as out:
        writer = csv.writer(out, lineterminator="\n")  # as write_result
        writer.writerow(columns)
        writer.writerows(rows)


class _keep:
    """stdout as a context manager that does not close it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __enter__(self) -> IO[str]:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()

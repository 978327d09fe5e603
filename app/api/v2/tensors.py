"""Between v2 tensors and the engine: request tensors to one array of samples, request
parameters to engine arguments, results to output tensors.

Inputs are one tensor per feature, named as the routine names them, of shape [N] or [N, 1];
or one tensor ``x`` of shape [N, D]; and, for a parameter with one value per sample, a tensor
named after the parameter, of shape [N]. Outputs are ``y`` (the routine's M outputs), one
``dy_d<a>`` per differentiated parameter or input feature, and at order 2 one
``d2y_d<a>_d<b>`` per pair; each [N] when M = 1 and [N, M] otherwise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from torch import Tensor

from app.api.schemas import split_names
from app.api.v2.schemas import InferenceRequest, Parameters, RequestInput
from app.engine import MIN_TIMEOUT_MS, JobKind, JobResult, Request
from app.engine.differentiation.bumping import pairs
from app.engine.errors import InvalidRequest, NotFiniteInput, listed
from app.engine.runtime.validation import checked_order, checked_wrt
from app.errors import MalformedFraming
from routines import Routine

__all__ = ["DATATYPES", "EXTENSIONS", "MIN_TIMEOUT_US", "Call", "in_v2_terms", "model_outputs",
           "not_finite", "plan", "response"]

EXTENSIONS = ["binary_tensor_data"]  # the protocol's extensions this server implements

# Wire datatype -> (little-endian numpy dtype, engine dtype).
DATATYPES: dict[str, tuple[np.dtype[Any], str]] = {
    "FP64": (np.dtype("<f8"), "float64"),
    "FP32": (np.dtype("<f4"), "float32"),
}
_WIRE = {engine: wire for wire, (_, engine) in DATATYPES.items()}
MATRIX_INPUT = "x"
VALUES = "y"
# Read by this server; Triton's "timeout" (microseconds) is the request's deadline, and its
# "priority" is accepted and has no effect (one queue, first come first served).
_RESERVED = ("strategy", "wrt", "order", "cross", "binary_data_output", "timeout", "priority")
MIN_TIMEOUT_US = MIN_TIMEOUT_MS * 1e3


def derivative_tensor_name(param: str) -> str:
    """The name of dy/d``param``'s output tensor (as a person reads it, the engine's
    ``derivative_name``, "dy/d<param>")."""
    return f"dy_d{param}"


def second_derivative_tensor_name(a: str, b: str) -> str:
    """The output tensor of d2y/d``a``d``b``."""
    return f"d2y_d{a}_d{b}"


def model_outputs(routine: Routine, wrt: tuple[str, ...] | None = None, order: int = 1,
                  cross: bool = False) -> list[str]:
    names = routine.param_names if wrt is None else wrt
    second = ([second_derivative_tensor_name(a, b) for a, b in pairs(names, cross)]
              if order == 2 else [])
    return [VALUES, *(derivative_tensor_name(p) for p in names), *second]


@dataclass(frozen=True)
class Call:
    """The engine's request for an inference request, and which outputs to send back how."""

    request: Request
    outputs: list[tuple[str, bool]]  # (name, as binary), in response order

    @property
    def dtype(self) -> str:
        return self.request.dtype


def _describe(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) or v is None else type(v).__name__


def _shown(name: str) -> str:
    """A tensor's (or datatype's) name in a message; "" for an empty one, which shows as
    nothing."""
    return name or '""'


_DIMS_SHOWN = 8


def _dims(dims: list[int]) -> str:
    """A shape (or a nesting) in a message, its first few dimensions where it has many."""
    if len(dims) <= _DIMS_SHOWN:
        return str(dims)
    return f"[{', '.join(map(str, dims[:_DIMS_SHOWN]))}, ... ({len(dims)} dimensions)]"


# -- inputs ------------------------------------------------------------------------------------

def _json_data(where: str, given: RequestInput) -> np.ndarray:
    data = given.data
    if not isinstance(data, list):
        raise InvalidRequest(
            f"{where}.data is {_describe(data)}; send a list of numbers, or the tensor as "
            "binary data with binary_data_size"
        )
    flat: list[Any] = data
    nesting = [len(data)]
    while flat and set(map(type, flat)) == {list}:  # the natural nested representation
        widths = set(map(len, flat))
        if len(widths) != 1:
            raise InvalidRequest(f"{where}.data is ragged (lists of {listed(sorted(widths))} "
                                 f"items at one level); send it flat, or nested as shape "
                                 f"{_dims(list(given.shape))}")
        nesting.append(widths.pop())
        flat = list(chain.from_iterable(flat))
    if len(nesting) > 1 and nesting != list(given.shape):  # (flat data takes any shape)
        raise InvalidRequest(f"{where}.data is nested as {_dims(nesting)} but its shape is "
                             f"{_dims(list(given.shape))}; nest it as the shape says, or send "
                             "it flat")
    if not set(map(type, flat)) <= {int, float}:
        k, bad = next((k, v) for k, v in enumerate(flat) if type(v) not in (int, float))
        raise InvalidRequest(
            f"{where}.data[{k}] (flattened) is {_describe(bad)}; {given.datatype} data must "
            "be numbers"
        )
    try:
        return np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise InvalidRequest(f"{where}.data has a number too large for float64") from None


def _binary_data(where: str, given: RequestInput, section: memoryview) -> np.ndarray:
    dtype = DATATYPES[given.datatype][0]
    expected = math.prod(given.shape) * dtype.itemsize
    if len(section) != expected:
        raise MalformedFraming(
            f"{where} has shape {given.shape} of {given.datatype}, which is {expected} bytes, "
            f"but its binary_data_size is {len(section)}"
        )
    array = np.frombuffer(section, dtype=dtype)  # a view of the request body
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


_MAX_DIMS = 2  # [N] or [N, D]


def _tensor(i: int, given: RequestInput, section: memoryview | None) -> np.ndarray:
    """The tensor's values, shaped as declared."""
    where = f"inputs[{i}] ({_shown(given.name)})"
    if len(given.shape) > _MAX_DIMS:
        raise InvalidRequest(
            f"{where} has shape {_dims(given.shape)}; inputs are [N] or [N, D]"
        )
    if given.datatype not in DATATYPES:
        raise InvalidRequest(
            f"{where} is {_shown(given.datatype)}; this model takes {' or '.join(DATATYPES)}"
        )
    if section is not None:
        return _binary_data(where, given, section).reshape(given.shape)
    values = _json_data(where, given)
    if values.size != math.prod(given.shape):
        raise InvalidRequest(
            f"{where} has shape {given.shape}, which holds {math.prod(given.shape)} values, "
            f"but its data has {values.size}"
        )
    return values.reshape(given.shape)


def _samples(routine: Routine, inputs: list[RequestInput],
             tensors: list[np.ndarray]) -> np.ndarray:
    """One (N,) or (N, D) array of samples from the tensors, by the routine's input names."""
    features = routine.inputs
    d = len(features)
    names = [_shown(given.name) for given in inputs]
    expected = (f"model {routine.name} takes one tensor per input ({', '.join(features)}) "
                f"of shape [N] or [N, 1], or one tensor {MATRIX_INPUT} of shape [N, {d}]")
    if len(set(names)) != len(names):
        raise InvalidRequest(f"inputs name a tensor twice ({listed(names)}); {expected}")
    if set(names) == set(features):
        by_name = dict(zip(names, tensors, strict=True))
        columns = []
        for name in features:
            t = by_name[name]
            if t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[1] != 1):
                raise InvalidRequest(f"input {name} has shape {list(t.shape)}; {expected}")
            columns.append(t.reshape(-1))
        sizes = {len(c) for c in columns}
        if len(sizes) > 1:
            counts = ", ".join(f"{n}: {len(c)}" for n, c in zip(features, columns, strict=True))
            raise InvalidRequest(
                f"inputs have different batch sizes ({counts}); every input needs one value "
                "per sample"
            )
        return columns[0] if d == 1 else np.stack(columns, axis=1)
    if names == [MATRIX_INPUT]:
        t = tensors[0]
        if (t.ndim == 2 and t.shape[1] == d) or (t.ndim == 1 and d == 1):
            return t
        raise InvalidRequest(f"input {MATRIX_INPUT} has shape {list(t.shape)}; {expected}")
    raise InvalidRequest(f"inputs are named {listed(names) or 'nothing'}; {expected}")


def not_finite(routine: Routine, inputs: list[RequestInput], exc: NotFiniteInput,
               samples: np.ndarray | Tensor) -> InvalidRequest:
    """The engine's non-finite input (a sample and a feature of its rows, of ``samples``)
    named by the request's tensor and element: not finite, or a number too large for the
    datatype."""
    names = [given.name for given in inputs]
    feature = routine.inputs[exc.feature]
    if feature in names:  # one tensor per input
        where = f"input {feature} (inputs[{names.index(feature)}]) element {exc.sample}"
    else:  # the one tensor x of shape [N, D] (or [N])
        element = f"[{exc.sample}, {exc.feature}]" if len(routine.inputs) > 1 \
            else str(exc.sample)
        where = f"input {MATRIX_INPUT} (inputs[{names.index(MATRIX_INPUT)}]) element {element}"
    value = np.asarray(samples).reshape(len(samples), -1)[exc.sample, exc.feature]
    if np.isfinite(value):  # finite as sent (JSON's float64), too large for float32
        return InvalidRequest(
            f"{where} is {value:g}, which overflows {exc.dtype} (largest "
            f"{np.finfo(exc.dtype).max:.4g}); send a smaller number, or the inputs as FP64")
    return InvalidRequest(f"{where} is not finite in {exc.dtype}; inputs must be finite "
                          "numbers")


_V1_PARAMETER = re.compile(r"params\.(\w+)(?:\[(\d+)\])?")


def in_v2_terms(exc: InvalidRequest, request: Request) -> InvalidRequest:
    """The engine's refusal of a parameter value (``params.T = -1.0 is outside its bounds``,
    in v1's words) said of what the v2 request sent: ``parameters.T``, or an element of the
    input tensor of a parameter with one value per sample. ``exc`` itself, reworded (its type
    says its status)."""
    message = exc.message
    found = _V1_PARAMETER.match(message)
    if found is None:
        return exc
    name, element = found.groups()
    if element is not None and isinstance(request.params.get(name), np.ndarray):
        where = f"input {name} element {element}"
    else:
        where = f"parameters.{name}{'' if element is None else f'[{element}]'}"
    rest = message[found.end():].replace("or use dtype float64", "or send the inputs as FP64")
    exc.reword(where + rest)
    return exc


# -- parameters and outputs --------------------------------------------------------------------

def _timeout_ms(parameters: Parameters) -> float | None:
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidRequest(
            f"parameters.timeout is {_describe(timeout)}; send a number of microseconds of at "
            f"least {MIN_TIMEOUT_US:g}"
        )
    if not timeout >= MIN_TIMEOUT_US:
        raise InvalidRequest(
            f"parameters.timeout is {timeout:g} µs; send at least {MIN_TIMEOUT_US:g} "
            f"microseconds ({MIN_TIMEOUT_MS:g} ms: a shorter deadline cannot be met)"
        )
    try:
        return float(timeout) / 1e3
    except OverflowError:  # an integer beyond float64
        raise InvalidRequest(
            "parameters.timeout is an integer too large for float64; send a positive number "
            "of microseconds (at most the server's DYDC_REQUEST_TIMEOUT_MS applies anyway)"
        ) from None


def _arguments(parameters: Parameters) -> tuple[dict[str, float], tuple[str, ...] | None,
                                                 str, bool]:
    """(parameter values, wrt, strategy, binary_data_output) from the request parameters."""
    strategy = parameters.get("strategy", "auto")
    if not isinstance(strategy, str):
        raise InvalidRequest(f"parameters.strategy is {_describe(strategy)}; send its name")
    wrt_given = parameters.get("wrt")
    wrt: tuple[str, ...] | None
    if wrt_given is None:
        wrt = None
    elif isinstance(wrt_given, str):
        wrt = tuple(split_names(wrt_given, "parameters.wrt"))
    elif isinstance(wrt_given, list):
        wrt = tuple(wrt_given)
    else:
        raise InvalidRequest(
            f"parameters.wrt is {_describe(wrt_given)}; send parameter names separated by commas"
        )
    if wrt is not None and not wrt:  # as v1's "wrt": [] (it answered values alone, silently)
        raise InvalidRequest(
            "parameters.wrt names nothing; name at least one parameter or input, or leave it "
            "out to differentiate with respect to every parameter (ask for output y alone to "
            "evaluate)")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise InvalidRequest(
            f"parameters.binary_data_output is {_describe(binary)}; send a boolean"
        )
    values: dict[str, float] = {}
    for key, value in parameters.items():
        if key in _RESERVED:
            continue
        if type(value) not in (int, float):
            raise InvalidRequest(
                f"parameters.{key} is {_describe(value)}; routine parameters must be numbers "
                f"(the other parameters this server reads are {', '.join(_RESERVED)})"
            )
        try:
            values[key] = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer beyond float64
            raise InvalidRequest(
                f"parameters.{key} is an integer too large for float64; parameters must be "
                "finite numbers"
            ) from None
    return values, wrt, strategy, binary


def _order(parameters: Parameters) -> tuple[int, bool]:
    """(order, cross) from the request parameters, checked here: the engine checks them only
    for derivatives, and outputs asking for y alone make an evaluation."""
    order, cross = parameters.get("order", 1), parameters.get("cross", False)
    if isinstance(order, bool) or not isinstance(order, int):
        raise InvalidRequest(f"parameters.order is {_describe(order)}; send 1 or 2")
    if not isinstance(cross, bool):
        raise InvalidRequest(f"parameters.cross is {_describe(cross)}; send a boolean")
    checked_order(order, cross)
    return order, cross


def _per_sample_params(routine: Routine, request: InferenceRequest,
                       tensors: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Input tensors named after a parameter (not a feature): one value per sample."""
    found: dict[str, np.ndarray] = {}
    for given, t in zip(request.inputs, tensors, strict=True):
        if given.name in routine.param_names and given.name not in routine.inputs:
            if given.name in found:  # (the last one had won, silently)
                raise InvalidRequest(f"inputs name the parameter tensor {given.name} twice; "
                                     "send it once")
            if t.ndim != 1:
                raise InvalidRequest(
                    f"input {given.name} (a parameter with one value per sample) has shape "
                    f"{list(t.shape)}; send shape [N]")
            found[given.name] = t.astype(np.float64)
    return found


def _outputs(routine: Routine, request: InferenceRequest, wrt: tuple[str, ...] | None,
             binary_default: bool, order: int = 1,
             cross: bool = False) -> list[tuple[str, bool]]:
    available = model_outputs(routine, wrt, order, cross)
    if request.outputs is None:
        return [(name, binary_default) for name in available]
    if not request.outputs:  # (it ran the job and answered nothing)
        raise InvalidRequest(f"outputs is empty; leave it out for every output, or name those "
                             f"you want of {listed(available)}")
    chosen: list[tuple[str, bool]] = []
    for i, wanted in enumerate(request.outputs):
        unsupported = sorted(set(wanted.parameters) - {"binary_data"})
        if unsupported:  # classification, shared memory: extensions this server lacks
            raise InvalidRequest(
                f"outputs[{i}].parameters has {listed(unsupported, quoted=True)}, which this "
                f"server does not support (its extension is {', '.join(EXTENSIONS)}); send "
                "binary_data alone")
        if wanted.name not in available:
            why = (f"wrt is {listed(wrt)}" if wrt is not None
                   and wanted.name in model_outputs(routine) else f"model {routine.name} has no "
                   "such output")
            raise InvalidRequest(
                f"outputs[{i}] is {wanted.name!r}: {why}; its outputs are {listed(available)}"
            )
        if any(name == wanted.name for name, _ in chosen):
            raise InvalidRequest(f"outputs names {wanted.name!r} twice")
        binary = wanted.parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise InvalidRequest(
                f"outputs[{i}].parameters.binary_data is {_describe(binary)}; send a boolean"
            )
        chosen.append((wanted.name, binary))
    return chosen


def plan(routine: Routine, request: InferenceRequest,
         sections: list[memoryview | None]) -> Call:
    """What to ask the engine for this request, with every check that needs no device."""
    params, wrt, strategy, binary_default = _arguments(request.parameters)
    order, cross = _order(request.parameters)
    if wrt is not None:  # all of it: the outputs may leave some (or every) name out
        checked_wrt(routine, wrt)
    outputs = _outputs(routine, request, wrt, binary_default, order, cross)
    named = {name for name, _ in outputs}
    differentiate = tuple(p for p in (wrt if wrt is not None else routine.param_names)
                          if derivative_tensor_name(p) in named or order == 2)
    if order == 2 and not named - {VALUES}:
        differentiate = ()
    if not request.inputs:
        raise InvalidRequest("inputs is empty; send one tensor per input of the model")
    datatypes = sorted({given.datatype for given in request.inputs})
    tensors = [_tensor(i, given, section)
               for i, (given, section) in enumerate(zip(request.inputs, sections, strict=True))]
    if len(datatypes) > 1:
        raise InvalidRequest(f"inputs mix {' and '.join(datatypes)}; send them in one datatype")
    per_sample = _per_sample_params(routine, request, tensors)
    twice = sorted(set(per_sample) & set(params))
    if twice:  # which would win is no answer: the caller means one of them
        raise InvalidRequest(
            f"{', '.join(twice)} {'is' if len(twice) == 1 else 'are'} sent both as an input "
            "tensor (one value per sample) and in parameters (one for all); send each once")
    features = [(given, t) for given, t in zip(request.inputs, tensors, strict=True)
                if given.name not in per_sample]
    samples = _samples(routine, [g for g, _ in features], [t for _, t in features])
    if len(samples) == 0:  # (the engine says "inputs is empty", of v1's list)
        given = features[0][0]
        i = next(i for i, other in enumerate(request.inputs) if other is given)
        raise InvalidRequest(f"input {_shown(given.name)} (inputs[{i}]) has shape "
                             f"{_dims(list(given.shape))}: 0 samples; send at least one sample")
    for name, values in per_sample.items():  # said in v2's terms (the engine says params.X)
        if len(values) != len(samples):
            raise InvalidRequest(
                f"input {name} (a parameter with one value per sample) has shape "
                f"[{len(values)}], but the inputs have {len(samples)} samples; send shape "
                f"[{len(samples)}], or one value for all in parameters.{name}")
    return Call(Request(
        kind=JobKind.SENSITIVITIES if differentiate else JobKind.EVALUATE,
        routine=routine,
        inputs=samples,
        params={**params, **per_sample},
        wrt=differentiate or None,
        strategy=strategy,
        dtype=DATATYPES[datatypes[0]][1],
        timeout_ms=_timeout_ms(request.parameters),
        order=order if differentiate else 1,
        cross=cross if differentiate else False,
    ), outputs)


# -- the response ------------------------------------------------------------------------------

def response(routine: Routine, request_id: str | None, version: str, call: Call,
             result: JobResult) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The response JSON and the arrays sent as binary data, in order."""
    tensors: dict[str, Tensor] = {VALUES: result.values}
    tensors |= {derivative_tensor_name(p): d for p, d in result.derivatives.items()}
    tensors |= {second_derivative_tensor_name(*key.split(",")): d
                for key, d in result.second_derivatives.items()}
    datatype = _WIRE[call.dtype]
    outputs: list[dict[str, Any]] = []
    binaries: list[np.ndarray] = []
    for name, binary in call.outputs:
        array = tensors[name].numpy()
        if array.shape[1] == 1:
            array = array.reshape(-1)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            binaries.append(array)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": routine.name, "model_version": version}
    if request_id is not None:
        header["id"] = request_id
    parameters = {"device": result.device}
    if result.strategy is not None:
        parameters["strategy"] = result.strategy
    header["parameters"] = parameters
    header["outputs"] = outputs
    return header, binaries

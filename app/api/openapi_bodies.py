"""The computation routes' request bodies in the OpenAPI document, as strict as what the
service accepts, so that a client generated from the document sends valid requests.

The models (app.api.schemas, app.api.v2.schemas) say what holds for every routine; this adds
what only the running service knows: the names of the routines' parameters and features
(``wrt``, ``params``, v2 tensor and output names), the widest row, DYDC_MAX_SAMPLES, and the
v2 request parameters (strategies, datatypes, the shortest deadline). What no schema can say
stays with the validation: which names the routine chosen by the path has, how many features
its rows need, a v2 tensor's data against its shape.

The expression routes' bodies get the settings' bounds (DYDC_MAX_SAMPLES, the ode's steps,
an expression's characters); what no schema can say of them is the expression language, a
name declared both as an input and as a parameter, rows as wide as the names.
"""

from __future__ import annotations

import re
from typing import Any

from app.api.v2.tensors import DATATYPES, MATRIX_INPUT, MIN_TIMEOUT_US, model_outputs
from app.engine import STRATEGIES
from routines import Routine

__all__ = ["constrain_bodies", "constrain_expression_bodies"]

_V1_BODIES = ("/v1/routines/{name}/sensitivities", "/v1/routines/{name}/evaluate",
              "/v1/routines/{name}/compare", "/v1/routines/{name}/scenarios")
_EXPRESSION_BODIES = tuple(f"/v1/expressions/{endpoint}" for endpoint in
                           ("sensitivities", "evaluate", "compare", "scenarios"))
_V2_BODIES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
_NUMBER = {"type": "number"}


def _names_pattern(names: list[str]) -> str:
    """``"a, b"``: names of ``names`` separated by commas."""
    one = "(?:" + "|".join(re.escape(n) for n in names) + ")"
    return rf"^\s*{one}(?:\s*,\s*{one})*\s*,?\s*$"


def _v1(schema: dict[str, Any], params: list[str], names: list[str], widths: list[int],
        max_samples: int) -> None:
    fields = schema["properties"]
    flat, rows = fields["inputs"]["anyOf"]
    flat["maxItems"] = max_samples
    # every row as wide as the first: one alternative per width that a routine takes
    fields["inputs"]["anyOf"] = [flat, *(
        {**rows, "maxItems": max_samples,
         "items": {**rows["items"], "minItems": width, "maxItems": width}}
        for width in widths)]
    values = fields["params"]
    values["propertyNames"] = {"enum": params}
    _samples(values["additionalProperties"], max_samples)
    for option in fields["wrt"]["anyOf"]:
        if option.get("type") == "array":
            option["items"]["enum"] = names
        elif option.get("type") == "string":
            option["pattern"] = _names_pattern(names)


def _v2_parameters(params: list[str], names: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The routine's parameter values (numbers shared by every sample), and "
                       "the request's options.",
        "properties": {
            "strategy": {"type": "string", "enum": list(STRATEGIES), "default": "auto"},
            "wrt": {"anyOf": [{"type": "string", "pattern": _names_pattern(names)},
                              {"type": "array", "minItems": 1,
                               "items": {"type": "string", "enum": names}}],
                    "description": "Parameters and/or features, separated by commas."},
            "order": {"type": "integer", "enum": [1, 2], "default": 1},
            "cross": {"type": "boolean", "default": False},
            "binary_data_output": {"type": "boolean", "default": False},
            "timeout": {"type": "number", "minimum": MIN_TIMEOUT_US,
                        "description": "Deadline in microseconds (400 below the minimum)."},
            "priority": {"type": "integer", "minimum": 0,
                         "description": "Triton's priority level (0: the default): accepted, no "
                                        "effect (one first-come queue)."},
            **{p: _NUMBER for p in params},
        },
        "additionalProperties": False,
    }


def _v2(doc: dict[str, Any], schema: dict[str, Any], params: list[str], names: list[str],
        tensors: list[str], outputs: list[str], max_samples: int, width: int) -> None:
    schema["properties"]["parameters"] = _v2_parameters(params, names)
    components = doc["components"]["schemas"]
    given = components["RequestInput"]["properties"]
    given["name"]["enum"] = tensors
    given["datatype"]["enum"] = list(DATATYPES)
    given["shape"].update(minItems=1, maxItems=2)
    given["shape"]["items"]["maximum"] = max_samples
    # required here: a tensor sent as binary data is a part of the application/octet-stream
    # body, whose JSON header leaves it out
    given["data"] = {"description": "The tensor's numbers, flat or as rows, row-major.",
                     "anyOf": [{"type": "array", "items": _NUMBER, "minItems": 1,
                                "maxItems": max_samples * width},
                               {"type": "array", "items": {"type": "array", "items": _NUMBER},
                                "minItems": 1, "maxItems": max_samples}]}
    components["RequestInput"]["required"] = ["name", "shape", "datatype", "data"]
    components["RequestOutput"]["properties"]["name"]["enum"] = outputs


def _scenarios(spec: dict[str, Any], names: list[str]) -> None:
    """Scenarios: shifts or a list (one of them), each naming factors of the routines."""
    fields = spec["properties"]
    for option in fields["shifts"]["anyOf"]:
        if option.get("type") == "object":
            option.update(minProperties=1, propertyNames={"enum": names})
    for option in fields["list"]["anyOf"]:
        if option.get("type") == "array":
            option.update(minItems=1)
            option["items"].update(minProperties=1, propertyNames={"enum": names})
    spec["oneOf"] = [{"required": ["shifts"], "properties": {"shifts": {"type": "object"}}},
                     {"required": ["list"], "properties": {"list": {"type": "array"}}}]


def _samples(values: dict[str, Any], max_samples: int) -> None:
    """At most DYDC_MAX_SAMPLES samples in ``values``' list forms."""
    for option in values["anyOf"]:
        if option.get("type") == "array":
            option.update(minItems=1, maxItems=max_samples)


def constrain_expression_bodies(doc: dict[str, Any], max_samples: int, max_ode_steps: int,
                                max_chars: int) -> None:
    """Complete the expression routes' body schemas with the settings' bounds: samples
    (inputs.values, a parameter's list), ode.steps, the characters of one expression. (The
    names' shape and the one of expression and ode are in the models:
    app.api.expression_schemas.)"""
    components = doc.get("components", {}).get("schemas", {})
    if "ExpressionInputs" in components:
        _samples(components["ExpressionInputs"]["properties"]["values"], max_samples)
    if "OdeBody" in components:
        components["OdeBody"]["properties"]["steps"]["maximum"] = max_ode_steps
    for path in _EXPRESSION_BODIES:
        if path not in doc["paths"]:
            continue
        fields = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"][
            "schema"]["properties"]
        _samples(fields["params"]["additionalProperties"], max_samples)
        for option in fields["expression"]["anyOf"]:
            if option.get("type") == "string":
                option["maxLength"] = max_chars
            elif option.get("type") == "array":
                option["items"]["maxLength"] = max_chars


def constrain_bodies(doc: dict[str, Any], routines: dict[str, Routine],
                     max_samples: int) -> None:
    """Complete the computation routes' body schemas for ``routines`` (the $defs of the v2
    body are in the components already)."""
    served = list(routines.values())
    params = sorted({p for r in served for p in r.param_names})
    features = sorted({f for r in served for f in r.inputs})
    names = sorted({*params, *features})
    widths = sorted({len(r.inputs) for r in served})
    width = widths[-1]
    outputs = sorted({o for r in served
                      for o in model_outputs(r, (*r.param_names, *r.inputs), 2, True)})
    spec = doc.get("components", {}).get("schemas", {}).get("ScenarioSpec")
    if spec is not None:
        _scenarios(spec, names)
    for path, item in doc["paths"].items():
        if path in _V1_BODIES:
            _v1(item["post"]["requestBody"]["content"]["application/json"]["schema"], params,
                names, widths, max_samples)
        elif path in _V2_BODIES:
            _v2(doc, item["post"]["requestBody"]["content"]["application/json"]["schema"],
                params, names, sorted({*features, MATRIX_INPUT, *params}), outputs,
                max_samples, width)

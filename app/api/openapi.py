"""The OpenAPI document as the running service serves it: FastAPI's, completed with what only
the running service knows and with what Swagger UI needs to render it right.

- The routine name of every route that takes one is an enum of the registered routines (the
  v2 model version an enum of its one version), the computation bodies have one example per
  routine and the names and bounds of app.api.openapi_bodies (they exist once the lifespan
  has discovered the routines; the document is cached from then on).
- The error bodies as components (:data:`ERROR_SCHEMAS`): v1's and health's RFC 9457 problem
  details (``Problem``, application/problem+json) and v2's ``{"error"}`` (``ErrorResponse``,
  application/json), which the routes' response declarations reference by name. FastAPI's
  default 422 (``HTTPValidationError``) is removed: this service never sends that body.
- With API keys on, the key schemes and a 401 on every guarded operation, in the format of
  the path's protocol.
- Every description is HTML-escaped, because Swagger UI renders them as Markdown with HTML:
  "dy/d<param>" would otherwise lose its ``<param>``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.access import is_open
from app.api.openapi_bodies import constrain_bodies, constrain_expression_bodies
from app.api.v2.routes import MODEL_VERSION
from app.api.v2.routes import router as v2_router
from app.api.v2.tensors import MATRIX_INPUT
from app.config import Settings
from routines import Routine

__all__ = ["ERROR_SCHEMAS", "example_body", "example_inference", "install_openapi"]

_NAMED_PATHS = ("/v1/routines/{name}", "/v2/models/{name}")
_BODY_ROUTES = {"/v1/routines/{name}/sensitivities": True, "/v1/routines/{name}/evaluate": False,
                "/v1/routines/{name}/compare": True}
_INFER_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
_EXAMPLE_POINTS = (0.5, 1.0, 1.5)
_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "Authorization: Bearer <key> (DYDC_API_KEYS)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "The same key in X-API-Key"},
}

# The error bodies (app.errors.problem_body; app.api.v2.routes.error_body), as strict as what
# is written: a problem's members are these and no others, ``errors`` only on a validation
# error (at most 10 of them), ``instance`` wherever the request has an id (always, behind the
# operator's middlewares).
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "title": "Problem",
        "description": "RFC 9457 problem details: what went wrong and what to change.",
        "type": "object",
        "properties": {
            "type": {"type": "string", "pattern": "^(urn:dydc:problem:[a-z0-9-]+|about:blank)$",
                     "description": "urn:dydc:problem:<kind>, or about:blank where the "
                                    "status says it all."},
            "title": {"type": "string", "description": "The status's phrase."},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What to change."},
            "instance": {"type": "string", "pattern": "^urn:dydc:request:[!-~]+$",
                         "description": "urn:dydc:request:<the answer's X-Request-ID>."},
            "errors": {
                "type": "array", "minItems": 1, "maxItems": 10,
                "description": "An invalid body's errors (the first 10), each where it is "
                               "and what is wrong.",
                "items": {"type": "object",
                          "properties": {"loc": {"type": "string"}, "msg": {"type": "string"}},
                          "required": ["loc", "msg"], "additionalProperties": False},
            },
        },
        "required": ["type", "title", "status", "detail"],
        "additionalProperties": False,
    },
    "ErrorResponse": {
        "title": "ErrorResponse",
        "description": "The Open Inference Protocol's error: what went wrong and what to change.",
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
        "additionalProperties": False,
    },
}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
# FastAPI's own answer to a request its parameters refuse, which it declares (as 422) on
# every operation with parameters that declares no 422 of its own
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def example_body(routine: Routine, sensitivities: bool) -> dict[str, Any]:
    """A small valid request for ``routine``: three samples, its default parameters."""
    width = len(routine.inputs)
    inputs: list[Any] = (list(_EXAMPLE_POINTS) if width == 1 else
                         [[x + 0.25 * j for j in range(width)] for x in _EXAMPLE_POINTS])
    body: dict[str, Any] = {"inputs": inputs,
                            "params": {p.name: p.default for p in routine.params}}
    if sensitivities:
        body["wrt"] = list(routine.param_names)
    return body


def example_inference(routine: Routine) -> dict[str, Any]:
    """:func:`example_body`'s samples as a v2 request: one tensor ``x`` of shape [3, D]."""
    rows = example_body(routine, False)["inputs"]
    width = len(routine.inputs)
    data = rows if width == 1 else [v for row in rows for v in row]
    return {"inputs": [{"name": MATRIX_INPUT, "shape": [len(rows), width], "datatype": "FP64",
                        "data": data}],
            "parameters": {p.name: p.default for p in routine.params}}


def _escape(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            else:
                _escape(value)
    elif isinstance(node, list):
        for item in node:
            _escape(item)


def _declare_errors(doc: dict[str, Any]) -> None:
    """Add the error bodies' components, and take out FastAPI's 422 and its body: the routes'
    parameters are path segments taken as strings, which FastAPI never refuses, and a
    validation error of this service is a problem (v1) or a 400 (v2), which the routes that
    can send one declare (FastAPI then adds no 422 of its own)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for _, op in _operations(doc):
        refused = op.get("responses", {}).get("422", {}).get("content", {})
        if refused.get("application/json", {}).get("schema", {}).get("$ref", "").endswith(
                "/HTTPValidationError"):
            del op["responses"]["422"]
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    schemas.update(copy.deepcopy(ERROR_SCHEMAS))


def _hoist_definitions(doc: dict[str, Any]) -> None:
    """Move the ``$defs`` of hand-written body schemas (v2 infer) into the components, where
    their references point."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for _, op in _operations(doc):
        for media in op.get("requestBody", {}).get("content", {}).values():
            components.update(media.get("schema", {}).pop("$defs", {}))


def _operations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, op) for path, item in doc["paths"].items() for op in item.values()
            if isinstance(op, dict)]


def _name_routines(doc: dict[str, Any], routines: dict[str, Routine]) -> None:
    names = sorted(routines)
    for path, op in _operations(doc):
        if path.startswith(_NAMED_PATHS):
            for parameter in op.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name":
                    parameter["schema"]["enum"] = names
                elif parameter["in"] == "path" and parameter["name"] == "version":
                    parameter["schema"]["enum"] = [MODEL_VERSION]
        if path in _BODY_ROUTES:
            media = op["requestBody"]["content"]["application/json"]
            media["examples"] = {
                r.name: {"summary": r.name, "description": r.description,
                         "value": example_body(r, _BODY_ROUTES[path])}
                for r in routines.values()
            }
        elif path in _INFER_ROUTES:
            media = op["requestBody"]["content"]["application/json"]
            media["examples"] = {
                r.name: {"summary": r.name, "description": r.description,
                         "value": example_inference(r)}
                for r in routines.values()
            }


def _unauthorized(path: str) -> dict[str, Any]:
    """The 401 of the key check (app.http.auth), which runs before routing and so answers
    in the format of the path's prefix (app.http.refusal): v2's under /v2."""
    prefix = v2_router.prefix
    v2 = path == prefix or path.startswith(prefix + "/")
    return {"description": "No API key, or a wrong one",
            "headers": {"WWW-Authenticate": {"required": True,
                                             "schema": {"type": "string", "enum": ["Bearer"]}}},
            "content": copy.deepcopy(_ERROR if v2 else _PROBLEM)}


def _guard(doc: dict[str, Any], settings: Settings) -> None:
    doc.setdefault("components", {})["securitySchemes"] = _SCHEMES
    for path, op in _operations(doc):
        if not is_open(path, public_metrics=settings.public_metrics,
                       public_docs=settings.public_docs):
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            op.setdefault("responses", {})["401"] = _unauthorized(path)


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with :func:`document`'s completion for ``settings``."""
    guarded = bool(settings.api_key_set)

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        # a copy: the routes' openapi_extra dicts are shared by every app built in a process
        doc = copy.deepcopy(get_openapi(title=app.title, version=app.version,
                                        summary=app.summary, routes=app.routes))
        _hoist_definitions(doc)
        _declare_errors(doc)
        constrain_expression_bodies(doc, settings.max_samples, settings.expression_max_ode_steps,
                                    settings.expression_max_chars)
        engine = getattr(app.state, "engine", None)
        if engine is not None:
            _name_routines(doc, engine.routines)
            constrain_bodies(doc, engine.routines, settings.max_samples)
        if guarded:
            _guard(doc, settings)
        _escape(doc)
        if engine is not None:
            app.openapi_schema = doc
        return doc

    setter: Callable[[], dict[str, Any]] = document
    app.openapi = setter  # type: ignore[method-assign]

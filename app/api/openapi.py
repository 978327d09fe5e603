"""The OpenAPI document as the running service serves it: FastAPI's, completed with what only
the running service knows and with what Swagger UI needs to render it right.

- The routine name of every route that takes one is an enum of the registered routines (the
  v2 model version an enum of its one version), the computation bodies have one example per
  routine and the names and bounds of app.api.openapi_bodies (they exist once the lifespan
  has discovered the routines; the document is cached from then on).
- With API keys on, the key schemes and a 401 on every guarded operation.
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
from app.api.openapi_bodies import constrain_bodies
from app.api.v2.routes import MODEL_VERSION
from app.api.v2.tensors import MATRIX_INPUT
from app.config import Settings
from routines import Routine

__all__ = ["example_body", "example_inference", "install_openapi"]

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
_UNAUTHORIZED = {"description": "No API key, or a wrong one (WWW-Authenticate: Bearer)"}


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


def _guard(doc: dict[str, Any], settings: Settings) -> None:
    doc.setdefault("components", {})["securitySchemes"] = _SCHEMES
    for path, op in _operations(doc):
        if not is_open(path, public_metrics=settings.public_metrics,
                       public_docs=settings.public_docs):
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            op.setdefault("responses", {})["401"] = _UNAUTHORIZED


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

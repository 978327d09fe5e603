"""The computation routes, each declared once.

:func:`computation_route` registers a POST route on a FastAPI router: FastAPI documents it in
OpenAPI and, when FastAPI is what routes the request, serves it through the one request
pipeline (:func:`app.api.pipeline.respond`). The same declaration is added to
:data:`COMPUTATION_ROUTES`, from which the application's dispatcher (app.api.dispatch) makes
its own table and serves these routes straight from ASGI: a path is written in one place.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.pipeline import Codec, respond

__all__ = ["COMPUTATION_ROUTES", "ComputationRoute", "computation_route"]

_PARAMETER = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class ComputationRoute:
    """``POST path``, served by ``codec``; ``pattern`` matches the whole path as Starlette's
    route does, with the path parameters as its named groups."""

    path: str  # the template, e.g. /v1/routines/{name}/sensitivities
    codec: Codec
    pattern: re.Pattern[str]


COMPUTATION_ROUTES: list[ComputationRoute] = []  # in the order they were declared


def _pattern(path: str) -> re.Pattern[str]:
    """The template's regex, as Starlette compiles it: each parameter one path segment."""
    parts = _PARAMETER.split(path)  # literal, parameter, literal, ..., literal
    return re.compile("".join(f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part)
                              for i, part in enumerate(parts)))


def computation_route(router: APIRouter, path: str, codec: Codec, name: str, doc: str,
                      **options: Any) -> None:
    """Register ``POST path`` (relative to ``router``'s prefix) on ``router``, served by
    ``codec``. ``name`` names the operation (its summary and operationId), ``doc`` describes it
    (as an endpoint's docstring would), ``options`` are :meth:`APIRouter.post`'s (models,
    responses, openapi_extra, include_in_schema). The path's parameters (``{name}``) are
    strings, handed to the codec. Call it once per route, at import."""

    async def endpoint(request: Request, **path_params: str) -> Response:
        return await respond(codec, request, **path_params)

    # FastAPI reads the path parameters (and the Request) off the signature
    parameters = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)
                  for p in _PARAMETER.findall(path)]
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=Request))
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        parameters, return_annotation=Response)
    endpoint.__name__ = endpoint.__qualname__ = name
    endpoint.__doc__ = doc
    router.post(path, **options)(endpoint)
    # the query options the route declares are the ones it takes (app.api.pipeline refuses
    # others: a misspelt ?stratgy= was ignored, and forward mode ran); none declared, none
    # are checked (v2: the protocol has no query options, and its clients may add their own)
    declared = frozenset(p["name"] for p in options.get("openapi_extra", {}).get("parameters", [])
                         if p.get("in") == "query")
    codec.query_options = declared or None
    full = router.prefix + path
    COMPUTATION_ROUTES.append(ComputationRoute(full, codec, _pattern(full)))

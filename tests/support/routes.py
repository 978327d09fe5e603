"""The paths the app serves, read from the app itself."""

from __future__ import annotations

from app.main import create_app

__all__ = ["route_paths"]


def route_paths() -> set[str]:
    """Every path the app serves: its routes, those of included routers, and the OpenAPI paths."""
    application = create_app()
    paths = set(application.openapi()["paths"])
    pending = list(application.routes)
    while pending:
        route = pending.pop()
        if isinstance(path := getattr(route, "path", None), str):
            paths.add(path)
        pending += getattr(getattr(route, "original_router", route), "routes", [])
    return paths

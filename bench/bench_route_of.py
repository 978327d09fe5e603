"""Dispatch benchmark: what app.api.dispatch.route_of costs per computation path.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_route_of.py

For a path of each kind it times ``route_of`` (paths without parameters in a dict, then the
patterns) beside the table it replaced (issue 21): the same patterns tried one after another
in the order they were written by hand, the expression routes after the routines'. Both are
made here from app.api.computation's declarations; the best of 7 runs, in ns per call.
"""

from __future__ import annotations

import timeit
from functools import partial

from starlette.types import Scope

from app.api.computation import COMPUTATION_ROUTES
from app.api.dispatch import computation_routes, route_of
from app.api.pipeline import Codec
from app.config import Settings
from app.main import create_app

_BEFORE_ORDER = (
    "/v1/routines/{name}/sensitivities", "/v1/routines/{name}/evaluate",
    "/v1/routines/{name}/compare", "/v1/routines/{name}/scenarios",
    "/v2/models/expression/infer", "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer", "/v1/expressions/sensitivities",
    "/v1/expressions/evaluate", "/v1/expressions/compare", "/v1/expressions/scenarios",
)
PATHS = ("/v1/routines/linear/sensitivities", "/v1/routines/linear/evaluate",
         "/v2/models/linear/infer", "/v1/expressions/sensitivities",
         "/v1/expressions/scenarios", "/v1/nothing/here")


def main() -> None:
    create_app(Settings(device="cpu"))  # every route declared
    table = computation_routes(COMPUTATION_ROUTES)
    by_path = {r.path: r for r in COMPUTATION_ROUTES}
    before = [(by_path[p].pattern, by_path[p].codec) for p in _BEFORE_ORDER]

    def one_after_another(scope: Scope) -> tuple[Codec, dict[str, str]] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for pattern, codec in before:
            match = pattern.fullmatch(path)
            if match is not None:
                return codec, match.groupdict()
        return None

    n = 200_000
    for path in PATHS:
        scope: Scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
        assert one_after_another(scope) == route_of(scope, table), path
        old = min(timeit.repeat(partial(one_after_another, scope), number=n, repeat=7)) / n
        new = min(timeit.repeat(partial(route_of, scope, table), number=n, repeat=7)) / n
        print(f"{path:36s} one after another {old * 1e9:5.0f} ns   route_of {new * 1e9:5.0f} ns")


if __name__ == "__main__":
    main()

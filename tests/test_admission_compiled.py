"""Admission at the speed of what will run (app.engine.runtime.service's _admit): a request over
DYDC_MAX_JOB_COST at eager speed whose kind a compiled graph serves starts that graph's build
and is told to retry (503, Retry-After), rather than refused for good; once the graph is
loaded it is priced through it (its first launch at plain evaluation's price, later ones at
the seconds per sample its launches took) and served compiled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.engine.compiled.builds import Artefact, InlineBuilder, Kind, Samples
from app.engine.differentiation.differentiate import TRANSFORMS_LOCK
from app.engine.runtime.admission import RoutineCost
from app.main import create_app
from routines import Routine
from tests.support import GatedBuilder, needs_cxx

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/linear/sensitivities"
N = 256
BODY = {"inputs": [0.5 * i for i in range(N)], "params": {"C": 1.5}}
# plain evaluation 0.0266 s, eager forward (2 passes, 4 evaluations a sample) 0.1044 s
COST = RoutineCost(pass_s=1e-3, sample_s=1e-4)
LIMIT = 0.05


class LockedInlineBuilder(InlineBuilder):
    """Builds in the caller's thread (the event loop's, at admission), under the transforms
    lock as every launch holds it."""

    def submit(self, kind: Kind, samples: Samples, routine: Routine) -> Future[Artefact]:
        with TRANSFORMS_LOCK:
            return super().submit(kind, samples, routine)


@asynccontextmanager
async def served(builder: Any, cache_dir: Path | None = None, **settings: Any,
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The service with compiled graphs from 64 samples on, built by ``builder`` (into
    ``cache_dir`` if given), and ``linear`` priced at COST (eager forward over LIMIT, plain
    evaluation under it), with other ``settings``; the client and the engine."""
    app = create_app(Settings(device="cpu", compile_min_samples=64, max_job_cost=LIMIT,
                              compile_cache_dir=cache_dir, **settings))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dydc.test",
                                     timeout=60) as client:
            while (await client.get("/readyz")).status_code != 200:
                # a poll without a pause keeps the interpreter's lock from the warm-up's
                # thread: its eager logistic_rk4 took minutes on an idle 2-core machine
                await anyio.sleep(0.02)
            engine = app.state.engine
            engine.costs._routines["linear"] = COST
            engine.costs._correction.clear()
            engine._compiled.builder = builder
            yield client, engine


async def test_over_the_limit_eagerly_a_compilable_request_starts_its_build(
        tmp_path: Path) -> None:
    builder = GatedBuilder(tmp_path)  # never finishes here
    async with served(builder) as (c, _):
        r = await c.post(SENS, json=BODY)
        assert r.status_code == 503, r.text
        problem = r.json()
        assert problem["type"] == "urn:dydc:problem:compiled-graph-building"
        assert "a compiled graph for it is being built (about 60 s)" in problem["detail"]
        assert "over the limit of 0.05 s (DYDC_MAX_JOB_COST)" in problem["detail"]
        assert r.headers["retry-after"] == "60"
        [kind] = builder.kinds
        assert (kind.routine, kind.wrt, kind.dtype, kind.device) == ("linear", ("C",),
                                                                     "float64", "cpu")
        again = await c.post(SENS, json=BODY)  # still building: asked for once
        assert again.status_code == 503 and len(builder.kinds) == 1
        # what no graph serves is refused for good, as before: reverse mode, a check
        for query in ("?strategy=reverse-batched", "?check=finite-difference"):
            refused = await c.post(SENS + query, json=BODY)
            assert refused.status_code == 422, refused.text
            assert refused.json()["type"] == "urn:dydc:problem:cost-exceeded"
        small = await c.post(SENS, json={"inputs": BODY["inputs"][:32]})  # under min_samples
        assert small.status_code == 200
        assert len(builder.kinds) == 1


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compile cache directory for the module's builds: a build is tens of seconds, and
    the tests after the first take its graph from there as a restarted service would."""
    return tmp_path_factory.mktemp("graphs")


@needs_cxx
async def test_once_built_the_request_is_priced_through_its_graph_and_served(
        graphs: Path) -> None:
    """And after a restart, the build stored in the cache directory prices the first such
    request: served, not told that a graph is being built."""
    async with served(LockedInlineBuilder(graphs), graphs) as (c, engine):
        compiled = engine._compiled
        # the build runs inline, at admission: built, not yet published, so priced at plain
        # evaluation's 0.0266 s (the launch that runs this request publishes it first)
        first = await c.post(SENS, json=BODY)
        assert first.status_code == 200, first.text
        assert compiled.graphs == 1
        assert first.json()["derivatives"]["C"] == BODY["inputs"]  # dy/dC = x
        assert first.json()["values"] == [1.5 * x for x in BODY["inputs"]]
        launches = sum(compiled._launches.values())
        assert launches == 1  # it ran through the graph
        rate = next(iter(compiled._rates.values()))
        assert 0 < rate * N < LIMIT  # measured, far under eager's price
        # now priced at its measured rate alone: plain evaluation priced far over the limit
        engine.costs._routines["linear"] = RoutineCost(pass_s=1.0, sample_s=1.0)
        second = await c.post(SENS, json={**BODY, "params": {"C": -2.0}})
        assert second.status_code == 200, second.text
        assert second.json()["values"] == [-2.0 * x for x in BODY["inputs"]]
        assert sum(compiled._launches.values()) == 2

    gated = GatedBuilder(graphs)  # a build asked for would never finish
    async with served(gated, graphs) as (c, engine):
        again = await c.post(SENS, json=BODY)
        assert again.status_code == 200, again.text
        assert again.json()["derivatives"]["C"] == BODY["inputs"]
        assert gated.kinds == []  # taken from the cache directory, not built
        assert sum(engine._compiled._launches.values()) == 1


@needs_cxx
async def test_what_a_graph_ran_does_not_price_what_runs_eagerly(graphs: Path) -> None:
    """The cost model learns from the heavy jobs that ran eagerly, not from those a compiled
    graph ran: a graph's speed (launch_seconds prices its own kind) would under-price the
    routine's other kinds, which run eagerly, until they were stopped mid-run."""
    # every request over 64 samples is heavy (run alone, in slices), and learnt from
    async with served(LockedInlineBuilder(graphs), graphs, max_batch_samples=64) as (
            c, engine):
        through_graph = await c.post(SENS, json=BODY)
        assert through_graph.status_code == 200, through_graph.text
        assert through_graph.json()["derivatives"]["C"] == BODY["inputs"]
        assert sum(engine._compiled._launches.values()) == N // 64  # launches of 64 samples
        assert engine.costs._correction == {}
        eager = await c.post(SENS + "?strategy=forward-dual",
                             json={"inputs": BODY["inputs"][:80]})
        assert eager.status_code == 200, eager.text
        assert eager.json()["derivatives"]["C"] == BODY["inputs"][:80]
        assert list(engine.costs._correction) == [("linear", "forward-dual")]

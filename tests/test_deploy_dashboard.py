"""Every metric the Grafana dashboard queries exists on a live /metrics scrape of the app."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy/grafana/dashboards/dydc.json"

# Metrics the dashboard may query before a scrape shows them. Keep this list small: each entry
# says why, and the test below fails once an entry is no longer needed.
#
# Queried ahead of a change in flight: metric names that the change will export. Empty now
# (dydc_queue_wait_seconds, dydc_batch_requests and dydc_launches_total came with dynamic
# batching); remove an entry in the change that exports it.
EXPECTED_SOON: frozenset[str] = frozenset()
# Exported only when a worker runs on CUDA; this scrape is of an app on the CPU, where the
# family is declared (HELP and TYPE) without samples.
CUDA_ONLY = frozenset({"dydc_device_memory_bytes"})

_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def queried_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p["targets"]]
    assert exprs
    return {name for e in exprs for name in re.findall(r"\bdydc_[a-zA-Z0-9_:]*", e)}


def family_of(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


async def scrape(client: httpx.AsyncClient) -> tuple[set[str], set[str]]:
    """(sample names, family names) of a scrape taken after one computation request."""
    r = await client.post("/v1/routines/linear/sensitivities",
                          json={"inputs": [0, 1, 2], "params": {"C": -5.0}})
    assert r.status_code == 200, r.text
    text = (await client.get("/metrics")).text
    families = list(text_string_to_metric_families(text))
    return {s.name for f in families for s in f.samples}, {f.name for f in families}


async def test_every_queried_metric_is_scraped(client: httpx.AsyncClient) -> None:
    samples, families = await scrape(client)
    missing = {m for m in queried_metrics() if m not in samples}
    for name in CUDA_ONLY:
        assert family_of(name) in families, f"{name} is no longer declared by the app"
    unexpected = {m for m in missing if family_of(m) not in EXPECTED_SOON | CUDA_ONLY
                  and m not in EXPECTED_SOON | CUDA_ONLY}
    assert not unexpected, f"the dashboard queries metrics the app does not export: {unexpected}"


async def test_allow_lists_hold_only_what_is_still_missing(client: httpx.AsyncClient) -> None:
    samples, _ = await scrape(client)
    queried = queried_metrics()
    for name in EXPECTED_SOON:
        assert any(family_of(q) == family_of(name) for q in queried), (
            f"{name} is on EXPECTED_SOON but the dashboard does not query it")
        assert not any(family_of(s) == family_of(name) for s in samples), (
            f"{name} is exported now: remove it from EXPECTED_SOON")
    assert {family_of(q) for q in queried} >= CUDA_ONLY

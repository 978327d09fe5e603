"""API keys (app.http.auth) on both protocols, the bare computation path included."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.http.auth import ApiKeyMiddleware, presented_keys
from tests.support import (
    ClientFactory,
    access_log_lines,
    assert_error,
    assert_problem,
    scrape,
    tensor,
    value,
)

pytestmark = pytest.mark.anyio

KEY = "s3cret-key-0123456789"
OTHER = "second-key"
SENS = "/v1/routines/linear/sensitivities"
INFER = "/v2/models/linear/infer"
V1_BODY = {"inputs": [1.0, 2.0, 3.5], "params": {"C": 2.0}}
V2_BODY = {"inputs": [tensor("x", [1.0, 2.0, 3.5])], "parameters": {"C": 2.0}}


def _dy_dc(r: httpx.Response) -> list[float]:
    assert r.status_code == 200, r.text
    return list(r.json()["derivatives"]["C"])


async def test_v1_needs_a_key_by_either_header(make_client: ClientFactory) -> None:
    async with make_client(api_keys=f"{KEY},{OTHER}") as c:
        r = await c.post(SENS, json=V1_BODY)
        assert_problem(r, 401, "API key", "Authorization: Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["instance"] == f"urn:dydc:request:{r.headers['x-request-id']}"
        wrong = await c.post(SENS, json=V1_BODY, headers={"Authorization": f"Bearer {KEY}x"})
        assert_problem(wrong, 401, "not accepted")
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert_problem(await c.post(SENS, json=V1_BODY, headers={"Authorization": KEY}), 401)
        # dy/dC = x for y = C x, with either header and either key
        assert _dy_dc(await c.post(SENS, json=V1_BODY,
                                   headers={"Authorization": f"Bearer {KEY}"})) == [1, 2, 3.5]
        assert _dy_dc(await c.post(SENS, json=V1_BODY,
                                   headers={"authorization": f"bearer {OTHER}"})) == [1, 2, 3.5]
        assert _dy_dc(await c.post(SENS, json=V1_BODY, headers={"X-API-Key": KEY})) == [1, 2, 3.5]
        assert_problem(await c.get("/v1/routines"), 401)
        assert (await c.get("/v1/routines", headers={"X-API-Key": OTHER})).status_code == 200


async def test_v2_needs_a_key_and_answers_in_its_format(make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEY) as c:
        r = await c.post(INFER, json=V2_BODY)
        assert_error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(await c.get("/v2/models/linear"), 401)
        assert_error(await c.post(INFER, json=V2_BODY, headers={"X-API-Key": "nope"}), 401)
        ok = await c.post(INFER, json=V2_BODY, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200, ok.text
        outputs = {o["name"]: o["data"] for o in ok.json()["outputs"]}
        assert outputs["dy_dC"] == [1.0, 2.0, 3.5] and outputs["y"] == [2.0, 4.0, 7.0]


async def test_health_stays_open_metrics_and_docs_by_setting(
        make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEY) as c:
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
                     "/metrics", "/docs", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert (await c.get(path)).status_code == 200, path
        doc = (await c.get("/openapi.json")).json()
        assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])
        assert "401" in doc["paths"]["/v1/routines/{name}/sensitivities"]["post"]["responses"]
        assert "security" not in doc["paths"]["/healthz"]["get"]
    async with make_client(api_keys=KEY, public_metrics=False, public_docs=False) as c:
        assert (await c.get("/healthz")).status_code == 200
        for path in ("/metrics", "/docs", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert_problem(await c.get(path), 401)
            assert (await c.get(path, headers={"X-API-Key": KEY})).status_code == 200, path


async def test_keys_file(make_client: ClientFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# one key a line\n\n  {KEY}  \n{OTHER}\n")
    async with make_client(api_keys_file=str(keys)) as c:
        assert_problem(await c.post(SENS, json=V1_BODY), 401)
        assert_problem(await c.post(SENS, json=V1_BODY,
                                    headers={"X-API-Key": "# one key a line"}), 401)
        for key in (KEY, OTHER):
            assert _dy_dc(await c.post(SENS, json=V1_BODY, headers={"X-API-Key": key})) \
                == [1, 2, 3.5]


async def test_keys_never_reach_the_log_or_the_metrics(make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEY) as c:
        with access_log_lines() as lines:
            await c.post(SENS, json=V1_BODY, headers={"Authorization": f"Bearer {KEY}"})
            await c.post(SENS, json=V1_BODY, headers={"X-API-Key": f"{KEY}-wrong"})
            await c.post(INFER, json=V2_BODY, headers={"X-API-Key": KEY})
        metrics = (await c.get("/metrics")).text
    assert len(lines) == 3 and [line.split('"')[2].split()[0] for line in lines] == \
        ["200", "401", "200"]
    assert all(KEY not in line for line in lines)
    assert KEY not in metrics


async def test_without_keys_nothing_is_asked(client: httpx.AsyncClient) -> None:
    assert _dy_dc(await client.post(SENS, json=V1_BODY)) == [1, 2, 3.5]


def test_presented_keys_and_comparison() -> None:
    assert presented_keys([(b"authorization", b"Bearer  abc ")]) == [b"abc"]
    assert presented_keys([(b"authorization", b"BEARER abc")]) == [b"abc"]
    assert presented_keys([(b"authorization", b"Basic abc")]) == [b""]  # matches no key
    assert presented_keys([(b"authorization", b"Bearer a b")]) == [b""]
    assert presented_keys([(b"authorization", b"Bearer")]) == [b""]
    assert presented_keys([(b"authorization", b"Bearer abc"), (b"x-api-key", b"def")]) == \
        [b"abc", b"def"]
    assert presented_keys([(b"content-type", b"application/json")]) == []
    guard = ApiKeyMiddleware(lambda *a: None, ["a", "bb"])  # type: ignore[arg-type, return-value]
    assert guard.accepts(b"a") and guard.accepts(b"bb")
    assert not guard.accepts(b"b") and not guard.accepts(b"") and not guard.accepts(b"abb")
    with pytest.raises(ValueError):
        ApiKeyMiddleware(lambda *a: None, [])  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong", "X-API-Key": KEY},
    {"Authorization": f"Bearer {KEY}", "X-API-Key": "wrong"},
    {"Authorization": f"Basic {KEY}", "X-API-Key": KEY},
    {"Authorization": f"Bearer {KEY} extra"},
], ids=["wrong-bearer-right-x-api-key", "right-bearer-wrong-x-api-key", "other-scheme",
        "space-inside"])
async def test_a_wrong_credential_is_refused_beside_a_right_one(
        make_client: ClientFactory, headers: dict[str, str]) -> None:
    async with make_client(api_keys=KEY) as c:
        assert_problem(await c.post(SENS, json=V1_BODY, headers=headers), 401, "not accepted")
        both = {"Authorization": f"BeArEr   {KEY} ", "X-API-Key": KEY}  # case, spaces: fine
        assert _dy_dc(await c.post(SENS, json=V1_BODY, headers=both)) == [1, 2, 3.5]


async def test_refused_computation_requests_are_counted(make_client: ClientFactory) -> None:
    """dydc_requests_total counts computation requests by status: those the middlewares
    refuse (401 here, 415) too, routine unknown; a refused GET is not a computation."""
    async with make_client(api_keys=KEY, public_metrics=True) as c:
        def count(status: str) -> float:
            return value(metrics, "dydc_requests_total", routine="unknown", strategy="none",
                         status=status)

        metrics = scrape((await c.get("/metrics")).text)
        before = count("401"), count("415")
        await c.post(SENS, json=V1_BODY)
        await c.post(INFER, json=V2_BODY, headers={"X-API-Key": "nope"})
        await c.get("/v1/routines")
        await c.post(SENS, content=b"x", headers={"X-API-Key": KEY, "content-type": "text/csv"})
        metrics = scrape((await c.get("/metrics")).text)
        assert (count("401"), count("415")) == (before[0] + 2, before[1] + 1)

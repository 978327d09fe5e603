"""The slips a new user makes first, each answered with what to change: a deadline too short
to meet (422 / 400 naming it, never the 503 or 504 of an overload), ``"wrt": "C"`` (taken, as
v2, the client and the command line take it), a misspelt field (the closest one suggested)."""

from __future__ import annotations

import httpx
import pytest

from tests.support import assert_problem

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"
INFER = "/v2/models/linear/infer"
X1 = [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]


@pytest.mark.parametrize("timeout_ms", ["2.2250738585072014e-308", "0.999", "0", "-5", "nan"])
@pytest.mark.parametrize("endpoint", ["sensitivities", "evaluate", "compare"])
async def test_a_deadline_under_1_ms_is_422(client: httpx.AsyncClient, endpoint: str,
                                            timeout_ms: str) -> None:
    r = await client.post(f"/v1/routines/linear/{endpoint}?strategy=reverse-batched"
                          f"&timeout_ms={timeout_ms}" if endpoint == "sensitivities" else
                          f"/v1/routines/linear/{endpoint}?timeout_ms={timeout_ms}",
                          json={"inputs": [1.0, 2.0]})
    assert_problem(r, 422, "timeout_ms", "at least 1")
    assert "retry-after" not in r.headers


async def test_a_deadline_of_1_ms_is_taken(client: httpx.AsyncClient) -> None:
    r = await client.post(SENS.format("linear") + "?timeout_ms=1", json={"inputs": [1.0]})
    assert r.status_code in (200, 504), r.text  # met, or passed while queued: not refused


@pytest.mark.parametrize("timeout_us", [2.2250738585072014e-308, 999, 999.9, 0])
async def test_a_v2_timeout_under_1000_us_is_400(client: httpx.AsyncClient,
                                                 timeout_us: float) -> None:
    r = await client.post(INFER, json={"inputs": X1, "parameters": {"timeout": timeout_us}})
    assert r.status_code == 400, r.text
    assert "parameters.timeout" in r.json()["error"]
    assert "at least 1000 microseconds" in r.json()["error"]


async def test_a_v2_timeout_of_1000_us_is_taken(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER, json={"inputs": X1, "parameters": {"timeout": 1000}})
    assert r.status_code in (200, 504), r.text


async def test_the_schema_gives_the_minimum(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for endpoint in ("sensitivities", "evaluate", "compare"):
        query = doc["paths"][f"/v1/routines/{{name}}/{endpoint}"]["post"]["parameters"]
        (timeout,) = [p for p in query if p["name"] == "timeout_ms"]
        assert timeout["schema"]["minimum"] == 1


@pytest.mark.parametrize("wrt", ["sigma", "sigma, r", "sigma,r,"])
async def test_wrt_as_a_comma_separated_string(client: httpx.AsyncClient, wrt: str) -> None:
    r = await client.post(SENS.format("black_scholes_call"),
                          json={"inputs": [[100, 95, 0.5]], "wrt": wrt})
    assert r.status_code == 200, r.text
    expected = [w.strip() for w in wrt.split(",") if w.strip()]
    assert list(r.json()["derivatives"]) == expected


async def test_wrt_as_an_empty_string_says_what_to_send(client: httpx.AsyncClient) -> None:
    r = await client.post(SENS.format("linear"), json={"inputs": [1], "wrt": " , "})
    assert_problem(r, 422, "wrt is empty")


@pytest.mark.parametrize(("field", "suggestion"), [
    ("param", 'did you mean "params"?'),
    ("input", 'did you mean "inputs"?'),
    ("wrt_", 'did you mean "wrt"?'),
    ("dtpye", 'did you mean "dtype"?'),
])
async def test_a_misspelt_field_gets_the_closest(client: httpx.AsyncClient, field: str,
                                                 suggestion: str) -> None:
    body = {"inputs": [1.0], field: 1} if field != "input" else {field: [1.0]}
    r = await client.post(SENS.format("linear"), json=body)
    problem = assert_problem(r, 422, f"unknown field '{field}'", suggestion,
                             "the fields are inputs, params, dtype, wrt, order, cross")
    assert any(e["loc"] == field for e in problem["errors"])  # type: ignore[attr-defined]


async def test_an_unknown_field_with_nothing_close(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/routines/linear/evaluate",
                          json={"inputs": [1.0], "zzzz" * 100: 1, "order": "two"})
    problem = assert_problem(r, 422, "unknown field 'zzzzzzzz", "...'; the fields are inputs")
    assert "did you mean" not in problem["detail"]  # type: ignore[operator]
    assert "order: Input should be a valid integer" in problem["detail"]  # type: ignore[operator]
    assert len(problem["detail"]) < 400  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout_ms", ["inf", "1e400", "1e12"])
async def test_a_deadline_over_the_servers_is_capped_not_refused(client: httpx.AsyncClient,
                                                                 timeout_ms: str) -> None:
    r = await client.post(SENS.format("linear") + f"?timeout_ms={timeout_ms}",
                          json={"inputs": [1.0, 2.0]})
    assert r.status_code == 200, r.text
    assert r.json()["derivatives"] == {"C": [1.0, 2.0]}


@pytest.mark.parametrize(("url", "body", "needles"), [
    (SENS.format("linear") + "?stratgy=reverse-loop", {"inputs": [1.0]},
     ["'stratgy'", "did you mean 'strategy'", "check, scheme, shift, shift_type, strategy"]),
    (SENS.format("linear") + "?strategy=forward&timeout=100", {"inputs": [1.0]},
     ["'timeout'", "did you mean 'timeout_ms'"]),
    ("/v1/routines/linear/evaluate?check=finite-difference", {"inputs": [1.0]},
     ["'check'", "this route takes: timeout_ms"]),
    ("/v1/expressions/sensitivities?shfit=1e-3",
     {"expression": "C * x", "inputs": {"names": ["x"], "values": [1.0]}, "params": {"C": 2}},
     ["'shfit'", "did you mean 'shift'"]),
])
async def test_a_misspelt_query_option_is_refused_not_ignored(
        client: httpx.AsyncClient, url: str, body: dict[str, object],
        needles: list[str]) -> None:
    """A query option the route does not take was ignored: ?stratgy=reverse-loop ran forward
    mode. It is refused naming the closest one the route takes."""
    assert_problem(await client.post(url, json=body), 422, "unknown query option", *needles)


@pytest.mark.parametrize("query", ["?strategy=auto&strategy=jacrev",
                                   "?shift=1e-6&strategy=finite-difference&shift=1e-3"])
async def test_a_query_option_given_twice_is_refused(client: httpx.AsyncClient,
                                                     query: str) -> None:
    """The last had won silently (?strategy=auto&strategy=jacrev ran jacrev), where a JSON key
    given twice is refused as ambiguous."""
    r = await client.post(SENS.format("linear") + query, json={"inputs": [1.0]})
    name = query[1:].split("=")[0]
    assert_problem(r, 422, f"the query gives '{name}' more than once", "give each option once")


@pytest.mark.parametrize("wrt", ["C,,x", "C, ,x", ",C,,x,"])
async def test_an_empty_name_between_names_in_a_wrt_string_is_refused(
        client: httpx.AsyncClient, wrt: str) -> None:
    """It was dropped silently ("C,,x" ran as "C,x"), where a name may have been left out;
    a comma at an end is a typing habit, and taken."""
    r = await client.post(SENS.format("linear"), json={"inputs": [1.0], "wrt": wrt})
    assert_problem(r, 422, f"wrt = {wrt!r} has an empty name between two commas",
                   "single commas")
    for taken in (" C , x ", "C,x,", ",C,x"):
        ok = await client.post(SENS.format("linear"), json={"inputs": [2.0], "wrt": taken})
        assert ok.json()["derivatives"] == {"C": [2.0], "x": [1.0]}, ok.text


@pytest.mark.parametrize(("wrt", "status"), [
    ("", 422), ([], 422), ("zzz", 422), (["nope"], 422), (["C", "C"], 422),
    (["C"], 200), ("C", 200), (["x"], 200)])
async def test_evaluate_checks_the_wrt_it_does_not_use(client: httpx.AsyncClient,
                                                       wrt: object, status: int) -> None:
    """One body serves /evaluate and /sensitivities, so /evaluate takes a wrt; one no request
    could mean (empty, unknown, repeated) is refused as OpenAPI declares it (schemathesis
    found them answered 200)."""
    r = await client.post("/v1/routines/linear/evaluate", json={"inputs": [2.0], "wrt": wrt})
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["values"] == [2.0] and "derivatives" not in r.json()


async def test_options_a_route_takes_or_ignores_are_accepted(client: httpx.AsyncClient) -> None:
    for url in (SENS.format("linear") + "?strategy=forward&timeout_ms=5000",
                "/v1/routines/linear/evaluate?strategy=forward&timeout_ms=5000",
                "/v1/routines/linear/compare?strategy=auto&shift=1e-6",
                "/v1/routines/linear/scenarios?strategy=finite-difference&shift=1e-6"):
        body: dict[str, object] = {"inputs": [1.0, 2.0]}
        if "scenarios" in url:
            body |= {"scenarios": {"list": [{"C": 0.5}]}, "explain": True}
        r = await client.post(url, json=body)
        assert r.status_code == 200, (url, r.text)
    infer = await client.post(INFER + "?anything=1", json={"inputs": X1})
    assert infer.status_code == 200, infer.text  # v2 has no query options to check

"""What the client refuses before anything is sent (a ValueError naming the argument, the
same on every protocol), and catalogue answers that are not dydc's (an ``ApiError``, and one
line from the command line), against stubs that fail the test if a computation is sent."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dydc
import httpx
import numpy as np
import pytest
from dydc.cli import app
from typer.testing import CliRunner

LINEAR = {"name": "linear", "description": "y = C * x", "inputs": ["x"], "outputs": ["y"],
          "params": [{"name": "C", "default": 1.0}]}
PROTOCOLS = ["json", "binary"]
EMPTY_WRT = "wrt is empty; name at least one parameter, or leave wrt out"


def catalogue(request: httpx.Request) -> httpx.Response:
    """The routine and the limits; any computation fails the test (nothing may be sent)."""
    if request.url.path == "/v1/routines/linear":
        return httpx.Response(200, json=LINEAR)
    if request.url.path == "/v1/limits":
        return httpx.Response(200, json={"max_samples": 1 << 20})
    raise AssertionError(f"sent {request.method} {request.url.path}")


def stub_client(protocol: str = "auto") -> dydc.Client:
    return dydc.Client("http://stub", protocol=protocol,
                       transport=httpx.MockTransport(catalogue))


# -- catalogue answers of another shape --------------------------------------------------------

SHAPES = [{"hello": 1}, [1, 2], {"routines": [1], "strategies": "ab", "name": None}]


@pytest.mark.parametrize("doc", SHAPES)
@pytest.mark.parametrize("method", ["routines", "strategies", "routine", "limits"])
def test_a_catalogue_answer_of_another_shape_is_an_api_error(doc: Any, method: str) -> None:
    """As for a computation's answer (client/README.md): JSON of another shape answered 200
    is an ApiError with that status, not a KeyError or a TypeError from inside the client."""
    if method == "limits" and isinstance(doc, dict):
        doc = {"max_samples": "many"}  # an object without limits is a service that has none
    args = ("linear",) if method == "routine" else ()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=doc))
    with (dydc.Client("http://stub", transport=transport) as client,
          pytest.raises(dydc.ApiError, match="not a dydc answer") as caught):
        getattr(client, method)(*args)
    assert caught.value.status == 200


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["routines", "strategies", "routine", "limits"])
async def test_the_same_from_the_async_client(method: str) -> None:
    args = ("linear",) if method == "routine" else ()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=[1, 2]))
    async with dydc.AsyncClient("http://stub", transport=transport) as client:
        with pytest.raises(dydc.ApiError, match="not a dydc answer"):
            await getattr(client, method)(*args)


@pytest.fixture
def not_dydc() -> Iterator[str]:
    """A server that answers 200 with JSON of another shape to every GET."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("args", [
    ["describe", "linear"], ["routines"], ["strategies"],
    ["evaluate", "linear", "-i", "-"], ["sensitivities", "linear", "-i", "-"],
])
def test_the_command_line_says_so_in_one_line(not_dydc: str, args: list[str]) -> None:
    """Every command asks the catalogue first: one line and exit 1, not a traceback."""
    result = CliRunner().invoke(app, ["--url", not_dydc, *args], input="x\n1\n")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: 200 OK: the answer (application/json")
    assert "not a dydc answer" in result.stderr and result.stderr.count("\n") == 1


# -- local refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("wrt", [[], "", " , "])
@pytest.mark.parametrize(("protocol", "n"), [("auto", 2048), ("binary", 3), ("json", 3)])
def test_an_empty_wrt_is_refused_on_every_protocol(protocol: str, n: int, wrt: Any) -> None:
    """v2 would read an empty wrt as no derivatives at all (an answer with none); v1
    refuses it: refused here, before anything is sent, whichever protocol would carry it."""
    x = np.linspace(1.0, 2.0, n)
    with stub_client(protocol) as client:
        with pytest.raises(ValueError, match=EMPTY_WRT):
            client.sensitivities("linear", x, {"C": 2.0}, wrt=wrt)
        with pytest.raises(ValueError, match=EMPTY_WRT):
            client.compare("linear", x, {"C": 2.0}, wrt=wrt)
        with pytest.raises(ValueError, match=EMPTY_WRT):
            client.expression("C * x", {"x": x}, {"C": 2.0}, wrt=wrt)
        with pytest.raises(ValueError, match=EMPTY_WRT):
            client.scenarios("linear", x, {"C": 2.0}, {"C": ("rel", [0.1])}, explain=True,
                             wrt=wrt)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -np.inf])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_non_finite_shared_parameter_is_refused(protocol: str, value: float) -> None:
    """As a NaN input or per-sample parameter is, named as the service names it (orjson
    would have sent null, and the service said "params.C is null")."""
    message = rf"params\.C is {value}; JSON carries only finite numbers"
    with stub_client(protocol) as client:
        with pytest.raises(ValueError, match=message):
            client.sensitivities("linear", [1.0, 2.0], {"C": value})
        with pytest.raises(ValueError, match=message):
            client.evaluate("linear", [1.0, 2.0], {"C": np.float32(value)})
        with pytest.raises(ValueError, match=message):
            client.expression("C * x", {"x": [1.0]}, {"C": value})
        with pytest.raises(ValueError, match=message):
            client.scenarios("linear", [1.0], {"C": value}, {"C": ("rel", [0.1])})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scenario_list": [{"C": None}]},
     r"scenario_list\[0\]\['C'\] is None; give a number \(the factor's absolute shift\)"),
    ({"scenario_list": [{"C": 0.1}, {"C": "x"}]}, r"scenario_list\[1\]\['C'\] is 'x'"),
    ({"scenario_list": [{"C": "0.1"}]}, r"scenario_list\[0\]\['C'\] is '0.1'; give a number"),
    ({"scenario_list": [{"C": [0.1, 0.2]}]}, r"scenario_list\[0\]\['C'\] is \[0.1, 0.2\]"),
    ({"scenario_list": [0.1]}, r"scenario_list\[0\] is 0.1; give a mapping"),
    ({"scenario_list": {"C": 0.1}}, "scenario_list is {'C': 0.1}; give a list of mappings"),
    ({"shifts": {"C": ("rel", ["a"])}},
     r"shifts\['C'\] is \['a'\]; give a number or a non-empty flat list of numbers"),
    ({"shifts": {"C": ("rel", "0.1")}}, r"shifts\['C'\] is '0.1'; give a number"),
    ({"shifts": {"C": ("rel", [0.1, [0.2]])}}, r"shifts\['C'\] is \[0.1, \[0.2\]\]"),
    ({"shifts": {"C": (None, [0.1])}}, "type None; use absolute or relative"),
    ({"shifts": [("C", ("rel", [0.1]))]}, "shifts is .*; give a mapping of factor"),
])
def test_a_scenario_of_the_wrong_type_is_named(kwargs: dict[str, Any], message: str) -> None:
    with stub_client() as client, pytest.raises(ValueError, match=message):
        client.scenarios("linear", [1.0], {"C": 1.0}, **kwargs)


@pytest.mark.parametrize(("wrt", "message"), [
    (5, r"wrt is 5; give parameter or input names, as a list \(\['sigma', 'S'\]\) or "
        r"comma-separated \('sigma,S'\)"),
    (["C", 5], r"wrt is \['C', 5\]; give parameter or input names"),
    ({"C": 1}, r"wrt is \{'C': 1\}; give parameter or input names"),
])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_wrt_of_the_wrong_type_is_named(protocol: str, wrt: Any, message: str) -> None:
    with stub_client(protocol) as client, pytest.raises(ValueError, match=message):
        client.sensitivities("linear", [1.0], {"C": 1.0}, wrt=wrt)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_dtype_the_client_cannot_send_is_refused_alike(protocol: str) -> None:
    """Over binary the client has no float16 tensor to send; over JSON the service refused
    it: the same ValueError either way now."""
    with stub_client(protocol) as client, pytest.raises(
            ValueError, match="dtype 'float16'; use float64 or float32"):
        client.sensitivities("linear", [1.0], {"C": 1.0}, dtype="float16")


def test_a_name_list_is_still_taken_in_any_form() -> None:
    from dydc.options import Kind, options

    assert options(Kind.SENSITIVITIES, wrt=" C , x,").wrt == ("C", "x")
    assert options(Kind.SENSITIVITIES, wrt=("C", "x")).wrt == ("C", "x")
    assert options(Kind.SENSITIVITIES, wrt=np.array(["C"])).wrt == ("C",)  # type: ignore[arg-type]
    assert options(Kind.SENSITIVITIES).wrt is None


@pytest.mark.parametrize(("kwargs", "given"), [
    ({"check": True}, "check"),
    ({"wrt": "x"}, "wrt"),
    ({"order": 5}, "order"),
    ({"wrt": "C", "order": 2, "cross": True}, "wrt, order, cross"),
    ({"strategy": "reverse"}, "strategy"),
    ({"bump": {"shift": 1e-3}}, "bump"),
])
def test_evaluate_refuses_what_only_derivatives_honour(kwargs: dict[str, Any],
                                                       given: str) -> None:
    """As scenarios refuses the explain's arguments without explain=True: not ignored."""
    with stub_client() as client, pytest.raises(
            ValueError, match=rf"evaluate=True asks for values only: leave them out \(given: "
                              rf"{given}\)"):
        client.expression("C * x", {"x": [1.0]}, {"C": 2.0}, evaluate=True, **kwargs)


def test_scenarios_without_explain_refuse_a_strategy_too() -> None:
    with stub_client() as client, pytest.raises(
            ValueError, match=r"pass explain=True \(given: strategy\)"):
        client.scenarios("linear", [1.0], {"C": 1.0}, {"C": ("rel", [0.1])},
                         strategy="reverse")


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.5, float("nan"), float("inf"), "5", True])
def test_a_timeout_that_is_not_seconds_above_0_is_refused(timeout: Any) -> None:
    """Before anything is sent, by both clients: httpx took 0 as a timeout that failed every
    connect (a ConnectionFailed after 4 attempts), and refused -1 at the first request in its
    own words ("Timeout value out of range"), naming no argument."""
    message = rf"timeout is {re.escape(repr(timeout))}; give the seconds to wait for an answer"
    transport = httpx.MockTransport(catalogue)
    with pytest.raises(ValueError, match=message):
        dydc.Client("http://stub", timeout=timeout, transport=transport)
    with pytest.raises(ValueError, match=message):
        dydc.AsyncClient("http://stub", timeout=timeout, transport=transport)


@pytest.mark.parametrize("timeout", [None, 0.5, 2, httpx.Timeout(5.0, connect=1.0)])
def test_a_timeout_of_seconds_none_or_httpx_is_still_taken(timeout: Any) -> None:
    """None waits without limit, as in httpx; an httpx.Timeout passes as before."""
    with dydc.Client("http://stub", timeout=timeout,
                     transport=httpx.MockTransport(catalogue)) as client:
        assert client.routine("linear").inputs == ["x"]

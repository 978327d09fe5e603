"""The client's Accept-Encoding: identity over loopback, zstd (or gzip) over a network
(dydc.codings)."""

from __future__ import annotations

import httpx
import pytest
from dydc import Client
from dydc.codings import accept_encoding, is_loopback


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8000", True), ("http://127.9.9.9", True), ("http://[::1]:8000", True),
    ("http://localhost:8000", True), ("http://LOCALHOST", True), ("http://a.localhost", True),
    ("http://10.0.0.5:8000", False), ("https://dydc.example.com", False),
    ("http://[2001:db8::1]", False), ("http://localhost.example.com", False),
    # forms the resolver takes for this machine too
    ("http://localhost.:8000", True), ("http://127.1:8000", True),
    ("http://2130706433:8000", True), ("http://[::ffff:127.0.0.1]:8000", True),
    ("http://0.0.0.0:8000", True), ("http://[::]:8000", True),
    ("http://[::ffff:10.0.0.5]", False), ("http://10.1:8000", False),
])
def test_loopback_is_told_from_the_url(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback
    assert accept_encoding(url) == ("identity" if loopback else "zstd, gzip")


@pytest.mark.parametrize(("url", "expected"), [("http://127.0.0.1:8000", "identity"),
                                               ("http://dydc.internal:8000", "zstd, gzip")])
def test_the_client_sends_it(url: str, expected: str) -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding"))
        return httpx.Response(200, json={"routines": []})

    with Client(url, transport=httpx.MockTransport(answer)) as client:
        client.routines()
    assert seen == [expected]


def test_zstd_is_asked_for_only_where_httpx_decodes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx decodes zstd from 0.27.1 with zstandard installed; 0.27.0, which the client's
    requirement allows, has no zstd in its table of decoders and would hand the raw bytes
    on: gzip is asked for there."""
    import httpx._decoders

    assert accept_encoding("http://dydc.internal") == "zstd, gzip"
    without = {k: v for k, v in httpx._decoders.SUPPORTED_DECODERS.items() if k != "zstd"}
    monkeypatch.setattr(httpx._decoders, "SUPPORTED_DECODERS", without)
    assert accept_encoding("http://dydc.internal") == "gzip"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"url": "not a url"}, "with its scheme"),
    ({"url": "127.0.0.1:8000"}, "with its scheme"),
    ({"url": "ftp://127.0.0.1:8000"}, "with its scheme"),
    ({"url": "http://127.0.0.1:8000", "api_key": "k\n1"}, "a control"),
    ({"url": "http://127.0.0.1:8000", "api_key": "k \u00e9"}, "non-ASCII"),
    ({"url": "http://127.0.0.1:8000", "api_key": "\u043a\u043b\u044e\u0447"}, "non-ASCII"),
])
def test_what_no_request_could_carry_is_refused_at_once(kwargs: dict[str, str],
                                                        needle: str) -> None:
    """A ValueError when the client is made, not four retries reported as a connection
    failure (or a UnicodeEncodeError from deep in httpx)."""
    with pytest.raises(ValueError, match=needle):
        Client(**kwargs)  # type: ignore[arg-type]


def test_a_key_read_with_its_newline_is_sent_without_it() -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"routines": []})

    with Client("http://127.0.0.1:8000", api_key="k1\n",
                transport=httpx.MockTransport(answer)) as client:
        client.routines()
    assert seen == ["Bearer k1"]


@pytest.mark.parametrize(("answer", "needle"), [
    (httpx.Response(200, text="<html>proxy login</html>",
                    headers={"content-type": "text/html"}), "text/html"),
    (httpx.Response(200, json={"routine": "linear"}), "KeyError"),
])
def test_a_success_that_is_not_a_dydc_answer_is_an_api_error(answer: httpx.Response,
                                                            needle: str) -> None:
    """A page from a proxy, or JSON of another shape, answered 200: an ApiError that says so,
    not orjson's or a KeyError from inside the client."""
    import dydc

    with (Client("http://dydc.internal:8000",
                 transport=httpx.MockTransport(lambda request: answer)) as client,
          pytest.raises(dydc.ApiError, match="not a dydc answer") as caught):
        client.sensitivities("linear", [1.0, 2.0], {"C": 1.0})
    assert caught.value.status == 200 and needle in caught.value.detail

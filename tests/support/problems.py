"""v1's errors: application/problem+json (RFC 9457) that says what to change."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["assert_problem"]


def assert_problem(r: httpx.Response, status: int, *needles: str) -> dict[str, object]:
    """``r`` is a problem of ``status`` whose detail holds every needle; its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    return body

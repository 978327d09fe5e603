"""The docs in a real headless browser (Debian's chromium, driven over the DevTools
protocol): the page renders from the service's own assets, shows "dy/d<param>", and "Try it
out" on the sensitivities route returns 200. Skipped without chromium
(``apt-get install chromium``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support import free_port, server_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install "
                                 "chromium)")]

# Open the sensitivities operation, press "Try it out", then "Execute": the routine and the
# body are the first of each list (the same routine), as a visitor would leave them.
TRY_IT_OUT = """
(async () => {
  const wait = (ms) => new Promise(r => setTimeout(r, ms));
  const find = async (sel, root = document) => {
    for (let i = 0; i < 200; i++) { const e = root.querySelector(sel); if (e) return e;
                                    await wait(50); }
    throw new Error("not found: " + sel);
  };
  const op = await find('[id$="sensitivities_post"]');
  (await find('.opblock-summary-control', op)).click();
  (await find('.try-out__btn', op)).click();
  (await find('.execute', op)).click();
  const status = await find('.live-responses-table tbody .response-col_status', op);
  return status.textContent.trim();
})()
"""


class DevTools:
    """Just enough of the DevTools protocol: one page, Runtime.evaluate."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True, timeout=30_000)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


@contextmanager
def chromium_page(url: str) -> Iterator[DevTools]:
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=1).json()
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (httpx.HTTPError, StopIteration):
                    assert time.monotonic() < deadline, "chromium did not start"
                    time.sleep(0.2)
            from websockets.sync.client import connect

            with connect(page["webSocketDebuggerUrl"], max_size=2**24) as socket:
                tools = DevTools(socket)
                tools.call("Page.enable")
                tools.call("Page.navigate", url=url)
                while json.loads(socket.recv(timeout=60)).get("method") != \
                        "Page.loadEventFired":
                    pass
                yield tools
        finally:
            proc.terminate()
            proc.wait(10)


def test_docs_render_offline_and_try_it_out_works() -> None:
    port = free_port()
    env = {**os.environ, "DYDC_PORT": str(port), "DYDC_DEVICE": "cpu", "DYDC_COMPILE": "false"}
    with server_process([sys.executable, "-m", "app"], env, port) as server, \
            chromium_page(f"{server.url}/docs") as page:
        page.evaluate("""new Promise((ok, fail) => { let i = 0; const t = setInterval(() => {
            if (document.querySelector('.opblock')) { clearInterval(t); ok(true); }
            if (++i > 300) { clearInterval(t); fail(new Error('no operations rendered')); }
        }, 50); })""")
        assert page.evaluate(TRY_IT_OUT) == "200"
        text = page.evaluate("document.body.innerText")  # the operation is open now
        assert "/v1/routines/{name}/sensitivities" in text
        assert "Values and dy/d<param> for every sample" in text  # escaped, rendered whole
        resources = page.evaluate(
            "performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(r.startswith(server.url) for r in resources), resources
        log = server.output()
    assert "POST /v1/routines/black_scholes_call/sensitivities" in log

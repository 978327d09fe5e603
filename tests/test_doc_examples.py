"""Every curl example of README.md and docs/*.md, run against a live service as a reader would
paste it: read from the files (never copied here), sent as curl would send it (``-d`` without
a Content-Type header is a form, as curl sends it), answered below 400, and where the doc
shows the answer (a console block's output after ``$ curl``, or a ``# -> ...`` line after a
command) with the numbers the doc shows, in order (``...`` elides; ``timing_ms`` varies).

A code block that cannot run here (it needs API keys, a file made by an earlier step, a
shell variable) is marked by the line ``<!-- doc-test: skip (why) -->`` right before its
fence: invisible on the rendered page.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\b")
DOC_URL = "http://127.0.0.1:8000"
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_TIMING = re.compile(r'"timing_ms":\{[^}]*\}')


@dataclass(frozen=True)
class Example:
    where: str  # file:line
    argv: list[str]  # curl's arguments, the pipe's tail left out
    shown: str  # the answer as the doc shows it ("" if it shows none)


def _command(lines: list[str], start: int) -> tuple[str, int]:
    """The command that starts at ``lines[start]``: continued by a trailing backslash or by
    an open quote; and the index of the line after it."""
    text, i = "", start
    while i < len(lines):
        line = lines[i].removeprefix("$ ") if i == start else lines[i]
        text += line + "\n"
        i += 1
        if line.rstrip().endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # a quote still open
            continue
        break
    return text, i


def _examples_in(path: Path, root: Path = ROOT) -> list[Example]:
    found: list[Example] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence or fence.group(2) not in ("bash", "console", "sh", "shell"):
            i += 1
            continue
        skipped = i > 0 and SKIP.search(lines[i - 1]) is not None
        console = fence.group(2) == "console"
        end = next(j for j in range(i + 1, len(lines)) if _FENCE.match(lines[j]))
        block = [line.removeprefix(fence.group(1)) for line in lines[i + 1 : end]]
        k = 0
        while k < len(block):
            line = block[k].strip()
            if not (line.startswith("curl ") or (console and line.startswith("$ curl "))):
                k += 1
                continue
            text, after = _command([b.strip() for b in block], k)
            shown = []
            while after < len(block) and (
                (console and not block[after].startswith("$ ") and block[after].strip())
                or block[after].strip().startswith("# -> ")
            ):
                shown.append(block[after].strip().removeprefix("# -> "))
                after += 1
            argv = shlex.split(text.replace("\\\n", " "), comments=True)
            argv = argv[: argv.index("|")] if "|" in argv else argv
            if not skipped:
                found.append(
                    Example(f"{path.relative_to(root)}:{i + 2 + k}", argv[1:], "\n".join(shown))
                )
            k = after
        i = end + 1
    return found


EXAMPLES = [e for path in DOCS for e in _examples_in(path)]


def _request(argv: list[str], url: str) -> httpx.Request:
    """What curl would send for ``argv`` (the options these docs use)."""
    method, headers, data, target = None, {}, None, None
    args = iter(argv)
    for arg in args:
        if arg in ("-X", "--request"):
            method = next(args)
        elif arg in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data", "--data-raw", "--data-binary"):
            data = next(args)
            assert not data.startswith("@"), "a body from a file: mark the block doc-test: skip"
        elif arg in ("-s", "--silent", "-i", "--compressed", "-f", "--fail"):
            pass
        elif arg.startswith("http"):
            target = arg
        else:
            raise AssertionError(
                f"curl option {arg!r}: teach tests/test_doc_examples.py, or "
                "mark the block doc-test: skip"
            )
    assert target is not None and target.startswith(DOC_URL), target
    assert "$" not in " ".join(argv), "a shell variable: mark the block doc-test: skip"
    if data is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")  # as curl does
    return httpx.Request(
        method or ("POST" if data is not None else "GET"),
        url + target.removeprefix(DOC_URL),
        headers=headers,
        content=None if data is None else data.encode(),
    )


def numbers(text: str) -> list[str]:
    """The numbers of a JSON text as written, strings and timings left out."""
    return _NUMBER.findall(_STRING.sub('""', _TIMING.sub("", text)))


def _same(shown: str, answered: str) -> bool:
    """The doc's number and the service's agree to the last few bits: the last digit of a
    float64 may differ between a launch's vectorised and scalar loops (a sample's neighbours
    in its batch decide which), so 1e-12 relative, not the text; and 1e-13 absolute, for a
    small difference of two numbers near 1 (an unexplained P&L), which keeps their rounding."""
    return shown == answered or math.isclose(
        float(shown), float(answered), rel_tol=1e-12, abs_tol=1e-13
    )


def _in_order(shown: list[str], answered: list[str]) -> bool:
    remaining = iter(answered)
    return all(any(_same(n, a) for a in remaining) for n in shown)


def test_the_examples_are_found() -> None:
    """The extractor sees the examples these docs have (so that the test below is no
    vacuous pass), multi-line ones included."""
    where = {e.where.split(":")[0] for e in EXAMPLES}
    assert {"README.md", "docs/v2.md"} <= where
    assert len(EXAMPLES) >= 10
    greeks = [e for e in EXAMPLES if "cross" in " ".join(e.argv)]
    assert greeks and "second_derivatives" in greeks[0].shown


def test_numbers_match_in_order_to_the_last_bits() -> None:
    """The last digits may differ (a batch's vectorised loop rounds otherwise); a number off
    in its twelfth digit, or out of order, does not match."""
    assert _in_order(["5.852750567800882", "3"], ["1", "5.852750567800854", "3"])
    assert not _in_order(["5.852750567800882"], ["5.852750567900882"])
    assert not _in_order(["3", "5.852750567800882"], ["5.852750567800882", "3"])


def test_a_marked_block_is_skipped(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- doc-test: skip (needs a key) -->\n```bash\ncurl -s http://x\n```\n\n"
        "```console\n$ curl -s -X POST http://127.0.0.1:8000/a \\\n"
        '    -d \'{"a":\n 1}\'\n{"b": 2}\n```\n'
    )
    (only,) = _examples_in(page, tmp_path)
    assert only.argv == ["-s", "-X", "POST", "http://127.0.0.1:8000/a", "-d", '{"a":\n1}']
    assert only.shown == '{"b": 2}'
    request = _request(only.argv, "http://h")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_doc_example(dydc_url: str, example: Example) -> None:
    with httpx.Client(timeout=60) as client:
        response = client.send(_request(example.argv, dydc_url))
    assert response.status_code < 400, (example.where, response.status_code, response.text)
    shown = numbers(example.shown)
    if shown:
        assert _in_order(shown, numbers(response.text)), (
            example.where,
            example.shown,
            response.text[:2000],
        )

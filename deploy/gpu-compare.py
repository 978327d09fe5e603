"""Compare two dydc servers routine by routine: one sensitivities request per routine to each,
values and derivatives equal within tolerance, and the first one on the expected device.

Standard library only, so that it runs with any Python 3.11, the image's included:
    python deploy/gpu-compare.py --test http://127.0.0.1:18000 \\
        --reference http://127.0.0.1:18001 --expect-device cuda
deploy/gpu-check.sh runs it with a GPU container as --test and a CPU container as --reference;
tests/test_deploy_image.py runs it against one CPU server.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.request
from typing import Any


def call(base: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base.rstrip("/") + path, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def inputs_for(routine: dict[str, Any], n: int) -> list[Any]:
    """n rows of positive inputs in [0.5, 2]: inside every routine's domain (times, prices,
    populations, shapes)."""
    d = len(routine["inputs"])
    rows = [[0.5 + 0.25 * ((i + j) % 7) for j in range(d)] for i in range(n)]
    return [row[0] for row in rows] if d == 1 else rows


def largest_difference(a: Any, b: Any, rtol: float, atol: float) -> float:
    """The largest |a - b| - rtol * |b| over nested lists (inf where shapes differ)."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((largest_difference(x, y, rtol, atol)
                    for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, list) or isinstance(b, list):
        return math.inf
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return float(abs(a - b) - rtol * abs(b) - atol)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", required=True, help="base URL of the server under test")
    parser.add_argument("--reference", required=True, help="base URL of the reference server")
    parser.add_argument("--expect-device", default="cuda",
                        help="device type the server under test must report (default cuda)")
    parser.add_argument("-n", type=int, default=64, help="samples per request")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-9)
    args = parser.parse_args(argv)

    ready = call(args.test, "/readyz")
    print(f"test: {args.test} ready on {ready['device']}; reference: {args.reference} ready on "
          f"{call(args.reference, '/readyz')['device']}")
    failures = 0
    for routine in call(args.test, "/v1/routines")["routines"]:
        name = routine["name"]
        body = {"inputs": inputs_for(routine, args.n), "dtype": "float64"}
        got = call(args.test, f"/v1/routines/{name}/sensitivities", body)
        want = call(args.reference, f"/v1/routines/{name}/sensitivities", body)
        problems = []
        if not got["device"].startswith(args.expect_device):
            problems.append(f"ran on {got['device']}, not {args.expect_device}")
        if set(got["derivatives"]) != set(want["derivatives"]):
            problems.append(f"derivatives {sorted(got['derivatives'])} != "
                            f"{sorted(want['derivatives'])}")
        excess = max([largest_difference(got["values"], want["values"], args.rtol, args.atol)]
                     + [largest_difference(got["derivatives"][p], want["derivatives"][p],
                                           args.rtol, args.atol)
                        for p in got["derivatives"] if p in want["derivatives"]])
        if excess > 0:
            problems.append(f"differs from the reference beyond rtol={args.rtol}, "
                            f"atol={args.atol} (by {excess:.3g})")
        failures += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {name:<20} {got['strategy']:<16} "
              f"{got['device']:<8} {'; '.join(problems)}")
    print(f"{failures} routine(s) failed" if failures else "every routine matches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Load benchmark: dynamic batching on and off, beside a bare FastAPI endpoint.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_load.py

For each configuration it starts a real uvicorn subprocess on 127.0.0.1 (a free port,
``--no-access-log``, DYDC_DEVICE=cpu, DYDC_TORCH_THREADS=1), waits for /readyz, and drives it
with ``wrk`` (a C load generator in its own process; ``apt-get install wrk``) at concurrencies
1, 4, 16, 64 and 256 (one connection per concurrent request). Every request is a small one
(16 samples) with its own parameter value: a Lua script writes a distinct body per request.

Configurations:
- ``on``: the service with its default settings (dynamic batching on);
- ``off``: DYDC_MAX_BATCH_SAMPLES=16 (every launch is a single 16-sample request);
- ``bare``: bench/bare_app.py, same route, same server stack, JSON in and JSON out of the same
  size, no compute: the framework's own limit;
- ``auth``: ``on`` with API keys (DYDC_API_KEYS): every request's key checked (app.http.auth);
- ``echo``: issue 20's five-line FastAPI app (bench/echo_app.py) that answers the body it was
  sent: the same request bytes posted to ``/echo``;
- ``defaults``: the service with its default settings (access log on, torch's own thread
  count), as ``python -m uvicorn app.main:app`` runs it;
- ``logs``: ``defaults`` with API keys and JSON access logs (DYDC_LOG_FORMAT=json);
- ``eager``: ``defaults`` with DYDC_COMPILE_HOT_LAUNCHES=0 (small launches never compiled).

The service configurations run small launches of a hot kind through its compiled graph once
it is built: build it first (a run of the benchmark leaves it in the compile cache directory,
~/.cache/dydc), and warm each point long enough for the kind to turn hot (``--warm 3``).

Issue 20 compares ``defaults`` and ``logs`` with ``echo`` at c=64:

    .venv/bin/python bench/bench_load.py --configs defaults,logs,on,bare,echo \
        --routines linear --concurrencies 64 --out load_echo

``--before DIR`` also runs each service configuration from DIR, a git worktree of an earlier
commit (``git worktree add /tmp/before <commit>``), as ``NAME@before`` in the same rounds: a
redesign's before and after measured in one run.

Every configuration gets the same ``Authorization: Bearer`` header, and none writes an access
log (DYDC_ACCESS_LOG=false, as ``--no-access-log`` for uvicorn's), so that the only difference
between ``on`` and ``auth`` is the key check. ``--configs on,auth --routines linear --out
load_auth`` measures just that (bench/results/load_auth.md).

Per point: requests/s, p50 and p99 latency (wrk's), samples/s, and mean requests per launch
(from /metrics: the increase of dydc_batch_requests_sum over that of dydc_batch_requests_count
between a scrape before and one after the point). Writes bench/results/load.md, load.json and
load.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
N_SAMPLES = 16
ROUTINES = ("black_scholes_call", "linear")
CONCURRENCIES = (1, 4, 16, 64, 256)
BENCH_KEY = "bench-key-6f1d0c2a9e7b4f35"
LABELS = {"on": "on", "off": "off", "bare": "bare endpoint", "auth": "on, API key checked",
          "echo": "five-line echo", "defaults": "default settings",
          "logs": "defaults, API key, JSON access log",
          "eager": "default settings, small launches eager"}
BEFORE = "@before"  # a configuration run from the --before tree


def label(config: str) -> str:
    name, _, before = config.partition("@")
    return LABELS[name] + (" (before)" if before else "")


# where each configuration's requests go (the echo answers on /echo only)
PATHS = {"echo": "/echo"}
# settings the other configurations have that the defaults do not
_QUIET = {"DYDC_TORCH_THREADS": "1", "DYDC_ACCESS_LOG": "false"}

# wrk script: a distinct parameter value in every request (thread id and a counter), inputs
# fixed per routine; done() prints one JSON line that the benchmark parses.
LUA = r"""
local threads = {}
local counter = 0
local routine, n = nil, 16
local template = nil

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  routine = args[1]
  n = tonumber(args[2])
  counter = 0
  math.randomseed(1234 + (tid or 0))
  local rows = {}
  if routine == "linear" then
    for i = 1, n do rows[i] = string.format("%.6f", 0.5 + math.random() * 10) end
    template = '{"inputs":[' .. table.concat(rows, ",") .. '],"params":{"C":%.12f},"wrt":["C"]}'
  else
    for i = 1, n do
      rows[i] = string.format("[%.4f,100.0,%.4f]", 80 + 40 * math.random(),
                              0.25 + 1.75 * math.random())
    end
    template = '{"inputs":[' .. table.concat(rows, ",")
               .. '],"params":{"sigma":%.12f,"r":%.12f},"wrt":["sigma","r"]}'
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[3]
end

function request()
  counter = counter + 1
  -- distinct per request and per thread
  local u = ((tid or 0) * 1000003 + counter) % 10000019 / 10000019
  local body
  if routine == "linear" then
    body = string.format(template, -5 + 10 * u)
  else
    body = string.format(template, 0.1 + 0.4 * u, 0.01 + 0.04 * u)
  end
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
    .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass
class Point:
    config: str
    routine: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    samples_per_s: float
    requests_per_launch: float | None
    errors: int
    response_bytes: float  # mean bytes read per request (headers included), from wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A uvicorn subprocess: the service (``app.main:app``) or the bare app."""

    def __init__(self, target: str, env: dict[str, str], log: Path, path: str | None = None,
                 cwd: Path = ROOT):
        self.target = target
        self.cwd = cwd  # the tree it runs from (another one with --before)
        self.path = path  # where requests go, when not the routine's sensitivities
        self.port = free_port()
        self.env = {k: v for k, v in {**os.environ, "DYDC_DEVICE": "cpu",
                                      "DYDC_GRACE_PERIOD_S": "5", "DYDC_LOG_LEVEL": "warning",
                                      **_QUIET, **env}.items() if v}  # "": unset
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "uvicorn", self.target, "--host", "127.0.0.1", "--port",
             str(self.port), "--no-access-log", "--log-level", "warning"],
            cwd=self.cwd, env=self.env, stdout=self._logf, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited with {self.proc.returncode}; "
                                   f"see {self.log}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.target} not ready in 120 s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


_METRIC = re.compile(r"^(dydc_batch_requests_(?:sum|count)) ([0-9.eE+-]+)$", re.M)


def batch_counters(base: str) -> tuple[float, float] | None:
    text = httpx.get(base + "/metrics", timeout=10).text
    found = dict((m.group(1), float(m.group(2))) for m in _METRIC.finditer(text))
    if "dydc_batch_requests_sum" not in found:
        return None
    return found["dydc_batch_requests_sum"], found["dydc_batch_requests_count"]


def wrk(base: str, routine: str, concurrency: int, seconds: float, lua: Path,
        path: str | None = None) -> dict[str, Any]:
    threads = 1 if concurrency <= 64 else 2  # issue 20 measures c=64 with -t1
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{int(seconds)}s", "--timeout", "10s",
           "-s", str(lua), base + (path or f"/v1/routines/{routine}/sensitivities"), "--",
           routine, str(N_SAMPLES), BENCH_KEY]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            return result
    raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")


def check_one(base: str, routine: str, path: str | None = None) -> int:
    """One request by hand: it must be a 200 with 16 values (or inputs, echoed); returns the
    response size."""
    if routine == "linear":
        body = {"inputs": [float(i) for i in range(N_SAMPLES)], "params": {"C": -5.0},
                "wrt": ["C"]}
    else:
        body = {"inputs": [[100.0 + i, 100.0, 1.0] for i in range(N_SAMPLES)],
                "params": {"sigma": 0.2, "r": 0.05}, "wrt": ["sigma", "r"]}
    r = httpx.post(base + (path or f"/v1/routines/{routine}/sensitivities"), json=body,
                   timeout=10, headers={"Authorization": f"Bearer {BENCH_KEY}"})
    r.raise_for_status()
    assert len(r.json()["values" if path is None else "inputs"]) == N_SAMPLES, r.text
    return len(r.content)


def measure(server: Server, routine: str, c: int, seconds: float, warm_s: float,
            lua: Path) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """One wrk run (after a warm-up run when warm_s > 0), and the increase of the batch
    counters over it."""
    if warm_s > 0:
        wrk(server.base, routine, c, warm_s, lua, server.path)  # warm: connections, caches
    before = batch_counters(server.base) if server.path is None else None
    res = wrk(server.base, routine, c, seconds, lua, server.path)
    after = batch_counters(server.base) if server.path is None else None
    delta = None
    if before and after:
        delta = (after[0] - before[0], after[1] - before[1])
    return res, delta


def run_all(configs: dict[str, tuple[str, dict[str, str], Path]], routines: tuple[str, ...],
            seconds: float, warm_s: float, rounds: int, lua: Path,
            logdir: Path, concurrencies: tuple[int, ...] = CONCURRENCIES) -> list[Point]:
    """Every configuration's server runs at once (idle while another is measured); each point
    is measured in ``rounds`` rounds that take the configurations in turn, in a rotating
    order, so that a burst of load from elsewhere on a shared machine falls on all of them
    rather than on whichever happened to be measured then."""
    points = []
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(Server(target, env, logdir / f"server-{name}.log",
                                                    PATHS.get(name), cwd))
                   for name, (target, env, cwd) in configs.items()}
        names = list(servers)
        for routine in routines:
            for server in servers.values():
                check_one(server.base, routine, server.path)
            for c in concurrencies:
                runs: dict[str, list[tuple[dict[str, Any], tuple[float, float] | None]]] = {
                    name: [] for name in names}
                for i in range(rounds):
                    for name in names[i % len(names):] + names[:i % len(names)]:
                        runs[name].append(measure(servers[name], routine, c, seconds,
                                                  warm_s if i == 0 else 0, lua))
                for name in names:
                    points.append(_point(name, routine, c, runs[name]))
                    _print(points[-1])
    return points


def _point(config: str, routine: str, c: int,
           runs: list[tuple[dict[str, Any], tuple[float, float] | None]]) -> Point:
    """All rounds of one point together: requests over seconds, the median of the rounds'
    percentiles, requests per launch from the summed counters."""
    requests = sum(res["requests"] for res, _ in runs)
    secs = sum(res["duration_us"] for res, _ in runs) / 1e6
    errors = sum(res[k] for res, _ in runs
                 for k in ("connect", "read", "write", "status", "timeout"))
    launched = [d for _, d in runs if d is not None]
    per_launch = None
    if launched and sum(d[1] for d in launched) > 0:
        per_launch = sum(d[0] for d in launched) / sum(d[1] for d in launched)
    rps = requests / secs
    return Point(config, routine, c, requests, round(secs, 2), rps,
                 statistics.median(res["p50_us"] for res, _ in runs) / 1e3,
                 statistics.median(res["p99_us"] for res, _ in runs) / 1e3,
                 rps * N_SAMPLES, per_launch, errors,
                 sum(res["bytes"] for res, _ in runs) / requests if requests else 0.0)


def _print(p: Point) -> None:
    rpl = "-" if p.requests_per_launch is None else f"{p.requests_per_launch:.1f}"
    print(f"{p.config:5} {p.routine:19} c={p.concurrency:<4} {p.rps:8.0f} req/s  "
          f"p50 {p.p50_ms:7.2f} ms  p99 {p.p99_ms:7.2f} ms  req/launch {rpl:>5}  "
          f"errors {p.errors}", flush=True)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def write_markdown(points: list[Point], path: Path, command: str,
                   meta: dict[str, Any]) -> str:
    lines = [
        "| routine | batching | concurrency | req/s | p50 ms | p99 ms | samples/s | "
        "req/launch | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        lines.append(
            f"| {p.routine} | {label(p.config)} | {p.concurrency} | {p.rps:,.0f} | "
            f"{p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.samples_per_s:,.0f} | "
            f"{_fmt(p.requests_per_launch, '.1f')} | {p.errors} |"
        )
    table = "\n".join(lines)
    by = {(p.config, p.routine, p.concurrency): p.rps for p in points}
    t = []
    bs_on = by.get(("on", "black_scholes_call", 64))
    bs_off = by.get(("off", "black_scholes_call", 64))
    if bs_on and bs_off:
        ok = bs_on >= 3 * bs_off
        t.append(f"- black_scholes_call at concurrency 64: batching on {bs_on:,.0f} req/s vs off "
                 f"{bs_off:,.0f} req/s = {bs_on / bs_off:.2f}x (target ≥ 3x): "
                 f"{'met' if ok else 'NOT met'}")
    lin, bare = by.get(("on", "linear", 64)), by.get(("bare", "linear", 64))
    if lin and bare:
        ok = lin >= 0.55 * bare
        t.append(f"- linear at concurrency 64: {lin:,.0f} req/s vs bare endpoint {bare:,.0f} "
                 f"req/s = {lin / bare:.2f} (target ≥ 0.55, issue 10): "
                 f"{'met' if ok else 'NOT met'}")
    auth = by.get(("auth", "linear", 64))
    if lin and auth:
        ok = auth >= 0.97 * lin
        t.append(f"- linear at concurrency 64 with API keys on: {auth:,.0f} req/s vs off "
                 f"{lin:,.0f} req/s = {auth / lin:.3f} (target ≥ 0.97): "
                 f"{'met' if ok else 'NOT met'}")
    echo = by.get(("echo", "linear", 64))
    for config, target in (("defaults", 0.7), ("logs", 0.65), ("on", None), ("eager", None),
                           *((f"{c}{BEFORE}", None) for c in ("defaults", "logs", "on"))):
        served = by.get((config, "linear", 64))
        if served and echo:
            met = "met" if target and served >= target * echo else "NOT met"
            verdict = f" (target ≥ {target}, issue 20): {met}" if target else ""
            t.append(f"- linear at concurrency 64, {label(config)}: {served:,.0f} req/s vs the "
                     f"five-line echo {echo:,.0f} req/s = {served / echo:.2f}{verdict}"
                     + (f"; vs the bare endpoint {served / bare:.2f}" if bare else ""))
    doc = (
        "# Load benchmark: dynamic batching\n\n"
        f"Command: `{command}`\n\n"
        f"{meta['when']}, {meta['machine']}; server: one uvicorn process (uvloop, httptools), "
        "DYDC_DEVICE=cpu, DYDC_TORCH_THREADS=1; client: wrk "
        f"(1 thread below concurrency 64, 2 above); per point, {meta['rounds']} rounds of "
        f"{meta['seconds']:g} s that take the configurations in turn (all servers up at "
        f"once), each configuration warmed for {meta['warm_s']:g} s in the first; 16 samples "
        "and a distinct "
        "parameter value per "
        "request. Batching off = DYDC_MAX_BATCH_SAMPLES=16. Mean bytes read per response, headers "
        "included (wrk): "
        f"{meta['sizes']}.\n\n"
        f"{table}\n\n"
        "Targets:\n\n" + "\n".join(t) + "\n"
    )
    path.write_text(doc)
    return table + "\n\n" + "\n".join(t)


def plot(points: list[Point], path: Path) -> None:
    from plots import pyplot  # (a script: bench/ is on its path)

    plt = pyplot()
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(8, 5))
    style = {"on": "-o", "off": "--s", "bare": ":^", "auth": "-.x", "echo": ":v",
             "defaults": "-D", "logs": "-.+", "eager": "--x"}
    for config in style:
        for routine in ROUTINES:
            ps = [p for p in points if p.config == config and p.routine == routine]
            if ps:
                ax.plot([p.concurrency for p in ps], [p.rps for p in ps], style[config],
                        label=f"{routine}, {label(config)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(CONCURRENCIES, [str(c) for c in CONCURRENCIES])
    ax.set_xlabel("concurrency (connections)")
    ax.set_ylabel("requests / s")
    ax.set_title("dydc: 16-sample requests, each with its own parameter value (CPU, 2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=2,
                    help="measured seconds per point and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per point, taking the configurations in turn")
    ap.add_argument("--warm", type=int, default=1, help="warm-up seconds per point")
    ap.add_argument("--configs", default="on,off,bare",
                    help="of " + ", ".join(LABELS))
    ap.add_argument("--concurrencies", default=",".join(map(str, CONCURRENCIES)))
    ap.add_argument("--routines", default=",".join(ROUTINES))
    ap.add_argument("--out", default="load", help="results file stem under bench/results")
    ap.add_argument("--before", type=Path, default=None,
                    help="also run each service configuration from this tree (a git worktree "
                         "of an earlier commit), in the same rounds: NAME@before")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python bench/bench_load.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    configs = {
        "on": ("app.main:app", {}),
        "off": ("app.main:app", {"DYDC_MAX_BATCH_SAMPLES": str(N_SAMPLES),
                                 "DYDC_MAX_QUEUE_SAMPLES": "4000000"}),
        "bare": ("bench.bare_app:app", {}),
        "auth": ("app.main:app", {"DYDC_API_KEYS": BENCH_KEY}),
        "echo": ("bench.echo_app:app", {}),
        "defaults": ("app.main:app", dict.fromkeys(_QUIET, "")),
        "logs": ("app.main:app", {**dict.fromkeys(_QUIET, ""), "DYDC_API_KEYS": BENCH_KEY,
                                  "DYDC_LOG_FORMAT": "json"}),
        "eager": ("app.main:app", {**dict.fromkeys(_QUIET, ""),
                                   "DYDC_COMPILE_HOT_LAUNCHES": "0"}),
    }
    routines = tuple(args.routines.split(","))
    started = time.monotonic()
    points: list[Point] = []
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "dydc.lua"
        lua.write_text(LUA)
        logdir = Path(tmp)
        chosen = {name: (*configs[name], ROOT) for name in args.configs.split(",")}
        if args.before is not None:
            chosen |= {f"{name}{BEFORE}": (*configs[name], args.before.resolve())
                       for name in args.configs.split(",")
                       if configs[name][0] == "app.main:app"}
        try:
            points = run_all(chosen, routines, args.seconds, args.warm, args.rounds, lua,
                             logdir, tuple(int(c) for c in args.concurrencies.split(",")))
        except Exception:
            for log in logdir.glob("server-*.log"):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
    sizes = ", ".join(
        f"{c}/{r} {sum(ps) / len(ps):.0f}" for c in chosen for r in routines
        if (ps := [p.response_bytes for p in points if p.config == c and p.routine == r]))
    meta = {"when": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                       "shared with other jobs (noisy)",
            "seconds": args.seconds, "rounds": args.rounds, "warm_s": args.warm,
            "sizes": sizes}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"meta": meta, "command": command, "points": [asdict(p) for p in points]}, indent=1))
    summary = write_markdown(points, RESULTS / f"{args.out}.md", command, meta)
    plot(points, RESULTS / f"{args.out}.png")
    print(f"\n{summary}\n\nwrote {RESULTS}/{args.out}.md, .json, .png in "
          f"{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

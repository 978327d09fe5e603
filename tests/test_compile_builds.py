"""Builds of compiled forward mode (app.engine.compiled.builds) for routines written the way users
write them, each served compiled and checked against eager forward mode and a closed form; the
verifier reaching its refusal on a patched built graph; the cache directory's mode and owner;
and warm-up filling the cache, which a second start then loads from.

The routines are module-level names here, so the build process finds them by name, as it finds
a user's. Their builds run once for the module, in the build process.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch
from asgi_lifespan import LifespanManager
from torch import Tensor

from app.config import Settings
from app.engine import warm_up
from app.engine.compiled import builds
from app.engine.compiled.builds import (
    Artefact,
    BuildRefused,
    Kind,
    ProcessBuilder,
    Samples,
    kind_of,
)
from app.engine.compiled.cache import (
    CacheDirError,
    prepare_cache_dir,
    use_private_compile_caches,
)
from app.engine.compiled.forward import CompiledForward
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import Executor, run_strategy
from app.main import StartupError, create_app
from routines import Param, Routine, routine
from tests.support import assert_close, needs_cxx

CPU = torch.device("cpu")
N = 200


def _weighted(weights: Tensor) -> Routine:
    """A routine closing over a tensor constant, as a factory makes one."""

    @routine(name="weighted_sawtooth", description="a where branch on the parity of floor(x)",
             params=[Param("a", 1.5, "even slope"), Param("b", 0.5, "odd curvature")],
             inputs=["x"], outputs=["y", "tiny"])
    def weighted_sawtooth(x: Tensor, *, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        whole = torch.floor(x)
        frac = x - whole
        even = torch.remainder(whole, 2) == 0
        y = torch.where(even, a * frac, b * frac * frac) * weights[0]
        return y, 1e-10 * a * frac * weights[1]  # an output of size 1e-10

    return weighted_sawtooth


WEIGHTS = (2.0, 3.0)
weighted_sawtooth = _weighted(torch.tensor(WEIGHTS, dtype=torch.float64))


@routine(description="y = a y + x / (i + 2), 12 times: steps that differ by a constant",
         params=[Param("a", 0.5, "weight")], inputs=["x"])
def series(x: Tensor, *, a: Tensor) -> Tensor:
    y = x
    for i in range(12):
        y = y * a + x / (i + 2)
    return y


@routine(description="y_{k+1} = a y_k + b y_{k-1}, 16 steps: a two-step recurrence",
         params=[Param("a", 0.6, "first lag"), Param("b", 0.3, "second lag")], inputs=["x"])
def two_step(x: Tensor, *, a: Tensor, b: Tensor) -> Tensor:
    before, now = x, a * x
    for _ in range(16):
        before, now = now, a * now + b * before
    return now


@routine(description="a x, computed one way for batches of 1,000 or more and another below",
         params=[Param("a", 2.0, "slope")], inputs=["x"], vectorized=True)
def by_batch_size(x: Tensor, *, a: Tensor) -> Tensor:
    if x.shape[0] >= 1000:
        return x * a * (1 + 1e-6)  # a cheaper approximation, say
    return a * x


def inputs(n: int) -> Tensor:
    return torch.linspace(0.3, 5.7, n, dtype=torch.float64)[:, None]


def closed_form(r: Routine, x: Tensor, p: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """Values (N, M) and dy/dp (N, M) by hand, in float64."""
    if r is weighted_sawtooth:
        frac = x - torch.floor(x)
        even = torch.remainder(torch.floor(x), 2) == 0
        w0, w1 = WEIGHTS
        y = torch.where(even, p["a"] * frac, p["b"] * frac**2) * w0
        tiny = 1e-10 * p["a"] * frac * w1
        return torch.cat([y, tiny], 1), {
            "a": torch.cat([torch.where(even, frac, 0.0) * w0, 1e-10 * frac * w1], 1),
            "b": torch.cat([torch.where(even, 0.0, frac**2) * w0, torch.zeros_like(x)], 1)}
    if r is series:  # d/da of the recurrence, step by step
        y, dy = x.clone(), torch.zeros_like(x)
        for i in range(12):
            dy = dy * p["a"] + y
            y = y * p["a"] + x / (i + 2)
        return y, {"a": dy}
    if r is two_step:
        a, b = p["a"], p["b"]
        before, now = x, a * x
        d_before = {"a": torch.zeros_like(x), "b": torch.zeros_like(x)}
        d_now = {"a": x.clone(), "b": torch.zeros_like(x)}
        for _ in range(16):
            d_next = {"a": now + a * d_now["a"] + b * d_before["a"],
                      "b": a * d_now["b"] + before + b * d_before["b"]}
            before, now, d_before, d_now = now, a * now + b * before, d_now, d_next
        return now, d_now
    assert r is by_batch_size
    factor = 1 + 1e-6 if len(x) >= 1000 else 1.0
    return p["a"] * x * factor, {"a": x * factor}


def problem(r: Routine, n: int, dtype: torch.dtype = torch.float64) -> Problem:
    params = {q.name: torch.tensor(q.default, dtype=dtype) for q in r.params}
    return Problem(r, inputs(n).to(dtype), params, r.param_names)


USER_ROUTINES = (weighted_sawtooth, series, two_step)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledForward]:
    if shutil.which("g++") is None:
        pytest.skip("compiled forward mode needs a C++ compiler")
    compiled = CompiledForward(chunk=1 << 20, min_samples=2,
                               cache_dir=tmp_path_factory.mktemp("builds"))
    for r in (*USER_ROUTINES, by_batch_size):
        compiled.request(problem(r, N))
    assert compiled.settle(600)
    compiled.swap_in(CPU)
    yield compiled
    compiled.close()


@needs_cxx
@pytest.mark.parametrize("r", USER_ROUTINES, ids=lambda r: r.name)
def test_user_routines_compiled_match_eager_and_the_closed_form(
        built: CompiledForward, r: Routine) -> None:
    assert built.refused(problem(r, N)) is None
    for n in (2, 77, 1500):
        p = problem(r, n)
        result = built.run(p)
        assert result is not None, r.name
        eager, _ = differentiate(p, "forward")
        values, derivs = closed_form(r, p.inputs, {q.name: q.default for q in r.params})
        assert_close(result.values, eager.values, rtol=1e-12, atol=1e-300)
        assert_close(result.values, values, rtol=1e-12, atol=1e-300)
        for name in p.wrt:
            assert_close(result.derivatives[name], eager.derivatives[name], rtol=1e-12,
                         atol=1e-300)
            assert_close(result.derivatives[name], derivs[name], rtol=1e-12, atol=1e-300)


@needs_cxx
def test_a_cpu_graphs_loops_run_in_parallel_regions_sized_at_run_time(
        built: CompiledForward) -> None:
    """Every CPU kernel of every package is an OpenMP parallel region whose thread count the
    device worker's thread gives at run time, not the build process's single thread (with
    which Inductor wrote serial loops: one core for every graph)."""
    assert isinstance(built.builder, ProcessBuilder)
    packages = sorted(built.builder.cache_dir.glob("*.pt2"))
    assert packages
    for package in packages:
        with zipfile.ZipFile(package) as z:
            kernels = [z.read(n).decode() for n in z.namelist() if n.endswith("kernel.cpp")]
        assert kernels, package.name
        for source in kernels:
            assert "#pragma omp parallel" in source and "num_threads(" not in source, package


@needs_cxx
def test_the_two_step_recurrence_is_rolled(built: CompiledForward) -> None:
    artefact = built.catalogue.artefacts[kind_of(problem(two_step, N))]
    assert artefact.rolled is not None and artefact.rolled.loop.count >= 8


@needs_cxx
def test_a_branch_on_the_batch_size_is_not_served_compiled(built: CompiledForward) -> None:
    """Traced at one batch size, the branch would be taken for all: the build is refused, and
    each N gets its own branch, eagerly."""
    assert built.refused(problem(by_batch_size, N)) in ("compile", "verification")
    for n in (200, 1000):
        p = problem(by_batch_size, n)
        assert built.run(p) is None
        result, _ = run_strategy(p, "auto", built)
        values, derivs = closed_form(by_batch_size, p.inputs, {"a": 2.0})
        assert_close(result.values, values, rtol=1e-15)
        assert_close(result.derivatives["a"], derivs["a"], rtol=1e-15)


@needs_cxx
def test_the_verifier_refuses_a_patched_built_graph_at_the_scale_of_1e_10(
        built: CompiledForward, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built package (not the trace) is patched: its 1e-10 output 50% off. A single
    absolute tolerance of 1e-9 let that through; the per-output check refuses it."""
    p = problem(weighted_sawtooth, N)
    artefact = built.catalogue.artefacts[kind_of(p)]
    monkeypatch.setattr(builds, "_package",  # the package already built, not compiled again
                        lambda gm, args, path: shutil.copy(built.cache_dir / artefact.package,
                                                           path))
    real_load = builds.load

    def patched_load(a: Artefact, cache_dir: Path, device: torch.device) -> builds.Graph:
        graph = real_load(a, cache_dir, device)

        def call(cols: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
            values, *tangents = graph(cols, params)
            return (torch.stack([values[:, 0], values[:, 1] * 1.5], 1), *tangents)

        return call

    monkeypatch.setattr(builds, "load", patched_load)
    with pytest.raises(BuildRefused, match=r"values\[:, 1\]") as refused:
        builds.build(kind_of(p), Samples.of(p), tmp_path, weighted_sawtooth)
    assert refused.value.reason == "verification"
    assert not [f for f in tmp_path.iterdir() if f.is_file()]  # nothing stored


def test_the_cache_directory_is_created_private(tmp_path: Path) -> None:
    path = prepare_cache_dir(tmp_path / "a" / "cache")
    assert path.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_uid == os.geteuid()
    assert prepare_cache_dir(path) == path  # and accepted as it is


def test_a_cache_directory_others_can_reach_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(CacheDirError, match="chmod 700"):
        prepare_cache_dir(shared)
    link = tmp_path / "link"
    link.symlink_to(prepare_cache_dir(tmp_path / "ours"))
    with pytest.raises(CacheDirError, match="symbolic link"):
        prepare_cache_dir(link)


def test_a_cache_directory_inside_a_folder_others_can_write_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its parent's owner (or anyone, where the parent is writable by others and not sticky)
    could rename it and put a folder of theirs in its place after the check."""
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    with pytest.raises(CacheDirError, match="chmod go-w"):
        prepare_cache_dir(open_parent / "cache")
    sticky = tmp_path / "sticky"  # as /tmp: others cannot rename what is ours
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert prepare_cache_dir(sticky / "cache") == sticky / "cache"
    theirs = tmp_path / "theirs"
    path = prepare_cache_dir(theirs / "cache")
    uid = theirs.stat().st_uid
    real_stat = Path.stat

    def as_if_another_owned_it(self: Path, **kwargs: Any) -> os.stat_result:
        info = real_stat(self, **kwargs)
        if self == theirs:
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev, info.st_nlink,
                                   uid + 1, *tuple(info)[5:10]))
        return info

    monkeypatch.setattr(Path, "stat", as_if_another_owned_it)
    with pytest.raises(CacheDirError, match=f"inside {theirs}, owned by uid {uid + 1}"):
        prepare_cache_dir(path)


def test_torchs_compile_caches_go_inside_the_cache_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, or holding torch's shared default (which torch writes into the environment at
    its first compile, and a build process inherited): inside the cache directory. An
    operator's own choice stands."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", torch_default())
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    use_private_compile_caches(tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/srv/operators/choice")
    use_private_compile_caches(tmp_path / "other")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/srv/operators/choice"


def test_a_cache_directory_of_another_user_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = prepare_cache_dir(tmp_path / "cache")
    monkeypatch.setattr(os, "geteuid", lambda: path.stat().st_uid + 1)  # as if another's
    with pytest.raises(CacheDirError, match="owned by uid"):
        prepare_cache_dir(path)


@pytest.mark.anyio
async def test_the_service_will_not_start_on_an_unsafe_cache_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    app = create_app(Settings(device="cpu", compile_cache_dir=shared))
    with pytest.raises(StartupError, match=r"cannot start: DYDC_COMPILE_CACHE_DIR=.* mode 0777"):
        async with LifespanManager(app):  # (said in one line, as a bad setting is)
            pass


class CountingBuilder(ProcessBuilder):
    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir)
        self.submitted: list[Kind] = []

    def submit(self, kind: Kind, samples: Samples, routine: Routine) -> Future[Artefact]:
        self.submitted.append(kind)
        return super().submit(kind, samples, routine)


@needs_cxx
def test_warm_up_fills_the_cache_and_a_second_start_loads_from_it(
        built: CompiledForward, tmp_path: Path) -> None:
    """Warm-up builds every routine's kind in each dtype at order 1 and 2 (here one routine;
    its float64 kind at order 1 is already in the directory, from the module's builds, so
    three builds), and a second start finds them all there."""
    routines = {"series": series}
    cache = prepare_cache_dir(tmp_path / "cache")
    for f in built.cache_dir.glob("series-float64-*"):
        shutil.copy(f, cache / f.name)
    for start in ("cold", "warm"):
        builder = CountingBuilder(cache)
        compiled = CompiledForward(chunk=1 << 20, min_samples=64, builder=builder)
        try:
            warm_up(routines, Executor(CPU, compiled=compiled), compile=True)
            # started before ready, warm start too: no large request meets its start later
            assert builder.process() is not None, start
        finally:
            compiled.close()
        for dtype in (torch.float64, torch.float32):  # ready before warm-up returns
            for order in (1, 2):
                assert compiled.compiled(series, ("a",), dtype, order=order), \
                    (start, dtype, order)
        submitted = [(k.dtype, k.order) for k in builder.submitted]
        assert sorted(submitted) == ([("float32", 1), ("float32", 2), ("float64", 2)]
                                     if start == "cold" else [])
        assert len(list(cache.glob("series-*.pt2"))) == 4


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_build_process_takes_only_idle_cpu_when_asked(tmp_path: Path) -> None:
    """DYDC_COMPILE_BUILD_IDLE (the service's default): the build process runs at SCHED_IDLE
    beside its niceness; without it, at its niceness alone."""
    for idle in (True, False):
        builder = ProcessBuilder(tmp_path, niceness=7, idle=idle)
        try:
            policy = builder.pool().submit(os.sched_getscheduler, 0).result(timeout=120)
            nice = builder.pool().submit(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=5)
        finally:
            builder.close()
        assert policy == (os.SCHED_IDLE if idle else os.SCHED_OTHER), idle
        assert nice >= 7


def test_inputs_that_are_columns_seen_transposed_reach_a_graph_without_a_copy() -> None:
    """A scenarios job's inputs are columns (D, N) seen as (N, D): the whole launch takes
    them as they are; a slice of them, and ordinary rows, are stacked into columns."""
    cols = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    p = Problem(weighted_sawtooth, cols.t(), {"a": torch.tensor(1.5), "b": torch.tensor(0.5)},
                ("a",))
    whole, _ = builds.columns(p, slice(0, 4))
    assert whole.data_ptr() == cols.data_ptr() and whole.is_contiguous()
    part, _ = builds.columns(p, slice(1, 3))
    assert part.is_contiguous() and torch.equal(part, cols[:, 1:3])
    rows = Problem(weighted_sawtooth, cols.t().contiguous(), p.params, ("a",))
    stacked, _ = builds.columns(rows, slice(0, 4))
    assert stacked.is_contiguous() and torch.equal(stacked, cols)


@pytest.mark.parametrize("content", [pickle.dumps(7), b"\x80\x04truncated"],
                         ids=["another object", "truncated"])
def test_an_artefact_file_that_is_not_one_is_built_again(
        tmp_path: Path, content: bytes) -> None:
    """Whatever the file holds, the kind is built again rather than the request failing (an
    object of another type had reached the launch: a 422 naming the service's own fault)."""
    p = problem(weighted_sawtooth, N)
    kind = kind_of(p)
    (tmp_path / f"{builds._identity(kind, weighted_sawtooth)}.artefact").write_bytes(content)
    assert builds.cached(kind, weighted_sawtooth, tmp_path) is None

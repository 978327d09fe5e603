"""The Meta kernels that size forward mode's zero tangents (app.engine.differentiation.
zero_tangents): the same answer as the reference kernels they stand in front of, the
reference's answer wherever the case is not plain, and reached by forward mode through a
constant."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp

from app.engine.differentiation import zero_tangents
from app.engine.differentiation.zero_tangents import OPERATORS, plain_shape

META = torch.device("meta")
SHAPES = [((5,), (5,)), ((5,), ()), ((), (5,)), ((4, 1), (1, 3)), ((2, 3), (3,)), ((0,), ()),
          ((4, 3), (4, 3))]


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    zero_tangents.install()
    zero_tangents.install()  # twice is once
    assert zero_tangents.installed()


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("left", "right"), SHAPES)
def test_the_plain_case_is_answered_as_the_reference_answers(
        name: str, dtype: torch.dtype, left: tuple[int, ...], right: tuple[int, ...]) -> None:
    a = torch.empty(left, dtype=dtype, device=META)
    b = torch.empty(right, dtype=dtype, device=META)
    assert plain_shape(a, b) is not None
    ours = zero_tangents._kernel(name)(a, b)
    theirs = zero_tangents._reference(name)(a, b)
    assert (ours.shape, ours.dtype, ours.stride(), ours.device) == \
        (theirs.shape, theirs.dtype, theirs.stride(), theirs.device)
    through = getattr(torch.ops.aten, name.split(".")[0]).Tensor(a, b)  # the dispatcher's
    assert (through.shape, through.dtype, through.stride()) == (ours.shape, ours.dtype,
                                                                 ours.stride())


def test_what_is_not_plain_goes_to_the_reference() -> None:
    f64 = torch.empty(3, dtype=torch.float64, device=META)
    strided = torch.empty(3, 4, dtype=torch.float64, device=META).t()
    assert plain_shape(f64, torch.empty(3, dtype=torch.float32, device=META)) is None
    assert plain_shape(torch.empty(3, dtype=torch.int64, device=META),
                       torch.empty(3, dtype=torch.int64, device=META)) is None
    assert plain_shape(strided, torch.empty(4, 3, dtype=torch.float64, device=META)) is None
    assert plain_shape(f64, 2.0) is None
    # integer division answers in floating point: the reference's answer, not the inputs' dtype
    ints = torch.empty(3, dtype=torch.int64, device=META)
    assert torch.ops.aten.div.Tensor(ints, ints).dtype == torch.get_default_dtype()
    out = torch.ops.aten.mul.Tensor(strided, torch.empty(4, 3, dtype=torch.float64, device=META))
    assert out.shape == (4, 3)


def test_forward_mode_through_a_constant_reaches_the_kernel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """x * K and x / K + 0.5 with K and 0.5 tangent-free: their zero tangents are sized by the
    plain case, and the derivative is the closed form's."""
    answered: list[list[int] | None] = []

    def counting(a: object, b: object) -> list[int] | None:
        shape = plain_shape(a, b)
        answered.append(shape)
        return shape

    monkeypatch.setattr(zero_tangents, "plain_shape", counting)
    x = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    k = torch.tensor(3.0, dtype=torch.float64)
    values, tangent = jvp(lambda x: x * k + x / k + 0.5, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(values, x * 3 + x / 3 + 0.5, rtol=1e-15, atol=0)
    torch.testing.assert_close(tangent, torch.full_like(x, 3 + 1 / 3), rtol=1e-15, atol=0)
    assert [s for s in answered if s is not None], answered
    assert all(s == [6] for s in answered if s is not None)

import pytest

from sparse_transfer.core.schedules import gmp_is_update_step, gmp_sparsity, rewind_lr_factor


@pytest.mark.parametrize("step", [0, 10, 37, 55, 99, 100, 150])
def test_gmp_sparsity_follows_the_cubic_formula(step):
    si, sf, t0, t1 = 0.1, 0.9, 10, 100
    expected = si if step < t0 else sf if step >= t1 else sf + (si - sf) * (1 - (step - t0) / (t1 - t0)) ** 3
    assert gmp_sparsity(step, si, sf, t0, t1) == pytest.approx(expected)


def test_gmp_sparsity_is_monotone_and_reaches_the_target():
    values = [gmp_sparsity(t, 0.0, 0.9, 0, 50) for t in range(60)]
    assert values[0] == 0.0 and values[-1] == 0.9
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_gmp_update_steps():
    assert [t for t in range(30) if gmp_is_update_step(t, 5, 20, 5)] == [5, 10, 15, 20]
    with pytest.raises(ValueError, match="interval"):
        gmp_is_update_step(0, 0, 10, 0)
    with pytest.raises(ValueError, match="before its start"):
        gmp_sparsity(0, 0.0, 0.9, 10, 5)


def test_rewind_lr_factor_decays_linearly_and_rewinds():
    factors = [rewind_lr_factor(t, 4) for t in range(12)]
    assert factors == [1.0, 0.75, 0.5, 0.25] * 3
    assert rewind_lr_factor(2, 4, end_factor=0.5) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        rewind_lr_factor(0, 0)

"""edm.grids: the named noise-level grids, their conventions, sigma(t) and s(t) (docs/edm-compat.md §3)."""
import numpy as np
import pytest
import torch

from edm import grids

# §3.1, step 2 (measured upstream): the EDM grid for N = 18, rho = 7, 0.002..80, to the digits given.
EDM18 = [80, 57.586, 40.786, 28.375, 19.352, 12.910, 8.4009, 5.3152, 3.2568, 1.9233, 1.0882, 0.58535, 0.29644,
         0.13952, 0.059947, 0.022935, 0.0075280, 0.002]


class RangeNet:
    """Just a network's sigma range and a rounding that snaps to two decimals (like iDDPM's snapping to levels)."""
    sigma_min, sigma_max = 0.5, 10.0

    def __init__(self) -> None:
        self.rounded = []

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        self.rounded.append(sigma)
        return torch.round(sigma * 100) / 100


def test_edm_18_step_reference_values():
    sigmas = grids.edm_sigmas(18)
    assert sigmas.dtype == np.float64 and len(sigmas) == 19 and sigmas[-1] == 0
    assert [float(f'{s:.5g}') for s in sigmas[:-1]] == EDM18


def test_edm_grid_is_the_rho_formula_in_float64():
    i = np.arange(18)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    # pow's last bit depends on the CPU's code path and the library evaluating it; three pows and a sum stay within
    # a few ulp of each other on any machine, while a wrong rho, endpoint or index moves these by >> 1e6 ulp.
    np.testing.assert_array_max_ulp(grids.edm_sigmas(18)[:-1], expected, maxulp=4)
    assert np.array_equal(grids.make_sigmas('edm', 18), grids.edm_sigmas(18))


@pytest.mark.parametrize('disc', grids.DISCRETIZATIONS)
@pytest.mark.parametrize('num_steps', [1, 2, 7, 40])
def test_k_levels_then_zero(disc, num_steps):
    sigmas = grids.make_sigmas(disc, num_steps)
    assert isinstance(sigmas, np.ndarray) and sigmas.dtype == np.float64 and sigmas.shape == (num_steps + 1,)
    assert sigmas[-1] == 0 and np.all(sigmas[:-1] > 0) and np.all(np.diff(sigmas) < 0)
    sigma_min, sigma_max = grids.default_sigma_range(disc)
    if disc != 'iddpm':  # iDDPM picks from a fixed set of levels inside the range
        assert sigmas[0] == pytest.approx(sigma_max, rel=1e-12)
        if num_steps > 1:
            assert sigmas[-2] == pytest.approx(sigma_min, rel=1e-12)


def test_one_step_is_sigma_max_then_zero():
    # (80^(1/7))^7: the rounding of 1/7 and two pows of up to 1 ulp each leave at most 1.3e-15 relative.
    assert grids.edm_sigmas(1).tolist() == pytest.approx([80, 0], rel=3e-15)
    assert grids.uniform_sigmas(1, 0.002, 80).tolist() == [80, 0]


def test_sigma_min_zero_gives_k_plus_one_levels_reaching_zero():
    # The paper's 1-D baselines (§1.2): denominator K, the last level is 0 itself.
    assert grids.uniform_sigmas(4, 0, 80).tolist() == [80, 60, 40, 20, 0]
    i = np.arange(5)
    # torch's pow against NumPy's: a few ulp apart on some machines, as in test_edm_grid_is_the_rho_formula_in_float64.
    np.testing.assert_array_max_ulp(grids.edm_sigmas(4, 0, 80), (80 ** (1 / 7) + i / 4 * (0 - 80 ** (1 / 7))) ** 7,
                                    maxulp=4)
    assert grids.edm_sigmas(4, 0, 80)[-1] == 0 and grids.make_sigmas('edm', 4, sigma_min=0).shape == (5,)
    # ... whereas sigma_min > 0 gives K levels down to sigma_min (denominator K - 1), then 0.
    assert grids.uniform_sigmas(3, 20, 80).tolist() == [80, 50, 20, 0]


def test_vp_defaults_and_refitted_betas():
    sigma_min, sigma_max = grids.default_sigma_range('vp')
    assert sigma_min == pytest.approx(0.0104860, abs=5e-8) and sigma_max == pytest.approx(152.167, abs=5e-4)
    assert grids.vp_beta(sigma_min, sigma_max) == pytest.approx((19.9, 0.1), rel=1e-12)
    sigmas = grids.vp_sigmas(7)
    assert sigmas[0] == pytest.approx(sigma_max, rel=1e-12) and sigmas[-2] == pytest.approx(sigma_min, rel=1e-12)
    # Uniform in VP time from 1 down to epsilon_s, also after refitting the betas to another range.
    beta = grids.vp_beta(0.1, 20)
    t = grids.vp_sigma_inv(grids.vp_sigmas(5, 0.1, 20)[:-1], *beta).numpy()
    assert t == pytest.approx(np.linspace(1, 1e-3, 5), abs=1e-12)


def test_ve_and_logsnr_are_geometric():
    ve = grids.ve_sigmas(6)
    assert ve[0] == pytest.approx(100) and ve[-2] == pytest.approx(0.02)
    assert np.diff(np.log(ve[:-1])) == pytest.approx(np.full(5, np.log(0.02 / 100) / 5), rel=1e-12)
    logsnr = grids.logsnr_sigmas(6, 0.002, 80)
    assert logsnr[:-1] == pytest.approx(80 * (0.002 / 80) ** (np.arange(6) / 5), rel=1e-14)
    assert grids.logsnr_sigmas(2) == pytest.approx(grids.edm_sigmas(2), rel=1e-14)  # K = 2: EDM == DPM (§3.3)


def test_iddpm_levels_and_grid():
    u = grids.iddpm_levels()
    assert len(u) == 1001 and u[-1] == 0 and np.all(np.diff(u) < 0)
    assert u[0] == pytest.approx(20291.16, rel=1e-6) and u[-2] == pytest.approx(0.0064225, rel=1e-4)  # §4.1
    kept = u[(u >= 0.002) & (u <= 81)]
    sigmas = grids.iddpm_sigmas(7)
    assert np.isin(sigmas[:-1], kept).all() and sigmas[0] == kept[0] and sigmas[-2] == kept[-1]
    assert np.array_equal(grids.iddpm_sigmas(len(kept))[:-1], kept)  # every level once
    assert np.array_equal(sigmas[:-1], kept[np.round(np.arange(7) * (len(kept) - 1) / 6).astype(int)])


def test_iddpm_levels_agree_with_upstreams_float32_buffer(fixtures_dir):
    # iDDPMPrecond.u of the upstream fixture: the same recursion carried in float32, which loses digits where
    # (u^2 + 1)/r - 1 cancels near u -> 0.
    u32 = np.load(fixtures_dir / 'iddpm_dhariwal_cond.npz')['state.u']
    assert grids.iddpm_levels()[:800] == pytest.approx(u32[:800], rel=3e-6)
    assert grids.iddpm_levels() == pytest.approx(u32, rel=2e-4)


def test_make_sigmas_clamps_to_the_net_and_rounds_all_but_the_last():
    net = RangeNet()
    sigmas = grids.make_sigmas('edm', 5, net=net)
    assert sigmas[0] == 10 and sigmas[-2] == 0.5 and sigmas[-1] == 0
    assert np.array_equal(sigmas[:-1], np.round(grids.edm_sigmas(5, 0.5, 10)[:-1] * 100) / 100)
    assert len(net.rounded) == 1 and net.rounded[0].dtype == torch.float64 and net.rounded[0].shape == (5,)
    assert grids.sigma_range('ve', net=net) == (0.5, 10) and grids.sigma_range('edm', 1, 2, net=net) == (1, 2)


@pytest.mark.parametrize('disc, expected', [('edm', (0.002, 80)), ('ve', (0.02, 100)), ('iddpm', (0.002, 81)),
                                            ('uniform', (0.002, 80)), ('logsnr', (0.002, 80))])
def test_default_ranges(disc, expected):
    assert grids.default_sigma_range(disc) == expected


@pytest.mark.parametrize('call, match', [
    (lambda: grids.make_sigmas('karras', 5), 'edm, vp, ve, iddpm, uniform, logsnr'),
    (lambda: grids.make_sigmas('edm', 0), 'num_steps'),
    (lambda: grids.make_sigmas('edm', 2.5), 'num_steps'),
    (lambda: grids.make_sigmas('edm', True), 'num_steps'),
    (lambda: grids.make_sigmas('edm', grids.MAX_STEPS + 1), r'num_steps must be an integer in \[1, 10000\]'),
    (lambda: grids.edm_sigmas(5, 80, 1), 'sigma_min < sigma_max'),
    (lambda: grids.uniform_sigmas(5, -1, 80), 'sigma_min < sigma_max'),
    (lambda: grids.edm_sigmas(5, 0.002, float('inf')), 'sigma_max < inf'),
    (lambda: grids.make_sigmas('logsnr', 5, sigma_min=0), 'sigma_min > 0'),
    (lambda: grids.make_sigmas('ve', 5, sigma_min=0), 'sigma_min > 0'),
    (lambda: grids.iddpm_sigmas(5, 30.6, 31), 'no iDDPM level'),
    (lambda: grids.make_schedule('cosine'), 'linear, vp, ve'),
    (lambda: grids.make_scaling('ve', grids.make_schedule('ve')), 'none, vp'),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize('name', grids.SCHEDULES)
def test_schedule_derivative_and_inverse(name):
    schedule = grids.make_schedule(name, 17.5, 0.3)
    t = torch.tensor([0.05, 0.3, 0.8, 1.0], dtype=torch.float64)
    h = 1e-6
    fd = (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h)
    assert torch.allclose(schedule.sigma_deriv(t), fd, rtol=1e-8)
    assert torch.allclose(schedule.sigma_inv(schedule.sigma(t)), t, rtol=1e-12)


def test_scalings():
    schedule = grids.make_schedule('vp')
    vp, none = grids.make_scaling('vp', schedule), grids.make_scaling('none', schedule)
    t = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)
    assert torch.allclose(vp.s(t), 1 / (1 + schedule.sigma(t) ** 2).sqrt(), rtol=1e-15)
    h = 1e-6
    assert torch.allclose(vp.s_deriv(t), (vp.s(t + h) - vp.s(t - h)) / (2 * h), rtol=1e-7)
    assert torch.equal(none.s(t), torch.ones_like(t)) and torch.equal(none.s_deriv(t), torch.zeros_like(t))

"""edm.rng.StackedRandomGenerator: per-seed draws, stacked, in upstream's order (docs/edm-compat.md §2)."""
import json

import numpy as np
import pytest
import torch

from conftest import RANDN_FLOAT32_ATOL
from edm.rng import StackedRandomGenerator


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_randn_stacks_per_seed_draws():
    seeds = [0, 1, 7, 123456]
    out = StackedRandomGenerator('cpu', seeds).randn([4, 3, 2, 2])
    assert out.shape == (4, 3, 2, 2) and out.dtype == torch.float32
    for row, seed in zip(out, seeds):
        assert torch.equal(row, torch.randn([3, 2, 2], generator=_gen(seed)))


def test_a_seed_gives_the_same_image_in_any_batch():
    alone = StackedRandomGenerator('cpu', [5]).randn([1, 8])
    assert torch.equal(StackedRandomGenerator('cpu', [9, 5, 2]).randn([3, 8])[1], alone[0])


def test_seed_is_taken_mod_2_pow_32():
    draws = [StackedRandomGenerator('cpu', [seed]).randn([1, 5]) for seed in (7, 2 ** 32 + 7, np.int64(7))]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    minus_one = StackedRandomGenerator('cpu', [-1]).randn([1, 5])[0]
    assert torch.equal(minus_one, torch.randn([5], generator=_gen(2 ** 32 - 1)))


def test_randn_like_continues_each_stream_in_the_dtype_of_its_input():
    rng = StackedRandomGenerator('cpu', [3, 4])
    x = torch.empty([2, 6], dtype=torch.float64)
    first, second = rng.randn_like(x), rng.randn_like(x)
    assert first.dtype == torch.float64 and first.shape == x.shape
    for i, seed in enumerate([3, 4]):
        gen = _gen(seed)
        assert torch.equal(first[i], torch.randn([6], generator=gen, dtype=torch.float64))
        assert torch.equal(second[i], torch.randn([6], generator=gen, dtype=torch.float64))


def test_randint_stacks_per_seed_draws():
    rng = StackedRandomGenerator('cpu', [0, 1, 2])
    labels = rng.randint(10, size=[3])
    assert labels.shape == (3,) and labels.dtype == torch.int64
    assert labels.tolist() == [int(torch.randint(10, size=[], generator=_gen(seed))) for seed in (0, 1, 2)]
    assert rng.randint(2, 5, size=[3, 4]).shape == (3, 4)


@pytest.mark.parametrize('call', [lambda rng: rng.randn([3, 4]), lambda rng: rng.randint(10, size=[1]),
                                  lambda rng: rng.randn([])])
def test_batch_must_match_the_seeds(call):
    with pytest.raises(ValueError, match='number of seeds'):
        call(StackedRandomGenerator('cpu', [0, 1]))


def test_upstream_draw_order_reproduces_the_fixture(fixtures_dir):
    # generate.py's order: latents [B, C, R, R] first, then one class index per seed.
    ref = np.load(fixtures_dir / 'edm_songunet_ddpmpp_cond_aug.sampler.npz')
    seeds = json.loads((fixtures_dir / 'edm_songunet_ddpmpp_cond_aug.sampler.json').read_text())['seeds']
    rng = StackedRandomGenerator('cpu', seeds)
    latents = rng.randn([len(seeds), *ref['latents'].shape[1:]])
    labels = torch.eye(ref['class_labels'].shape[1])[rng.randint(ref['class_labels'].shape[1], size=[len(seeds)])]
    # Written by upstream on another machine: float32 normals agree to RANDN_FLOAT32_ATOL there, integer draws exactly.
    torch.testing.assert_close(latents, torch.from_numpy(ref['latents']), rtol=0, atol=RANDN_FLOAT32_ATOL)
    assert torch.equal(labels, torch.from_numpy(ref['class_labels']))

"""The EDM sampling pipeline as a library: grids, the one sampler, per-seed RNG, images, safe network loading."""
from edm.loading import load_network_pkl
from edm.rng import StackedRandomGenerator
from edm.sampler import ablation_sampler, edm2_sampler, edm_sampler

__all__ = ['load_network_pkl', 'StackedRandomGenerator', 'ablation_sampler', 'edm2_sampler', 'edm_sampler']

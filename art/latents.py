"""The latents that schedule methods train on: seeds from TRAIN_SEED_BASE on, disjoint from the seeds 0..N-1 that
art.bench and art.report evaluate on, so that every benchmark is held out."""
from typing import Optional, Tuple

import torch

from edm.rng import seed_latents

TRAIN_SEED_BASE = 1_000_000      # training latents use seeds TRAIN_SEED_BASE + seed + i (benchmarks use 0..N-1)


def training_latents(net: torch.nn.Module, num: int, first_seed: int,
                     device: torch.device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Latents (float64) and one-hot labels (None if unconditional) of seeds first_seed.., drawn as art.bench does."""
    latents, labels, _ = seed_latents(net, range(first_seed, first_seed + num), device)
    return latents.to(torch.float64), labels

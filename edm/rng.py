"""Per-seed random numbers, so that each image depends on its seed only (docs/edm-compat.md §2)."""
from typing import Any, Iterable, Optional, Sequence, Tuple

import torch

MAX_SEED = 2 ** 63 - 1   # seeds travel as int64 tensors (split across ranks); each generator takes seed mod 2^32


class StackedRandomGenerator:
    """One torch.Generator per seed (seeded with seed mod 2^32); draws are made per seed and stacked along dim 0."""

    def __init__(self, device: Any, seeds: Iterable[int]) -> None:
        """Create and seed one generator per seed on `device`."""
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def _check_batch(self, size: Sequence[int]) -> None:
        """Raise a ValueError unless size[0] is the number of seeds."""
        if len(size) == 0 or size[0] != len(self.generators):
            raise ValueError(f'size[0] must equal the number of seeds ({len(self.generators)}), got size {list(size)}')

    def randn(self, size: Sequence[int], **kwargs: Any) -> torch.Tensor:
        """Normal draws of shape size[1:] from each seed's generator, stacked: shape size."""
        self._check_batch(size)
        kwargs.setdefault('device', self.device)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input: torch.Tensor) -> torch.Tensor:
        """randn(input.shape) with the dtype, layout and device of input."""
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args: Any, size: Sequence[int], **kwargs: Any) -> torch.Tensor:
        """Per-seed torch.randint(*args, size=size[1:]), stacked: shape size."""
        self._check_batch(size)
        kwargs.setdefault('device', self.device)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])


def seed_latents(net: Any, seeds: Sequence[int], device: Any = 'cpu', class_idx: Optional[int] = None
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], StackedRandomGenerator]:
    """x(T)/sigma_max draws and one-hot class labels for each seed, in upstream's draw order (latents, then class
    indices, drawn even when class_idx overrides them); returns the generator too, for the sampler's churn noise.

    Labels are None for an unconditional net. This is the one place where a seed becomes a latent, so every tool
    (generate, bench, demo, direct) starts from the same x(T) for the same seed.
    """
    rnd = StackedRandomGenerator(device, seeds)
    n = len(rnd.generators)
    latents = rnd.randn([n, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    labels = None
    if net.label_dim:
        labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[n], device=device)]
        if class_idx is not None:
            labels[:, :] = 0
            labels[:, class_idx] = 1
    return latents, labels, rnd

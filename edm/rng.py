"""Per-seed random numbers, so that each image depends on its seed only (edm-interface.md 2.3)."""
from typing import Any, Iterable, Sequence

import torch


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

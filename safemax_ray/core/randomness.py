"""Randomness that does not depend on how the work is split.

Training step s draws its whole global batch from one generator seeded by (seed, s); every rank draws the
global tensor and keeps its own samples, so 1 or N workers see the same numbers and a resumed run redraws
exactly what the uninterrupted run drew, with no generator state to save. An evaluation's samples of
class k come in chunks, the j-th sampled from a generator seeded by (eval seed, k, j), so any split of
the chunks over workers gives the same images, and a class's samples are the same whichever other
classes an evaluation draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_PRIME = 1_000_003


def mixed_seed(*parts: int) -> int:
    seed = 0
    for part in parts:
        seed = (seed * _PRIME + int(part)) % 2**63
    return seed


def seeded_generator(device: torch.device | str, *parts: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(mixed_seed(*parts))


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    return seeded_generator(device, 1, seed, step)


def chunk_generator(seed: int, label: int, part: int, device: torch.device | str = "cpu") -> torch.Generator:
    return seeded_generator(device, 3, seed, label, part)


@dataclass
class RankRandom:
    """Draws of the global batch, sliced to this rank's samples.

    Every call names the local sample count; the generator draws `world` times as many and this rank
    keeps samples [rank * n, (rank + 1) * n). All ranks make the same calls in the same order.
    """

    generator: torch.Generator
    rank: int = 0
    world: int = 1

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _mine(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x[self.rank * n : (self.rank + 1) * n]

    def normal(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        n, *rest = shape
        x = torch.randn((n * self.world, *rest), generator=self.generator, device=self.device)
        return self._mine(x, n)

    def rand(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """U[0, 1) of the given local shape."""
        n, *rest = shape
        return self._mine(torch.rand((n * self.world, *rest), generator=self.generator, device=self.device), n)

    def uniform(self, n: int) -> torch.Tensor:
        return self._mine(torch.rand((n * self.world,), generator=self.generator, device=self.device), n)

    def integers(self, high: int, n: int) -> torch.Tensor:
        x = torch.randint(high, (n * self.world,), generator=self.generator, device=self.device)
        return self._mine(x, n)

    def antithetic(self, high: int, n: int) -> torch.Tensor:
        """Timesteps in [0, high) drawn in antithetic pairs t, high - 1 - t over the global batch, as the
        reference codebases draw them (half the draws, then their mirror images)."""
        total = n * self.world
        half = torch.randint(high, (total // 2 + 1,), generator=self.generator, device=self.device)
        return self._mine(torch.cat([half, high - half - 1])[:total], n)

    def shared_integer(self, high: int) -> int:
        """One integer in [0, high), the same on every rank (one draw for the whole global batch)."""
        return int(torch.randint(high, (1,), generator=self.generator, device=self.device))

    def permutation(self, n: int) -> torch.Tensor:
        """A permutation of range(n), the same on every rank (for passes over a whole set)."""
        return torch.randperm(n, generator=self.generator, device=self.device)

    def choice(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        """n entries of `pool` drawn uniformly with replacement (small classes still fill a batch)."""
        return pool[self.integers(len(pool), n).to(pool.device)]

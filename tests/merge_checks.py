"""Checks shared by the merge tests (fast and slow): one statement of what "like mergekit" means for DELLA's draws."""

from __future__ import annotations

import torch


def assert_della_draws_like_mergekit(delta: torch.Tensor, density: float, epsilon: float, *, global_seed: int) -> None:
    """layerswap's and mergekit's own DELLA draws on ``delta`` (each its own random stream) both keep ``density``
    of the entries, ``density + epsilon / 2`` of each row's larger half (keep probability rises linearly with
    rank), and rescale the kept entries by the same L1 factor. ``global_seed`` seeds torch's global stream,
    which mergekit draws from."""
    from mergekit.sparsify import RescaleNorm, della_magprune

    from layerswap.merge.methods._math import stable_seed
    from layerswap.merge.methods.della import della_drop

    sigma = (density * (1 - density) / delta.numel()) ** 0.5
    large = delta.abs() > delta.abs().median(dim=1, keepdim=True).values  # the top half of each row
    ours = della_drop(delta.clone(), density, epsilon, torch.Generator().manual_seed(stable_seed(0, "w", "math")), "l1")
    torch.manual_seed(global_seed)
    theirs = della_magprune(delta.clone(), density, epsilon, RescaleNorm.l1)
    for out in (ours, theirs):
        kept = out != 0
        assert abs(kept.float().mean().item() - density) < 5 * sigma
        assert abs(kept[large].float().mean().item() - (density + epsilon / 2)) < 10 * sigma
        factor = delta.abs().sum() / delta[kept].abs().sum()
        assert torch.allclose(out[kept], delta[kept] * factor, rtol=1e-5)

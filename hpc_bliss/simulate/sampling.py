"""Batched samplers that take an explicit torch.Generator (torch.distributions cannot)."""

from __future__ import annotations

import torch
from torch import Tensor


def truncated_pareto(
    shape: tuple[int, ...],
    alpha: float,
    xmin: float,
    xmax: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw from p(x) ∝ x^-(alpha+1) on [xmin, xmax] by inverting the CDF."""
    u = torch.rand(shape, generator=generator, device=device)
    span = 1.0 - (xmin / xmax) ** alpha
    return xmin * (1.0 - u * span) ** (-1.0 / alpha)


def standard_gamma(
    shape: tuple[int, ...],
    concentration: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    rounds: int = 4,
) -> Tensor:
    """Gamma(concentration, scale 1) by Marsaglia & Tsang's squeeze method, vectorised.

    Each pass proposes ``rounds`` candidates per element and keeps the first accepted one
    (acceptance is ≥ 95% per candidate), so the result is a deterministic function of the
    generator's stream. Concentrations below 1 use the boost Gamma(a) = Gamma(a+1)·U^(1/a).
    """
    a = concentration + 1.0 if concentration < 1.0 else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    out = torch.full(shape, float("nan"), device=device)
    todo = torch.ones(shape, dtype=torch.bool, device=device)
    while bool(todo.any()):
        n = int(todo.sum())
        x = torch.randn((rounds, n), generator=generator, device=device)
        u = torch.rand((rounds, n), generator=generator, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        first = torch.argmax(ok.int(), dim=0)
        got = ok.any(dim=0)
        values = (d * v).gather(0, first[None])[0]
        idx = todo.nonzero(as_tuple=True)
        done = torch.where(got, values, torch.full_like(values, float("nan")))
        out[idx] = done
        todo = torch.isnan(out)
    if concentration < 1.0:
        u = torch.rand(shape, generator=generator, device=device)
        out = out * u ** (1.0 / concentration)
    return out

"""Shape information at every pixel: Gaussian-weighted moments of the image about each pixel.

A learned 1×1 convolution adds the bands into one image (it starts as the reference band alone);
fixed convolutions then give, about every pixel p, the weighted moments of that image
M_ab(p) = Σ_u W(u) u_x^a u_y^b I(p + u), W a round Gaussian of ``sigma`` pixels. Centred on the
weighted centroid they give a second-moment matrix C per pixel and its spin-2 shape
χ = (Cxx − Cyy, 2 Cxy) / (Cxx + Cyy) (x = column, y = row, as the shear). For a Gaussian source
(after the PSF) C is the same about every pixel (the product of two Gaussians is a Gaussian), so
the maps are translation-invariant shape measurements that a network can average and weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

M0_SCALE = 0.1  #: nmgy, the asinh softening of the weighted flux M0 (a faint galaxy's centre)
EPS = 1e-3  #: M0 and Cxx + Cyy below this are not measurements (χ = 0 there)


class MomentMaps(nn.Module):
    """Images (N, B, H, W) nmgy -> maps (N, 4, H, W): asinh(M0 / M0_SCALE), log(Cxx + Cyy),
    χ1, χ2 (each χ clamped to [-1, 1]; all 0 where M0 or Cxx + Cyy is below ``EPS``)."""

    def __init__(self, n_bands: int, ref_band: int = 0, sigma: float = 2.0) -> None:
        super().__init__()
        self.coadd = nn.Conv2d(n_bands, 1, 1, bias=False)
        with torch.no_grad():
            self.coadd.weight.zero_()
            self.coadd.weight[0, min(ref_band, n_bands - 1)] = 1.0
        self.radius = math.ceil(4 * sigma)
        ax = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        y, x = ax[:, None], ax[None, :]
        w = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
        kernels = torch.stack([w, x * w, y * w, x * x * w, y * y * w, x * y * w])
        self.kernels: Tensor
        self.register_buffer("kernels", kernels[:, None], persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        m = F.conv2d(self.coadd(images), self.kernels, padding=self.radius)
        m0 = m[:, 0]
        safe = torch.where(m0 > EPS, m0, torch.ones_like(m0))
        mx, my = m[:, 1] / safe, m[:, 2] / safe
        cxx, cyy = m[:, 3] / safe - mx**2, m[:, 4] / safe - my**2
        cxy = m[:, 5] / safe - mx * my
        size = cxx + cyy
        ok = (m0 > EPS) & (size > EPS)
        size = torch.where(ok, size, torch.ones_like(size))
        chi = torch.stack([(cxx - cyy) / size, 2 * cxy / size], 1).clamp(-1.0, 1.0)
        chi = chi * ok[:, None]
        return torch.cat([torch.asinh(m0 / M0_SCALE)[:, None], torch.log(size)[:, None], chi], 1)

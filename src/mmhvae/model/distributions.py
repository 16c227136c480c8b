"""Diagonal Gaussian maths for MMHVAE: the only module where Gaussian formulas live.

Everything here is pure tensor maths (no parameters), so it can be property-tested in isolation.
Equation numbers refer to Dorent et al., "Unified Cross-Modal Medical Image Synthesis with
Hierarchical Mixture of Product-of-Experts", TPAMI 2025.

Conventions: a Gaussian is parameterised by its mean and log-variance (not log-scale); the expert
axis of a stack of experts is dimension 1, i.e. experts have shape [B, M, ...] and the expert mask
has shape [B, M].
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass

import torch

_LOG_2PI = math.log(2.0 * math.pi)


def central_interval_z(level: float) -> float:
    """z such that mean +- z sd holds a fraction `level` of a Gaussian (1.645 for 0.9)."""
    return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def soft_clamp(x: torch.Tensor, c: float) -> torch.Tensor:
    """Smooth clamp c * tanh(x / c) to (-c, c), used on every mean and log-variance (as in NVAE).

    Unlike a hard clamp it keeps a non-zero gradient everywhere, and it bounds the precisions that
    enter the product of experts (Eq. 14) to [exp(-c), exp(c)].
    """
    return c * torch.tanh(x / c)


class RowNoise:
    """Standard normal noise keyed per batch row, for reproducible inference however rows are batched.

    Rows with the same key get the same noise, and a key's noise does not depend on which other rows share
    the batch: key k draws from its own generator, seeded by (seed, k), one draw per call in decoding order
    (one call per latent group). So a slice's sample is the same whether its input subset is decoded alone or
    with others, and in any slice batching; keyed by (slice, sample), every subset of a slice sees the same
    noise (common random numbers, which also make comparisons between subsets less noisy). The generators are
    CPU ones whatever the device, so a GPU draws the same noise as a CPU (CUDA's generator would draw other
    numbers from the same seed) and predictions agree across machines up to float rounding.
    """

    def __init__(self, keys: torch.Tensor, seed: int = 0):
        unique, self.row_to_key = torch.unique(keys.cpu(), return_inverse=True)
        self.generators = []
        for key in unique.tolist():
            generator = torch.Generator()
            generator.manual_seed(self.stream_seed(seed, key))
            self.generators.append(generator)

    @staticmethod
    def stream_seed(seed: int, key: int) -> int:
        """A 32-bit seed per (seed, key) (the CPU generator keeps 32 bits), mixed so that nearby pairs differ."""
        return int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=4).digest(), "little")

    def draw(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Noise of `shape` ([rows, ...]): the next draw of each row's key."""
        per_key = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in self.generators])
        return per_key.to(device)[self.row_to_key.to(device)]


def standard_normal_like(x: torch.Tensor, generator: torch.Generator | RowNoise | None = None) -> torch.Tensor:
    """N(0, I) noise with the shape, dtype and device of `x`, from a torch generator (or the global one) or
    the next draw of a RowNoise."""
    if isinstance(generator, RowNoise):
        return generator.draw(x.shape, x.dtype, x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@dataclass
class Gaussian:
    """Diagonal Gaussian N(mean, diag(exp(logvar))); all operations are elementwise."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_params(cls, params: torch.Tensor, clamp: float | None = None, dim: int = 1) -> Gaussian:
        """Split a network output into (mean, log-variance) halves along `dim`, soft-clamping both.

        Always float32: under bf16 autocast the networks run in bf16, but the Gaussian and product-of-experts
        arithmetic (exponentials of log-variances, precision sums) stays in full precision."""
        mean, logvar = params.float().chunk(2, dim=dim)
        if clamp is not None:
            mean, logvar = soft_clamp(mean, clamp), soft_clamp(logvar, clamp)
        return cls(mean, logvar)

    @classmethod
    def standard_like(cls, x: torch.Tensor) -> Gaussian:
        """N(0, I) with the shape, dtype and device of `x` (the prior p(z_L) of Eq. 5)."""
        return cls(torch.zeros_like(x), torch.zeros_like(x))

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, temperature: float = 1.0, generator: torch.Generator | RowNoise | None = None) -> torch.Tensor:
        """Reparameterised sample mean + temperature * std * eps.

        The temperature scales the standard deviation (HVAE inference trick, Section 4.2 uses 0.5);
        temperature 0 returns the mean itself, so deterministic inference is exact. eps comes from
        `generator`: a torch generator (or the global one), or a RowNoise that keys it per row.
        """
        if temperature == 0:
            return self.mean
        return self.mean + temperature * self.std * standard_normal_like(self.mean, generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise log-density log N(x; mean, var)."""
        return -0.5 * (_LOG_2PI + self.logvar + (x - self.mean) ** 2 * torch.exp(-self.logvar))


def gaussian_from_log_scale(params: torch.Tensor, clamp: float, dim: int = 1) -> Gaussian:
    """The authors' parameterisation (model/authors.py): split a head output into (mean, log standard deviation)
    along `dim`, soft-clamp both, return our Gaussian.

    Their second half is a log standard deviation s (their Normal(mu, exp(s))), and the soft clamp c * tanh(x / c)
    bounds it, not the log-variance as in `Gaussian.from_params`. Our Gaussian stores the log-variance, i.e. 2 s.
    """
    mean, log_scale = params.chunk(2, dim=dim)
    return Gaussian(soft_clamp(mean, clamp), 2.0 * soft_clamp(log_scale, clamp))


def kl_divergence(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """Analytic elementwise KL(q || p) between diagonal Gaussians (the regulariser of Eq. 9).

    KL = 0.5 * (log var_p - log var_q + (var_q + (mu_q - mu_p)^2) / var_p - 1).
    The variance ratio is computed as exp(logvar_q - logvar_p) so that it stays finite when both
    variances are tiny or huge.
    """
    inv_var_p = torch.exp(-p.logvar)
    return 0.5 * (
        p.logvar - q.logvar + torch.exp(q.logvar - p.logvar) + (q.mean - p.mean) ** 2 * inv_var_p - 1.0
    )


def kl_single_sample(q: Gaussian, p: Gaussian, z: torch.Tensor) -> torch.Tensor:
    """Single-sample elementwise estimate log q(z) - log p(z) of the KL term, as written in Eq. 19.

    Unbiased for KL(q || p) when z ~ q; it is the estimator the paper uses, while `kl_divergence` is
    the lower-variance analytic alternative.
    """
    return q.log_prob(z) - p.log_prob(z)


def group_kl(q: Gaussian, p: Gaussian, z: torch.Tensor, mode: str) -> torch.Tensor:
    """KL term of one latent group per sample, [B]: summed over the group's dimensions, analytic
    (`mode` "analytic") or the single-sample estimate of Eq. 19 at z (`mode` "sample")."""
    per_dim = kl_divergence(q, p) if mode == "analytic" else kl_single_sample(q, p, z)
    return per_dim.flatten(1).sum(dim=1)


@dataclass
class LatentSampler:
    """How a decoding pass draws its latent groups: z ~ q at `temperature` (0: the mean) with noise from
    `generator`, and the KL term it reports per group, `kl_mode` "analytic" or "sample" (Eq. 19)."""

    temperature: float
    generator: torch.Generator | RowNoise | None
    kl_mode: str

    def draw(self, q: Gaussian, prior: Gaussian) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample z of q, and the group's KL term against `prior` ([B])."""
        z = q.sample(self.temperature, self.generator)
        return z, group_kl(q, prior, z, self.kl_mode)


def _expand_mask(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append singleton dimensions to a [B, M] mask so that it broadcasts against [B, M, ...]."""
    mask = mask.to(torch.bool)
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def _fuse_in_log_space(
    prior: Gaussian,
    experts_mean: torch.Tensor,
    experts_logvar: torch.Tensor,
    mask: torch.Tensor,
    log_weight_per_logvar: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared core of the two fusions: weights w_k proportional to exp(a * logvar_k), a < 0.

    Returns (fused mean, log of the sum of the unnormalised weights). Absent experts are replaced by
    harmless values *before* any arithmetic and then given a log-weight of -inf, so that NaN or huge
    values in an absent expert change neither the result nor the gradients. The prior is always
    present, so the log-sum-exp is never over an empty set.
    """
    present = _expand_mask(mask, experts_mean.ndim)
    mean_k = torch.where(present, experts_mean, torch.zeros_like(experts_mean))
    logvar_k = torch.where(present, experts_logvar, torch.zeros_like(experts_logvar))
    log_w_k = torch.where(present, log_weight_per_logvar * logvar_k, torch.full_like(logvar_k, -math.inf))

    prior_mean = prior.mean.expand_as(mean_k[:, 0]).unsqueeze(1)
    prior_log_w = (log_weight_per_logvar * prior.logvar).expand_as(log_w_k[:, 0]).unsqueeze(1)
    means = torch.cat([prior_mean, mean_k], dim=1)
    log_ws = torch.cat([prior_log_w, log_w_k], dim=1)

    log_total = torch.logsumexp(log_ws, dim=1)
    # softmax = w_k / sum(w); computing it this way never forms a precision explicitly.
    mean = (torch.softmax(log_ws, dim=1) * means).sum(dim=1)
    return mean, log_total


def product_of_experts(
    prior: Gaussian, experts_mean: torch.Tensor, experts_logvar: torch.Tensor, mask: torch.Tensor
) -> Gaussian:
    """Product of the prior and the observed Gaussian experts, Eq. 14 (and Eq. 13 for z_L).

    precision = 1/var_prior + sum_{k observed} 1/var_k
    mean      = (mu_prior/var_prior + sum_{k observed} mu_k/var_k) / precision

    Args:
        prior: Gaussian of shape [B, ...] (or broadcastable to it), e.g. p(z_l | z_>l).
        experts_mean, experts_logvar: residual experts h_phi (Eq. 12), shape [B, M, ...].
        mask: bool [B, M]; False experts contribute exactly nothing, whatever values they hold.

    Computed in log-precision space with logsumexp, so it is stable for extreme log-variances.
    """
    mean, log_precision = _fuse_in_log_space(prior, experts_mean, experts_logvar, mask, -1.0)
    return Gaussian(mean, -log_precision)


def inverse_std_fusion(
    prior: Gaussian, experts_mean: torch.Tensor, experts_logvar: torch.Tensor, mask: torch.Tensor
) -> Gaussian:
    """The authors' code's fusion (an option, not Eq. 14): weights are inverse standard deviations.

    mean = sum_k (mu_k / sigma_k) / sum_k (1 / sigma_k),   sigma = 1 / sum_k (1 / sigma_k),
    where k runs over the prior and the observed experts. Same arguments as `product_of_experts`.
    """
    mean, log_inv_std = _fuse_in_log_space(prior, experts_mean, experts_logvar, mask, -0.5)
    return Gaussian(mean, -2.0 * log_inv_std)


def product_of_two(a: Gaussian, b: Gaussian) -> Gaussian:
    """Textbook (normalised) product of two Gaussians, for reference and tests of Eq. 14."""
    precision = torch.exp(-a.logvar) + torch.exp(-b.logvar)
    mean = (a.mean * torch.exp(-a.logvar) + b.mean * torch.exp(-b.logvar)) / precision
    return Gaussian(mean, -torch.log(precision))


# ----------------------------------------------------------------------------------------------------
# Brownian bridge (BBDM, Li et al., CVPR 2023), for the M2DN baseline of Table I (model/m2dn.py)
# ----------------------------------------------------------------------------------------------------


def bridge_variance(m: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """delta_t = 2 s (m_t - m_t^2): the bridge's variance at position m_t = t / T, 0 at both ends."""
    return 2.0 * scale * (m - m * m)


def bridge_marginal(x0: torch.Tensor, y: torch.Tensor, m: torch.Tensor, scale: float = 1.0) -> Gaussian:
    """q(x_t | x_0, y) = N((1 - m_t) x_0 + m_t y, delta_t): the bridge from x_0 (t = 0) to y (t = T).

    `m` broadcasts against the images (e.g. [B, 1, 1, 1])."""
    variance = bridge_variance(m, scale).expand_as(x0)
    return Gaussian((1 - m) * x0 + m * y, torch.log(variance.clamp(min=1e-20)))


def bridge_step(x_t: torch.Tensor, x0: torch.Tensor, y: torch.Tensor, m_t: float, m_s: float,
                scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of q(x_s | x_t, x_0, y) for s < t: one reverse step of the bridge, any stride.

    The forward transition is q(x_t | x_s, y) = N(a x_s + (m_t - a m_s) y, delta_t|s) with
    a = (1 - m_t) / (1 - m_s) and delta_t|s = delta_t - a^2 delta_s; conditioning the marginal of x_s on x_t
    gives mean (delta_t|s mu_s + a delta_s (x_t - (m_t - a m_s) y)) / delta_t and variance
    delta_s delta_t|s / delta_t. At t = T the bridge is pinned (x_T = y, delta_T = 0) and the step is the
    marginal of x_s; at s = 0 it is x_0 itself.
    """
    if not 0.0 <= m_s < m_t <= 1.0:
        raise ValueError(f"need 0 <= m_s < m_t <= 1, got m_s={m_s}, m_t={m_t}")
    mu_s = (1 - m_s) * x0 + m_s * y
    delta_s = 2.0 * scale * (m_s - m_s * m_s)
    delta_t = 2.0 * scale * (m_t - m_t * m_t)
    if delta_t <= 0.0 or delta_s <= 0.0:  # pinned end: x_T = y carries no information on x_s; x_0 is known
        return mu_s, torch.full_like(mu_s, delta_s)
    a = (1 - m_t) / (1 - m_s)
    delta_ts = delta_t - a * a * delta_s
    mean = (delta_ts * mu_s + a * delta_s * (x_t - (m_t - a * m_s) * y)) / delta_t
    return mean, torch.full_like(mean, delta_s * delta_ts / delta_t)

"""Diagonal Gaussian posterior of the KL autoencoder."""
import numpy as np
from mindspore import ops


class DiagonalGaussianDistribution:
    """N(mean, exp(logvar)) per latent element; ``parameters`` is (B, 2C, H, W) =
    [mean, logvar] along the channel axis.

    A plain Python object (not a Cell): it only holds tensors and helper maths,
    and gradients flow through its tensors as usual.
    """

    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, logvar = ops.chunk(parameters, 2, axis=1)
        # clamp as the original does, so exp() can neither overflow nor vanish
        self.logvar = ops.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = ops.zeros_like(self.mean)
            self.var = ops.zeros_like(self.mean)
        else:
            self.std = ops.exp(0.5 * self.logvar)
            self.var = ops.exp(self.logvar)

    def sample(self, noise=None):
        """mean + std * noise; ``noise`` (same shape as ``mean``) defaults to a fresh
        standard-normal draw. Passing it lets a caller reproduce a recorded draw."""
        if noise is None:
            noise = ops.randn_like(self.mean)
        return self.mean + self.std * noise.astype(self.mean.dtype)

    def kl(self, other=None):
        """KL(self || other) summed over C, H, W; ``other=None`` means N(0, I)."""
        if self.deterministic:
            return ops.zeros(self.mean.shape[:1], self.mean.dtype)
        if other is None:
            terms = ops.pow(self.mean, 2) + self.var - 1.0 - self.logvar
        else:
            terms = (ops.pow(self.mean - other.mean, 2) / other.var + self.var / other.var
                     - 1.0 - self.logvar + other.logvar)
        return 0.5 * terms.sum(axis=(1, 2, 3))

    def nll(self, sample, dims=(1, 2, 3)):
        """Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return ops.zeros(self.mean.shape[:1], self.mean.dtype)
        log_two_pi = float(np.log(2.0 * np.pi))
        terms = log_two_pi + self.logvar + ops.pow(sample - self.mean, 2) / self.var
        return 0.5 * terms.sum(axis=dims)

    def mode(self):
        return self.mean

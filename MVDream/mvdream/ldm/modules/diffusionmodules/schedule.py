"""DDPM noise schedule and the forward-process maths shared by the LDM interface
and the SDS guidance (the DDIM-specific schedule lives in ldm/models/diffusion/ddim.py).

Everything is computed in float64 NumPy and only then cast to float32, as the
original ``register_schedule`` does; recomputing in float32 would change the
buffers in the last bits (and the released checkpoint stores the f32 results).
"""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

# The 12 persistent buffers of the original LatentDiffusionInterface, in
# registration (= state dict) order.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev",
    "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)


def make_beta_schedule(schedule, n_timestep, linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3):
    """Float64 betas of a named schedule ("linear" = SD's scaled-linear, "cosine",
    "sqrt_linear", "sqrt")."""
    if schedule == "linear":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=np.float64) ** 2
    if schedule == "cosine":
        steps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        alphas = np.cos(steps / (1 + cosine_s) * np.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return np.clip(1 - alphas[1:] / alphas[:-1], 0, 0.999)
    if schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    if schedule == "sqrt":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64) ** 0.5
    raise ValueError(f"schedule '{schedule}' unknown (use linear, cosine, sqrt_linear or sqrt)")


def schedule_arrays(betas, v_posterior=0.0):
    """The 12 schedule buffers (name -> float64 array) for the given betas."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = (1 - v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) + v_posterior * betas
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        # clipped: the posterior variance is 0 at the start of the chain
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def as_timesteps(t):
    """``t`` as a 1-D int32 Tensor (an int, list, ndarray or Tensor of any int dtype)."""
    if isinstance(t, Tensor):
        return t.reshape(-1).astype(ms.int32)
    return Tensor(np.asarray(t, dtype=np.int32).reshape(-1))


def extract_into_tensor(a, t, x_shape):
    """``a[t]`` reshaped to (len(t), 1, ..., 1) so that it broadcasts against ``x_shape``.

    A 1-element ``t`` therefore applies to the whole batch (the guidance's use).
    """
    t = as_timesteps(t)
    out = ops.gather(a, t, 0)
    return out.reshape((t.shape[0],) + (1,) * (len(x_shape) - 1))


class DiffusionSchedule(nn.Cell):
    """Holds the 12 schedule buffers and the q(x_t | x_0) algebra on them.

    The buffers are non-trainable Parameters named exactly as in the original
    state dict (``betas``, ``alphas_cumprod``, ...), so a subclass that is the
    model's root cell loads them from a checkpoint like any other entry.
    """

    def __init__(self, beta_schedule="linear", timesteps=1000, linear_start=1e-4, linear_end=2e-2,
                 cosine_s=8e-3, given_betas=None):
        super().__init__()
        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)

    def register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000,
                          linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3):
        if given_betas is not None:
            betas = np.asarray(given_betas, dtype=np.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start,
                                       linear_end=linear_end, cosine_s=cosine_s)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.v_posterior = 0.0
        for name, value in schedule_arrays(betas, self.v_posterior).items():
            tensor = Tensor(value.astype(np.float32))
            if isinstance(getattr(self, name, None), Parameter):
                getattr(self, name).set_data(tensor)
            else:
                setattr(self, name, Parameter(tensor, name=name, requires_grad=False))

    def _coef(self, name, t, x):
        return extract_into_tensor(getattr(self, name), t, x.shape)

    def q_sample(self, x_start, t, noise=None):
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise."""
        if noise is None:
            noise = ops.randn(x_start.shape, dtype=x_start.dtype)
        return (self._coef("sqrt_alphas_cumprod", t, x_start) * x_start
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def get_v(self, x, noise, t):
        return (self._coef("sqrt_alphas_cumprod", t, x) * noise
                - self._coef("sqrt_one_minus_alphas_cumprod", t, x) * x)

    def predict_start_from_noise(self, x_t, t, noise):
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * noise)

    def predict_start_from_z_and_v(self, x_t, t, v):
        return (self._coef("sqrt_alphas_cumprod", t, x_t) * x_t
                - self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * v)

    def predict_eps_from_z_and_v(self, x_t, t, v):
        return (self._coef("sqrt_alphas_cumprod", t, x_t) * v
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t)

    def construct(self, x_start, t, noise=None):
        return self.q_sample(x_start, t, noise)

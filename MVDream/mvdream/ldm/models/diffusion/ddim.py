"""DDIM sampler with classifier-free guidance (the original ``DDIMSampler`` semantics).

Conditioning is a dict with ``context`` (text embeddings), and optionally
``camera`` and ``num_frames`` for multiview sampling. With guidance the UNet
sees the batch ``[uncond, cond]`` and ``e = e_u + scale * (e_c - e_u)``.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from tqdm.auto import tqdm


def make_ddim_timesteps(num_ddim_timesteps, num_ddpm_timesteps):
    """Uniformly spaced DDPM steps, shifted by one as the original does (1, 1+c, 1+2c, ...)."""
    if not 0 < num_ddim_timesteps <= num_ddpm_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_ddpm_timesteps}, got {num_ddim_timesteps}")
    stride = num_ddpm_timesteps // num_ddim_timesteps
    # When S does not divide 1000 the original gets S+1 steps, the last one (1000) out
    # of range; keep the first S (identical whenever S divides 1000).
    return np.arange(0, num_ddpm_timesteps, stride, dtype=np.int64)[:num_ddim_timesteps] + 1


def make_ddim_sampling_parameters(alphas_cumprod, ddim_timesteps, eta):
    """Return (alphas f32, alphas_prev f64, sigmas f64) as the original computes them.

    ``alphas_prev`` of the first step is alpha_cumprod[0], not 1.
    """
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float32)
    alphas = alphas_cumprod[ddim_timesteps]
    alphas_prev = np.asarray([alphas_cumprod[0]] + alphas_cumprod[ddim_timesteps[:-1]].tolist(), dtype=np.float64)
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    return alphas, alphas_prev, sigmas


def _stack_cfg_inputs(cond, uncond):
    """Batch ``[uncond, cond]`` for each tensor entry; non-tensors (num_frames) must agree."""
    merged = {}
    for key, value in cond.items():
        other = uncond.get(key)
        if isinstance(value, Tensor):
            merged[key] = ops.concat([other, value], axis=0)
        else:
            if other != value:
                raise ValueError(f"conditioning '{key}' differs between cond ({value}) and uncond ({other})")
            merged[key] = value
    return merged


class DDIMSampler:
    """Deterministic (eta=0) or stochastic DDIM over a ``LatentDiffusionInterface``."""

    def __init__(self, model, schedule="linear"):
        self.model = model
        self.ddpm_num_timesteps = int(model.num_timesteps)
        self.schedule = schedule

    def make_schedule(self, ddim_num_steps, ddim_eta=0.0, verbose=True):
        alphas_cumprod = self.model.alphas_cumprod
        alphas_cumprod = alphas_cumprod.asnumpy() if isinstance(alphas_cumprod, Tensor) else np.asarray(alphas_cumprod)
        self.ddim_timesteps = make_ddim_timesteps(ddim_num_steps, self.ddpm_num_timesteps)
        self.ddim_alphas, self.ddim_alphas_prev, self.ddim_sigmas = make_ddim_sampling_parameters(
            alphas_cumprod, self.ddim_timesteps, ddim_eta)
        self.ddim_sqrt_one_minus_alphas = np.sqrt(1.0 - self.ddim_alphas).astype(np.float32)
        self.ddim_eta = ddim_eta

    def sample(self, S, batch_size, shape, conditioning=None, x_T=None, eta=0.0,
               unconditional_guidance_scale=1.0, unconditional_conditioning=None,
               log_every_t=100, temperature=1.0, verbose=True, seed=None, callback=None, **kwargs):
        """Run S DDIM steps from ``x_T`` (or seeded Gaussian noise); return (samples, intermediates)."""
        self.make_schedule(S, ddim_eta=eta, verbose=verbose)
        size = (batch_size, *shape)
        rng = np.random.default_rng(seed)
        if x_T is None:
            x_T = Tensor(rng.standard_normal(size).astype(np.float32))
        elif tuple(x_T.shape) != size:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {size}")
        return self.ddim_sampling(conditioning, x_T, unconditional_guidance_scale, unconditional_conditioning,
                                  log_every_t=log_every_t, temperature=temperature, verbose=verbose,
                                  rng=rng, callback=callback)

    def ddim_sampling(self, cond, x_T, unconditional_guidance_scale=1.0, unconditional_conditioning=None,
                      log_every_t=100, temperature=1.0, verbose=True, rng=None, callback=None):
        img = x_T
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        total_steps = len(self.ddim_timesteps)
        time_range = np.flip(self.ddim_timesteps)
        for i, step in enumerate(tqdm(time_range, desc="DDIM", total=total_steps, disable=not verbose)):
            index = total_steps - i - 1
            ts = Tensor(np.full((img.shape[0],), step, dtype=np.int64))
            img, pred_x0 = self.p_sample_ddim(img, cond, ts, index, unconditional_guidance_scale,
                                              unconditional_conditioning, temperature=temperature, rng=rng)
            if callback is not None:
                callback(i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates

    def p_sample_ddim(self, x, cond, t, index, unconditional_guidance_scale=1.0,
                      unconditional_conditioning=None, temperature=1.0, rng=None):
        model = self.model
        if unconditional_conditioning is None or unconditional_guidance_scale == 1.0:
            e_t = model.apply_model(x, t, cond)
        else:
            x_in = ops.concat([x, x], axis=0)
            t_in = ops.concat([t, t], axis=0)
            c_in = _stack_cfg_inputs(cond, unconditional_conditioning)
            e_uncond, e_cond = ops.chunk(model.apply_model(x_in, t_in, c_in), 2, axis=0)
            e_t = e_uncond + unconditional_guidance_scale * (e_cond - e_uncond)
        if getattr(model, "parameterization", "eps") == "v":
            e_t = model.predict_eps_from_z_and_v(x, t, e_t)

        # Per-step scalars become float32 tensors, as torch.full does in the original.
        dtype = x.dtype
        a_t = Tensor(np.float32(self.ddim_alphas[index]), ms.float32)
        a_prev = Tensor(np.float32(self.ddim_alphas_prev[index]), ms.float32)
        sigma_t = Tensor(np.float32(self.ddim_sigmas[index]), ms.float32)
        sqrt_one_minus_at = Tensor(np.float32(self.ddim_sqrt_one_minus_alphas[index]), ms.float32)

        pred_x0 = (x - sqrt_one_minus_at.astype(dtype) * e_t) / ops.sqrt(a_t).astype(dtype)
        dir_xt = ops.sqrt(1.0 - a_prev - sigma_t ** 2).astype(dtype) * e_t
        x_prev = ops.sqrt(a_prev).astype(dtype) * pred_x0 + dir_xt
        if float(self.ddim_sigmas[index]) > 0.0:
            rng = rng if rng is not None else np.random.default_rng()
            noise = Tensor(rng.standard_normal(tuple(x.shape)).astype(np.float32)).astype(dtype)
            x_prev = x_prev + sigma_t.astype(dtype) * noise * temperature
        return x_prev, pred_x0

"""Text-to-multiview sampling used by ``scripts/t2i.py`` (the original's ``t2i`` function)."""
import numpy as np
from mindspore import ops


def latent_downsampling_factor(model_config):
    """Image pixels per latent pixel times the UNet's total downsampling, from a model config.

    An image size must be a multiple of this for the UNet's skip connections to line up.
    """
    params = model_config.params
    vae_levels = len(params.first_stage_config.params.ddconfig.ch_mult)
    unet_levels = len(params.unet_config.params.channel_mult)
    return 2 ** (vae_levels - 1) * 2 ** (unet_levels - 1)


def t2i(model, image_size, prompt, uc, sampler, steps=50, scale=10.0, batch_size=4, ddim_eta=0.0,
        camera=None, num_frames=1, seed=None, verbose=True, x_T=None):
    """Sample ``batch_size`` images of ``prompt``; return a list of HxWx3 uint8 arrays."""
    prompts = prompt if isinstance(prompt, list) else [prompt]
    c = model.get_learned_conditioning(prompts)
    cond = {"context": ops.tile(c, (batch_size, 1, 1))}
    uncond = {"context": ops.tile(uc, (batch_size, 1, 1))}
    if camera is not None:
        cond["camera"] = uncond["camera"] = camera
        cond["num_frames"] = uncond["num_frames"] = num_frames
    latent_size = image_size // model.vae_downsampling_factor
    shape = [model.model.diffusion_model.in_channels, latent_size, latent_size]
    samples, _ = sampler.sample(S=steps, conditioning=cond, batch_size=batch_size, shape=shape,
                                verbose=verbose, unconditional_guidance_scale=scale,
                                unconditional_conditioning=uncond, eta=ddim_eta, x_T=x_T, seed=seed)
    decoded = model.decode_first_stage(samples).astype(samples.dtype).asnumpy().astype(np.float32)
    images01 = np.clip((decoded + 1.0) / 2.0, 0.0, 1.0)
    # Truncation, not rounding, as the original's astype(np.uint8).
    return list((255.0 * images01.transpose(0, 2, 3, 1)).astype(np.uint8))

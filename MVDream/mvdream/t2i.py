"""Text-to-multiview sampling used by ``scripts/t2i.py`` and ``scripts/gradio_app.py`` (the original's
``t2i`` function and the preview rows both draw)."""
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
        camera=None, num_frames=1, seed=None, verbose=True, x_T=None, callback=None):
    """Sample ``batch_size`` images of ``prompt``; return a list of HxWx3 uint8 arrays.

    ``callback(i)`` runs after DDIM step ``i`` (0-based).
    """
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
                                unconditional_conditioning=uncond, eta=ddim_eta, x_T=x_T, seed=seed,
                                callback=callback)
    decoded = model.decode_first_stage(samples).astype(samples.dtype).asnumpy().astype(np.float32)
    images01 = np.clip((decoded + 1.0) / 2.0, 0.0, 1.0)
    # Truncation, not rounding, as the original's astype(np.uint8).
    return list((255.0 * images01.transpose(0, 2, 3, 1)).astype(np.uint8))


def preview_camera(num_frames, batch_size, elevation=15.0, azimuth_start=90.0, azimuth_span=360.0):
    """Cameras of ``batch_size // num_frames`` groups of ``num_frames`` views; (batch_size, 16)."""
    from .camera_utils import get_camera

    camera = get_camera(num_frames, elevation=elevation, azimuth_start=azimuth_start, azimuth_span=azimuth_span)
    return ops.tile(camera, (batch_size // num_frames, 1))


def sample_previews(model, sampler, prompt, negative_prompt="", size=256, num_frames=4, use_camera=True,
                    elevation=15.0, azimuth_start=90.0, azimuth_span=360.0, seed=23, steps=50, scale=10.0,
                    n_samples=1, verbose=False, callback=None):
    """Rows of multiview previews as ``scripts/t2i.py`` and the web app draw them.

    Row ``r`` is seeded with ``seed + r``; each row holds ``max(4, num_frames)`` images rounded up
    to whole groups of views (at least 4 images per row, as the original). ``callback(done, total)``
    is called after every DDIM step of every row. Returns a list of ``n_samples`` lists of HxWx3
    uint8 arrays.
    """
    batch_size = max(4, num_frames)
    camera = None
    if use_camera:
        batch_size = -(-batch_size // num_frames) * num_frames  # whole groups of views
        camera = preview_camera(num_frames, batch_size, elevation, azimuth_start, azimuth_span)
    uc = model.get_learned_conditioning([negative_prompt])
    total = n_samples * steps
    rows = []
    for row in range(n_samples):
        step_done = None if callback is None else (lambda i, row=row: callback(row * steps + i + 1, total))
        rows.append(t2i(model, size, prompt, uc, sampler, steps=steps, scale=scale, batch_size=batch_size,
                        camera=camera, num_frames=num_frames, seed=seed + row, verbose=verbose,
                        callback=step_done))
    return rows


def preview_grid(rows):
    """(rows x H, views x W, 3) uint8 grid of ``sample_previews`` rows."""
    return np.concatenate([np.concatenate(list(images), axis=1) for images in rows], axis=0)

"""threestudio's ``nerf-volume-renderer``: occupancy-grid ray marching + alpha compositing.

Sampling (which samples exist) is not differentiable and is decided in NumPy by the
:class:`OccupancyGrid`; only the geometry/material evaluation on the kept samples and the
compositing run in MindSpore, so gradients reach geometry, material and background.
"""
from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

import threestudio
from threestudio.models.estimators.occupancy_grid import OccupancyGrid
from threestudio.models.renderers.base import VolumeRenderer
from threestudio.models.renderers.volume_rendering import PackedLayout, composite, index_tensor
from threestudio.utils.autodiff import no_grad
from threestudio.utils.shape_buckets import bucket_size, call_bucketed, pad_rows


def chunk_batch(fn, chunk_size: int, *args, **kwargs):
    """Call ``fn`` on slices of at most ``chunk_size`` rows of its Tensor arguments.

    Tensors whose first dim equals the first Tensor argument's are sliced; outputs (a Tensor
    or a dict of Tensors) are concatenated back along dim 0.
    """
    first = next(v for v in (*args, *kwargs.values()) if isinstance(v, Tensor))
    n = first.shape[0]
    if chunk_size <= 0 or n <= chunk_size:
        return fn(*args, **kwargs)

    def part(v, s):
        return v[s:s + chunk_size] if isinstance(v, Tensor) and v.ndim and v.shape[0] == n else v

    outs = [fn(*[part(a, s) for a in args], **{k: part(v, s) for k, v in kwargs.items()})
            for s in range(0, n, chunk_size)]
    if isinstance(outs[0], dict):
        return {k: ops.concat([o[k] for o in outs]) for k, v in outs[0].items() if v is not None}
    return ops.concat(outs)


def _padded(samples):
    """Packed ``(ray_indices, t_starts, t_ends)`` padded to a bucketed count (see ``shape_buckets``)
    with zero-length copies of the last sample: alpha = 1 - exp(-sigma * 0) = 0, so they add
    exactly nothing to any read-out or gradient, and the packing stays sorted by ray. No samples:
    one zero-length sample of ray 0 (as threestudio's validate_empty_rays) keeps shapes valid.
    Padding padded samples changes nothing."""
    ray_indices, t_starts, t_ends = samples
    if ray_indices.size == 0:
        ray_indices, t_starts, t_ends = np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, np.float32)
    size = bucket_size(ray_indices.size)
    t_starts = pad_rows(t_starts, size)
    t_ends = np.concatenate([t_ends, t_starts[t_ends.size:]])
    return pad_rows(ray_indices, size), t_starts, t_ends


# outputs of _render_rays that are per ray (training adds per packed sample outputs)
_PER_RAY = ("opacity", "depth", "z_variance", "comp_rgb_fg", "comp_normal")


def _normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    # torch.nn.functional.normalize: x / max(||x||, eps)
    return x / ops.clamp(ops.norm(x, dim=-1, keepdim=True), min=eps)


# auto grad_chunk_size on CPU: one 64x64 x 8 training batch in one piece, 256x256 x 4 in 8 chunks
_CPU_GRAD_CHUNK_RAYS = 32768


def _slice_samples(samples, start: int, stop: int):
    """The packed samples of rays ``start .. stop - 1``, with chunk-local ray indices."""
    ray_np, t_starts, t_ends = samples
    lo, hi = np.searchsorted(ray_np, [start, stop])
    return ray_np[lo:hi] - start, t_starts[lo:hi], t_ends[lo:hi]


class _ChunkedRayGrad(nn.Cell):
    """The backward pass of a training render done in pieces of rays (bounded autodiff memory).

    The caller renders every piece without a tape and passes the concatenated outputs in as
    ``values`` (``keys`` names them); this cell returns them unchanged, and its backward pass
    re-renders each piece under ``mindspore.grad`` (weighted by the matching slice of the output
    gradients) and sums the parameter gradients. A custom bprop cannot give gradients to
    Parameters it merely uses, so the geometry's and material's Parameters are inputs and
    receive theirs as input gradients. ``pieces``: ``(start, stop, samples, normal_noise)`` per
    piece, ``sample_rows``: the packed-sample rows of each piece's outputs.
    """

    def __init__(self, render_piece, pieces, sample_rows, keys, params):
        super().__init__()
        self.render_piece, self.pieces, self.sample_rows = render_piece, pieces, sample_rows
        self.keys, self.params = keys, list(params)

    def construct(self, *values_and_params):
        return tuple(ops.stop_gradient(v) for v in values_and_params[:len(self.keys)])

    def bprop(self, *args):
        douts = args[-1]
        inputs = args[:-2]
        values = inputs[:len(self.keys)]
        # outputs no loss term uses get zero gradients: leave them out of the re-render's sum
        used = [i for i, d in enumerate(douts) if bool((ops.abs(d).max() > 0).asnumpy())]
        grads = [ops.zeros_like(p) for p in self.params]
        first_sample = 0
        for piece, rows in zip(self.pieces, self.sample_rows):
            start, stop = piece[0], piece[1]
            rows_of = {False: slice(first_sample, first_sample + rows), True: slice(start, stop)}
            first_sample += rows
            if not used:
                continue
            weights = [(self.keys[i], douts[i][rows_of[self.keys[i] in _PER_RAY]]) for i in used]

            def weighted_sum(piece=piece, weights=weights):
                out = self.render_piece(piece)
                return sum((out[k] * d).sum() for k, d in weights)
            grads = [g + d for g, d in zip(grads, ms.grad(weighted_sum, None, self.params)())]
        return (*(ops.zeros_like(v) for v in values), *grads)


@threestudio.register("nerf-volume-renderer")
class NeRFVolumeRenderer(VolumeRenderer):
    @dataclass
    class Config(VolumeRenderer.Config):
        num_samples_per_ray: int = 512
        eval_chunk_size: int = 160000
        randomized: bool = True

        near_plane: float = 0.0
        far_plane: float = 1e10

        # Port option: rays per piece of the training backward pass (0: all at once, as the
        # original; None: auto, 32768 on CPU and 0 elsewhere). A 256x256 x 4 render takes ~20 GB
        # of autodiff memory in one piece. Same outputs and gradients either way.
        grad_chunk_size: Optional[int] = None

        return_comp_normal: bool = False
        return_normal_perturb: bool = False

        # in ["occgrid", "proposal", "importance"]; only "occgrid" is ported
        estimator: str = "occgrid"

        # for occgrid
        grid_prune: bool = True
        prune_alpha_threshold: bool = True
        # port options (nerfacc's defaults, fixed in threestudio): the grid is re-estimated every
        # grid_update_interval steps, from all cells during the first grid_warmup_steps
        grid_update_interval: int = 16
        grid_warmup_steps: int = 256

        # for proposal / importance (accepted so original configs parse)
        proposal_network_config: Optional[dict] = None
        prop_optimizer_config: Optional[dict] = None
        prop_scheduler_config: Optional[dict] = None
        num_samples_per_ray_proposal: int = 64
        num_samples_per_ray_importance: int = 64

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        if self.cfg.estimator != "occgrid":
            raise NotImplementedError(
                f"nerf-volume-renderer estimator '{self.cfg.estimator}' is not ported; use 'occgrid'")
        self.estimator = OccupancyGrid(roi_aabb=self.bbox.reshape(-1), resolution=32, levels=1)
        if not self.cfg.grid_prune:
            self.estimator.fill(True)
        self.render_step_size = 1.732 * 2 * self.cfg.radius / self.cfg.num_samples_per_ray
        # sample counts of the last call (summed over eval chunks), for benchmarks and tests
        self.stats = {}

    @property
    def randomized(self) -> bool:
        return self.training and self.cfg.randomized

    # ------------------------------------------------------------------ sampling
    def _sample(self, rays_o: np.ndarray, rays_d: np.ndarray, shard=None):
        """Packed ``(ray_indices, t_starts, t_ends)`` (NumPy) for flattened rays; ``shard``: this
        data-parallel rank's rows of the whole batch (its ray jitter is drawn for all rows)."""
        grid_prune = self.cfg.grid_prune
        alpha_prune = grid_prune and self.cfg.prune_alpha_threshold

        def sigma_fn(t_starts, t_ends, ray_indices):
            t_mid = (t_starts + t_ends)[:, None] * 0.5
            positions = (rays_o[ray_indices] + rays_d[ray_indices] * t_mid).astype(np.float32)
            # no autodiff here even in training: chunked, as all candidates at once at 256x256 x 4
            # (~10M) take more than 24 GB of transient activations
            chunk = self.cfg.eval_chunk_size
            return call_bucketed(lambda rows: chunk_batch(self.geometry.forward_density, chunk, Tensor(rows)),
                                 positions)[:, 0]

        return self.estimator.sampling(
            rays_o, rays_d,
            sigma_fn=sigma_fn if alpha_prune else None,
            near_plane=self.cfg.near_plane,
            far_plane=self.cfg.far_plane,
            render_step_size=self.render_step_size,
            alpha_thre=0.01 if alpha_prune else 0.0,
            stratified=self.randomized,
            cone_angle=0.0,
            early_stop_eps=1e-4 if grid_prune else 0.0,
            shard=shard,
        )

    def _sample_and_count(self, rays_o: Tensor, rays_d: Tensor, shard=None):
        ray_np, t_starts_np, t_ends_np = self._sample(rays_o.asnumpy(), rays_d.asnumpy(), shard)
        for key, value in (("n_rays", rays_o.shape[0]), ("n_marched", self.estimator.last_num_marched),
                           ("n_grid", self.estimator.last_num_grid), ("n_samples", ray_np.size)):
            self.stats[key] = self.stats.get(key, 0) + value
        return ray_np, t_starts_np, t_ends_np

    def _render_rays(self, rays_o: Tensor, rays_d: Tensor, light_positions: Tensor, samples=None,
                     normal_noise: Optional[np.ndarray] = None, **kwargs) -> dict:
        """Render flattened rays; per-ray outputs ``[N, C]`` plus (training) packed samples ``[M, C]``.

        rays_o, rays_d, light_positions: (N, 3). ``samples``: packed ``(ray_indices, t_starts,
        t_ends)`` to use instead of sampling (padded here, see ``_pad_samples``);
        ``normal_noise``: (M, 3) offsets for ``normal_perturb`` (drawn here if None).
        """
        n_rays = rays_o.shape[0]
        samples = samples if samples is not None else self._sample_and_count(rays_o, rays_d)
        ray_np, t_starts_np, t_ends_np = _padded(samples)
        layout = PackedLayout(ray_np, n_rays)
        ray_indices = layout.ray_indices
        t_starts, t_ends = Tensor(t_starts_np)[:, None], Tensor(t_ends_np)[:, None]
        t_origins = ops.gather(rays_o, ray_indices, 0)
        t_dirs = ops.gather(rays_d, ray_indices, 0)
        t_light_positions = ops.gather(light_positions, ray_indices, 0)
        t_positions = (t_starts + t_ends) / 2.0
        positions = t_origins + t_dirs * t_positions
        t_intervals = t_ends - t_starts

        chunk = 0 if self.training else self.cfg.eval_chunk_size
        # evaluation also renders normals whenever the geometry defines them (test videos)
        output_normal = self.material.requires_normal or (
            not self.training and getattr(self.geometry.cfg, "normal_type", None) is not None)
        geo_out = chunk_batch(self.geometry, chunk, positions, output_normal=output_normal, viewdirs=t_dirs)
        rgb_fg_all = chunk_batch(self.material, chunk, viewdirs=t_dirs, positions=positions,
                                 light_positions=t_light_positions, **geo_out, **kwargs)

        want_normal = "normal" in geo_out and (not self.training or self.cfg.return_comp_normal)
        values = {"comp_rgb_fg": rgb_fg_all}
        if want_normal:
            values["comp_normal"] = geo_out["normal"]
        out = composite(t_starts[:, 0], t_ends[:, 0], geo_out["density"].reshape(-1), layout, values)
        if want_normal:
            # for visualization: unit normals mapped to [0, 1], faded by opacity
            out["comp_normal"] = (_normalize(out["comp_normal"]) + 1.0) / 2.0 * out["opacity"]
        if self.training:
            out.update({"t_points": t_positions, "t_intervals": t_intervals, "t_dirs": t_dirs,
                        "ray_indices": ray_indices, "points": positions, **geo_out})
            if "normal" in geo_out and self.cfg.return_normal_perturb:
                if normal_noise is None:
                    normal_noise = self._normal_noise(ray_np.size)
                out["normal_perturb"] = self.geometry(
                    positions + Tensor(normal_noise), output_normal=self.material.requires_normal,
                    viewdirs=t_dirs)["normal"]
        else:
            out = {k: v for k, v in out.items() if k in _PER_RAY}
        return out

    def _normal_noise(self, n_samples: int) -> np.ndarray:
        return np.random.randn(n_samples, 3).astype(np.float32) * 1e-2

    # ------------------------------------------------------------------ forward
    def construct(self, rays_o: Tensor, rays_d: Tensor, light_positions: Tensor,
                  bg_color: Optional[Tensor] = None, shard=None, **kwargs) -> dict:
        """rays_o, rays_d: (B, H, W, 3); light_positions: (B, 3); bg_color: (B, H, W, C), (B, C) or (C,).

        Returns images ``comp_rgb``, ``comp_rgb_fg``, ``comp_rgb_bg`` (B, H, W, 3), ``opacity``,
        ``depth``, ``z_variance`` (B, H, W, 1), ``comp_normal`` (B, H, W, 3) when normals are
        rendered; in training also the packed samples for the losses: ``weights``, ``t_points``,
        ``t_intervals`` (M, 1), ``t_dirs``, ``points`` (M, 3), ``ray_indices`` (M,) and the
        geometry's outputs (``density`` (M, 1), ``features``, ``normal`` ...). The keys are the
        same whatever ``grad_chunk_size`` and device (M counts zero-weight padding samples).
        ``shard``: the data-parallel rank's part of the batch (threestudio.utils.distributed).
        """
        batch_size, height, width = rays_o.shape[:3]
        n_rays = batch_size * height * width
        rays_o_flat, rays_d_flat = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        light_flat = ops.broadcast_to(light_positions.reshape(-1, 1, 3),
                                      (batch_size, height * width, 3)).reshape(-1, 3)
        self.stats = {}
        # the material's random choices (shading mode, light) are drawn once per render, so every
        # piece of a render in pieces (and its re-render in the backward pass) shares them
        options = self.material.render_options(**kwargs)
        kwargs = {**kwargs, **options}

        grad_chunk = self.grad_chunk_size
        if self.training and 0 < grad_chunk < n_rays:
            res = self._render_rays_chunked_grad(rays_o_flat, rays_d_flat, light_flat, grad_chunk, shard, **kwargs)
        elif self.training:
            res = self._render_rays(rays_o_flat, rays_d_flat, light_flat,
                                    samples=self._sample_and_count(rays_o_flat, rays_d_flat, shard), **kwargs)
        else:
            # bound memory: sample and composite ``eval_chunk_size`` rays at a time
            step = self.cfg.eval_chunk_size if self.cfg.eval_chunk_size > 0 else n_rays
            parts = [self._render_rays(rays_o_flat[s:s + step], rays_d_flat[s:s + step],
                                       light_flat[s:s + step], **options) for s in range(0, n_rays, step)]
            res = {k: ops.concat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        comp_rgb_bg = self.background(dirs=rays_d)

        if bg_color is None:
            bg_color = comp_rgb_bg
        elif bg_color.shape[:-1] == (batch_size,):
            # e.g. one constant random colour per view
            bg_color = ops.broadcast_to(bg_color.reshape(batch_size, 1, 1, -1),
                                        (batch_size, height, width, bg_color.shape[-1]))
        if bg_color.shape[:-1] == (batch_size, height, width):
            bg_color = bg_color.reshape(n_rays, -1)

        opacity = res["opacity"]
        comp_rgb_fg = res["comp_rgb_fg"]
        comp_rgb = comp_rgb_fg + bg_color * (1.0 - opacity)

        def image(x):
            return x.reshape(batch_size, height, width, -1)

        out = {
            "comp_rgb": image(comp_rgb),
            "comp_rgb_fg": image(comp_rgb_fg),
            "comp_rgb_bg": image(comp_rgb_bg),
            "opacity": image(opacity),
            "depth": image(res["depth"]),
            "z_variance": image(res["z_variance"]),
        }
        if "comp_normal" in res:
            out["comp_normal"] = image(res["comp_normal"])
        if self.training:
            # packed per-sample tensors (weights, t_points, ..., geometry outputs) for the losses
            out.update({k: v for k, v in res.items() if k not in _PER_RAY})
        return out

    @property
    def grad_chunk_size(self) -> int:
        size = self.cfg.grad_chunk_size
        if size is None:  # auto: bound host memory on CPU, the original's one-piece autodiff elsewhere
            size = _CPU_GRAD_CHUNK_RAYS if ms.get_context("device_target") == "CPU" else 0
        return int(size)

    def _render_rays_chunked_grad(self, rays_o: Tensor, rays_d: Tensor, light_positions: Tensor, chunk: int,
                                  shard=None, **kwargs) -> dict:
        """The training outputs of ``_render_rays`` (same keys, values equal; per-sample outputs
        padded per piece) with a backward pass that holds the activations of ``chunk`` rays at a
        time (see ``_ChunkedRayGrad``). The samples (and perturbation noise) are drawn once, so
        the backward pass re-renders exactly the samples of the forward pass."""
        samples = self._sample_and_count(rays_o, rays_d, shard)
        perturb = self.cfg.return_normal_perturb
        pieces = []
        for start in range(0, rays_o.shape[0], chunk):
            stop = min(start + chunk, rays_o.shape[0])
            piece_samples = _padded(_slice_samples(samples, start, stop))
            noise = self._normal_noise(piece_samples[0].size) if perturb else None
            pieces.append((start, stop, piece_samples, noise))

        def render_piece(piece):
            start, stop, piece_samples, noise = piece
            return self._render_rays(rays_o[start:stop], rays_d[start:stop], light_positions[start:stop],
                                     samples=piece_samples, normal_noise=noise, **kwargs)

        with no_grad():
            parts = [render_piece(piece) for piece in pieces]
        keys = [k for k in parts[0] if k != "ray_indices"]
        values = [ops.concat([p[k] for p in parts]) for k in keys]
        params = self.geometry.trainable_params() + self.material.trainable_params()
        cell = _ChunkedRayGrad(render_piece, pieces, [p["weights"].shape[0] for p in parts], keys, params)
        out = dict(zip(keys, cell(*values, *params)))
        out["ray_indices"] = index_tensor(np.concatenate([piece[2][0] + piece[0] for piece in pieces]))
        return out

    # ------------------------------------------------------------------ grid updates
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if not (self.cfg.grid_prune and self.training and not on_load_weights):
            return

        def occ_eval_fn(x):
            # density * step approximates 1 - exp(-density * step) (first-order Taylor)
            return self.geometry.forward_density(x) * self.render_step_size

        self.estimator.update_every_n_steps(step=global_step, occ_eval_fn=occ_eval_fn,
                                            warmup_steps=self.cfg.grid_warmup_steps,
                                            n=self.cfg.grid_update_interval)

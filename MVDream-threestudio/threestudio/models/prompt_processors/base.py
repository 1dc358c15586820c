"""Prompt processors: text -> (view-dependent) text embeddings for the guidance
(port of threestudio's ``prompt_processors/base.py``).

Differences from threestudio, all forced by having no Hugging Face/torch here:
  * the text encoder is a callable handed in by the system (``text_encoder``: list of
    prompts -> [N, 77, C] embeddings; the system passes the guidance's ``encode_text``, i.e.
    the diffusion checkpoint's own text tower) together with ``cache_key`` identifying its
    weights; ``pretrained_model_name_or_path`` and ``spawn`` are accepted for compatibility
    and have no effect (logged once);
  * the disk cache holds ``<cache_dir>/<sha256(cache_key-prompt)>.npy`` files, by default under
    the user's cache folder (``user_cache_dir("text_embeddings")``), never relative to the
    working directory; ``cache_key=None`` (random weights) keeps the embeddings in memory only;
  * prompt debiasing (needs a BERT model) is not available.
"""
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from threestudio.utils.base import BaseObject
from threestudio.utils.config import ConfigError, log_ignored_keys
from threestudio.utils.misc import user_cache_dir

logger = logging.getLogger("threestudio")


def hash_prompt(model_key: str, prompt: str) -> str:
    import hashlib
    return hashlib.sha256(f"{model_key}-{prompt}".encode()).hexdigest()


def shift_azimuth_deg(azimuth):
    """Azimuth in degrees mapped to [-180, 180)."""
    return (azimuth + 180) % 360 - 180


def _np(x) -> np.ndarray:
    return x.asnumpy() if isinstance(x, Tensor) else np.asarray(x)


def shifted_exponential_decay(a, b, c, r):
    return a * np.exp(-b * r) + c


@dataclass
class DirectionConfig:
    name: str
    prompt: Callable[[str], str]
    negative_prompt: Callable[[str], str]
    condition: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (ele, azi, dist) -> bool mask


def make_directions(cfg) -> List[DirectionConfig]:
    """side / front / back / overhead, later entries overriding earlier ones (threestudio's order)."""
    if cfg.view_dependent_prompt_front:
        templates = {"side": "side view of {}", "front": "front view of {}", "back": "backside view of {}",
                     "overhead": "overhead view of {}"}
    else:
        templates = {name: "{}, " + name + " view" for name in ("side", "front", "back", "overhead")}
    conditions = {
        "side": lambda ele, azi, dis: np.ones_like(ele, dtype=bool),
        "front": lambda ele, azi, dis: np.abs(shift_azimuth_deg(azi)) < cfg.front_threshold,
        "back": lambda ele, azi, dis: np.abs(shift_azimuth_deg(azi)) > 180 - cfg.back_threshold,
        "overhead": lambda ele, azi, dis: ele > cfg.overhead_threshold,
    }
    return [DirectionConfig(name, templates[name].format, lambda s: s, conditions[name]) for name in templates]


@dataclass
class PromptProcessorOutput:
    text_embeddings: Tensor  # [1, N, C]
    uncond_text_embeddings: Tensor  # [1, N, C]
    text_embeddings_vd: Tensor  # [n_directions, N, C]
    uncond_text_embeddings_vd: Tensor
    directions: List[DirectionConfig]
    direction2idx: Dict[str, int]
    use_perp_neg: bool
    perp_neg_f_sb: Tuple[float, float, float]
    perp_neg_f_fsb: Tuple[float, float, float]
    perp_neg_f_fs: Tuple[float, float, float]
    perp_neg_f_sf: Tuple[float, float, float]
    prompt: str
    prompts_vd: List[str]

    def direction_index(self, elevation, azimuth, camera_distances) -> np.ndarray:
        ele, azi, dis = _np(elevation), _np(azimuth), _np(camera_distances)
        idx = np.zeros(ele.shape, np.int32)
        for d in self.directions:
            idx[d.condition(ele, azi, dis)] = self.direction2idx[d.name]
        return idx

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting: bool = True):
        """[2B, N, C] = cat([cond x B, uncond x B]): cond FIRST (threestudio's order)."""
        batch_size = _np(elevation).shape[0]
        if view_dependent_prompting:
            idx = Tensor(self.direction_index(elevation, azimuth, camera_distances))
            cond = ops.gather(self.text_embeddings_vd, idx, 0)
            uncond = ops.gather(self.uncond_text_embeddings_vd, idx, 0)
        else:
            shape = (batch_size,) + tuple(self.text_embeddings.shape[1:])
            cond = ops.broadcast_to(self.text_embeddings, shape)
            uncond = ops.broadcast_to(self.uncond_text_embeddings, shape)
        return ops.concat([cond, uncond], axis=0)

    def get_text_embeddings_perp_neg(self, elevation, azimuth, camera_distances,
                                     view_dependent_prompting: bool = True):
        """Perp-Neg: ([4B, N, C] = cat([pos x B, uncond x B, neg x 2B]), weights [B, 2])."""
        if not view_dependent_prompting:
            raise ValueError("Perp-Neg only works with view-dependent prompting")
        idx = self.direction_index(elevation, azimuth, camera_distances)
        vd = self.text_embeddings_vd
        side, front, back = (vd[self.direction2idx[n]] for n in ("side", "front", "back"))
        overhead = self.direction2idx["overhead"]
        pos, neg, weights = [], [], []
        for i, azi in zip(idx, shift_azimuth_deg(_np(azimuth).astype(np.float64)).tolist()):
            if i == overhead:  # no interpolation; dummy negatives with weight 0
                pos.append(vd[overhead])
                neg += [self.uncond_text_embeddings_vd[int(i)]] * 2
                weights += [0.0, 0.0]
            elif abs(azi) < 90:  # front-side: r = 1 complete front, 0 complete side
                r = 1 - abs(azi) / 90
                pos.append(r * front + (1 - r) * side)
                neg += [front, side]
                weights += [-shifted_exponential_decay(*self.perp_neg_f_fs, r),
                            -shifted_exponential_decay(*self.perp_neg_f_sf, 1 - r)]
            else:  # side-back: r = 1 complete side, 0 complete back
                r = 2.0 - abs(azi) / 90
                pos.append(r * side + (1 - r) * back)
                neg += [side, front]
                weights += [-shifted_exponential_decay(*self.perp_neg_f_sb, r),
                            -shifted_exponential_decay(*self.perp_neg_f_fsb, r)]
        uncond = ops.gather(self.uncond_text_embeddings_vd, Tensor(idx), 0)
        embeddings = ops.concat([ops.stack(pos), uncond, ops.stack(neg)], axis=0)
        return embeddings, Tensor(np.asarray(weights, np.float32).reshape(-1, 2))


class PromptProcessor(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a hamburger"

        # manually assigned view-dependent prompts
        prompt_front: Optional[str] = None
        prompt_side: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None

        negative_prompt: str = ""
        pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"  # no effect, see module doc
        overhead_threshold: float = 60.0
        front_threshold: float = 45.0
        back_threshold: float = 45.0
        view_dependent_prompt_front: bool = False
        use_cache: bool = True
        spawn: bool = True  # no effect: the encoder runs in-process

        # perp neg: weights a * exp(-b * r) + c
        use_perp_neg: bool = False
        perp_neg_f_sb: Tuple[float, float, float] = (1, 0.5, -0.606)
        perp_neg_f_fsb: Tuple[float, float, float] = (1, 0.5, +0.967)
        perp_neg_f_fs: Tuple[float, float, float] = (4, 0.5, -2.426)  # f_fs(1) = 0, a, b > 0
        perp_neg_f_sf: Tuple[float, float, float] = (4, 0.5, -2.426)

        # prompt debiasing (not available in this port)
        use_prompt_debiasing: bool = False
        pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"
        prompt_debiasing_mask_ids: Optional[List[int]] = None

        # port addition
        cache_dir: Optional[str] = None  # None: user_cache_dir("text_embeddings")
        prompt_library: str = "load/prompt_library.json"  # for "lib:" prompts

    cfg: Config

    def configure(self, text_encoder: Optional[Callable] = None, cache_key: Optional[str] = None) -> None:
        """``text_encoder``: list of prompts -> [N, 77, C] embeddings (Tensor or array); None
        works only when every prompt is already in the disk cache. ``cache_key``: identifies the
        encoder's weights in the disk cache (None: no cache)."""
        cfg = self.cfg
        if cfg.use_prompt_debiasing:
            raise ConfigError("use_prompt_debiasing is not supported in this port (it needs a BERT model)")
        log_ignored_keys(cfg, ("pretrained_model_name_or_path", "spawn"), "system.prompt_processor")
        self.cache_dir = cfg.cache_dir or user_cache_dir("text_embeddings")
        self.text_encoder, self.cache_key = text_encoder, cache_key
        self.encoder_calls = 0
        self.directions = make_directions(cfg)
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}

        self.prompt = self.preprocess_prompt(cfg.prompt)
        self.negative_prompt = cfg.negative_prompt
        self.prompts_vd = [getattr(cfg, f"prompt_{d.name}") or d.prompt(self.prompt) for d in self.directions]
        self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]

        table = self.embed_prompts([self.prompt, self.negative_prompt] + self.prompts_vd + self.negative_prompts_vd)

        def stack(prompts):
            return Tensor(np.stack([table[p] for p in prompts]), ms.float32)
        self.text_embeddings = stack([self.prompt])
        self.uncond_text_embeddings = stack([self.negative_prompt])
        self.text_embeddings_vd = stack(self.prompts_vd)
        self.uncond_text_embeddings_vd = stack(self.negative_prompts_vd)

    def preprocess_prompt(self, prompt: str) -> str:
        """``lib:word1_word2`` picks the unique prompt of the library containing all words."""
        if not prompt.startswith("lib:"):
            return prompt
        if not os.path.exists(self.cfg.prompt_library):
            raise FileNotFoundError(f"{self.cfg.prompt_library}: prompt library not found (needed for '{prompt}')")
        with open(self.cfg.prompt_library) as f:
            library = json.load(f)["dreamfusion"]
        keywords = prompt[4:].lower().split("_")
        matches = [p for p in library if all(k in p.lower() for k in keywords)]
        if len(matches) != 1:
            raise ValueError(f"{len(matches)} prompts of the library match the keywords {keywords} (need exactly 1)")
        return matches[0]

    def _cache_path(self, prompt: str) -> str:
        return os.path.join(self.cache_dir, f"{hash_prompt(self.cache_key, prompt)}.npy")

    def embed_prompts(self, prompts: List[str]) -> Dict[str, np.ndarray]:
        """prompt -> [N, C] float32 embedding, from the disk cache where possible; the
        others are encoded in one call (and written to the cache)."""
        table = {}
        caching = self.cache_key is not None
        if caching and self.cfg.use_cache:
            for prompt in dict.fromkeys(prompts):
                if os.path.exists(self._cache_path(prompt)):
                    table[prompt] = np.load(self._cache_path(prompt))
        todo = [p for p in dict.fromkeys(prompts) if p not in table]
        if todo:
            if self.text_encoder is None:
                raise ValueError(f"prompt processor: no text encoder given and {len(todo)} prompt(s) not in the "
                                 f"cache {self.cache_dir}; pass text_encoder= (the system passes guidance.encode_text)")
            embeddings = _np(self.text_encoder(todo)).astype(np.float32)
            self.encoder_calls += 1
            if caching:
                os.makedirs(self.cache_dir, exist_ok=True)
            for prompt, embedding in zip(todo, embeddings):
                table[prompt] = embedding
                if caching:  # write-then-rename: a concurrent run never reads a partial file
                    path = self._cache_path(prompt)
                    with open(path + f".{os.getpid()}.tmp", "wb") as f:
                        np.save(f, embedding)
                    os.replace(path + f".{os.getpid()}.tmp", path)
        return table

    def __call__(self) -> PromptProcessorOutput:
        cfg = self.cfg
        return PromptProcessorOutput(
            text_embeddings=self.text_embeddings, uncond_text_embeddings=self.uncond_text_embeddings,
            text_embeddings_vd=self.text_embeddings_vd, uncond_text_embeddings_vd=self.uncond_text_embeddings_vd,
            directions=self.directions, direction2idx=self.direction2idx, use_perp_neg=cfg.use_perp_neg,
            perp_neg_f_sb=tuple(cfg.perp_neg_f_sb), perp_neg_f_fsb=tuple(cfg.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(cfg.perp_neg_f_fs), perp_neg_f_sf=tuple(cfg.perp_neg_f_sf),
            prompt=self.prompt, prompts_vd=self.prompts_vd)

"""Prompt processor: embeddings from the MVDream text encoder (tiny checkpoint), the disk
cache, view-dependent prompt selection, config errors."""
import numpy as np
import pytest
from omegaconf import OmegaConf

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.utils.config import ConfigError

pytestmark = [pytest.mark.parity]

PROMPT = "an astronaut riding a horse, 3d asset"  # the prompt of ldm_tiny.npz's `cond`


def assert_close(actual, expected):
    """fp32 results of mathematically equal computations: ~1e-6 of the values' scale."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.fixture(scope="module")
def guidance(parity_dir):
    return threestudio.find("multiview-diffusion-guidance")(
        {"config_path": str(parity_dir / "tiny_mvdream.yaml"), "ckpt_path": str(parity_dir / "tiny_mvdream.pt"),
         "half_precision_weights": False})


class CountingEncoder:
    def __init__(self, encode):
        self.encode, self.calls, self.prompts = encode, 0, []

    def __call__(self, prompts):
        self.calls += 1
        self.prompts += list(prompts)
        return self.encode(prompts)


def make(cfg, **kwargs):
    return threestudio.find("stable-diffusion-prompt-processor")(cfg, **kwargs)


def test_embeddings_and_disk_cache(guidance, parity_dir, tmp_path):
    assert threestudio.find("mvdream-prompt-processor") is threestudio.find("stable-diffusion-prompt-processor")
    cfg = {"prompt": PROMPT, "negative_prompt": "", "cache_dir": str(tmp_path / "cache")}
    encoder = CountingEncoder(guidance.encode_text)
    key = guidance.text_encoder_key
    assert key is not None and "tiny_mvdream.pt" in key
    first = make(cfg, text_encoder=encoder, cache_key=key)
    vd = [f"{PROMPT}, {name} view" for name in ("side", "front", "back", "overhead")]
    assert first.prompts_vd == vd and first.negative_prompts_vd == [""] * 4
    assert encoder.calls == 1 and sorted(encoder.prompts) == sorted([PROMPT, ""] + vd)  # deduplicated, one batch

    # The embeddings are the model's own conditioning, and match PyTorch's (ldm_tiny.npz).
    # (another batch composition: equal to fp32 rounding, not bit for bit, on other CPUs)
    model = guidance.model
    assert_close(first.text_embeddings.asnumpy(), model.get_learned_conditioning([PROMPT]).asnumpy())
    assert_close(first.text_embeddings_vd.asnumpy(), model.get_learned_conditioning(vd).asnumpy())
    ldm = np.load(parity_dir / "ldm_tiny.npz")
    for actual, golden in [(first.text_embeddings, ldm["cond"]), (first.uncond_text_embeddings, ldm["uncond"])]:
        assert np.abs(actual.asnumpy() - golden).max() <= 1e-5 * np.abs(golden).max()

    # One file per distinct prompt; a second processor reads them without the encoder.
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6
    second_encoder = CountingEncoder(guidance.encode_text)
    second = make(cfg, text_encoder=second_encoder, cache_key=key)
    assert second_encoder.calls == 0
    np.testing.assert_array_equal(second.text_embeddings_vd.asnumpy(), first.text_embeddings_vd.asnumpy())
    assert make(cfg, text_encoder=None, cache_key=key).uncond_text_embeddings.shape == (1, 77, 64)
    # Another model key, or use_cache=False, encodes again.
    make(cfg, text_encoder=second_encoder, cache_key=key + "-other")
    make({**cfg, "use_cache": False}, text_encoder=second_encoder, cache_key=key)
    assert second_encoder.calls == 2
    # No encoder and nothing cached: a one-line error (no other encoder is ever picked up).
    with pytest.raises(ValueError) as err:
        make({**cfg, "prompt": "a dog"}, cache_key=key)
    assert "\n" not in str(err.value) and "text_encoder" in str(err.value)


def test_default_cache_dir_is_the_user_cache(tmp_path, monkeypatch):
    """Without cache_dir, embeddings go under the user's cache folder, not the working directory."""
    monkeypatch.chdir(tmp_path / ".")
    monkeypatch.setenv("THREESTUDIO_CACHE_DIR", str(tmp_path / "user-cache"))
    processor = make({"prompt": "p", "negative_prompt": "neg"}, text_encoder=fake_encoder, cache_key="key")
    files = sorted((tmp_path / "user-cache" / "text_embeddings").glob("*.npy"))
    assert processor.cache_dir == str(tmp_path / "user-cache" / "text_embeddings") and len(files) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user-cache"]


def fake_encoder(prompts):
    """Embedding [77, 4] filled with a code of the prompt, to identify it after selection."""
    codes = {"p, side view": 1, "p, front view": 2, "p, back view": 3, "p, overhead view": 4, "p": 5, "neg": 9}
    return np.stack([np.full((77, 4), codes[p], np.float32) for p in prompts])


def test_view_dependent_selection(tmp_path):
    processor = make({"prompt": "p", "negative_prompt": "neg", "front_threshold": 30.0, "back_threshold": 30.0},
                     text_encoder=fake_encoder, cache_key=None)  # no key: nothing written
    assert not (tmp_path / ".threestudio_cache").exists()
    utils = processor()
    assert isinstance(utils, PromptProcessorOutput)
    azimuth = np.array([0, 29, 31, 90, -90, 149, 151, 180, -179, 360, 10], np.float32)
    elevation = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 61], np.float32)
    distance = np.ones_like(azimuth)
    expected = [2, 2, 1, 1, 1, 1, 3, 3, 3, 2, 4]  # 1 side, 2 front, 3 back, 4 overhead (wins over front)
    emb = utils.get_text_embeddings(elevation, azimuth, distance, view_dependent_prompting=True).asnumpy()
    assert emb.shape == (22, 77, 4)
    np.testing.assert_array_equal(emb[:11, 0, 0], expected)  # cond first ...
    np.testing.assert_array_equal(emb[11:, 0, 0], [9] * 11)  # ... then uncond
    plain = utils.get_text_embeddings(elevation, azimuth, distance, view_dependent_prompting=False).asnumpy()
    np.testing.assert_array_equal(plain[:, 0, 0], [5] * 11 + [9] * 11)

    front_style = make({"prompt": "p", "view_dependent_prompt_front": True, "prompt_back": "custom back"},
                       text_encoder=lambda ps: np.zeros((len(ps), 77, 4), np.float32), cache_key=None)
    assert front_style.prompts_vd == ["side view of p", "front view of p", "custom back", "overhead view of p"]


def test_perp_neg_embeddings():
    utils = make({"prompt": "p", "negative_prompt": "neg"}, text_encoder=fake_encoder, cache_key=None)()
    azimuth = np.array([0.0, 45.0, 135.0, 10.0], np.float32)
    elevation = np.array([0.0, 0.0, 0.0, 80.0], np.float32)
    emb, weights = utils.get_text_embeddings_perp_neg(elevation, azimuth, np.ones(4, np.float32))
    emb = emb.asnumpy()
    assert emb.shape == (16, 77, 4) and weights.shape == (4, 2)
    np.testing.assert_allclose(emb[:4, 0, 0], [2, 1.5, 2, 4])  # front; front/side mix; side/back mix; overhead
    np.testing.assert_array_equal(emb[4:8, 0, 0], [9] * 4)
    np.testing.assert_array_equal(emb[8:, 0, 0], [2, 1, 2, 1, 1, 2, 9, 9])
    f = lambda a, b, c, r: a * np.exp(-b * r) + c  # noqa: E731
    np.testing.assert_allclose(weights.asnumpy()[0], [-f(4, 0.5, -2.426, 1.0), -f(4, 0.5, -2.426, 0.0)], rtol=1e-6)
    np.testing.assert_allclose(weights.asnumpy()[3], [0, 0])


def test_config_errors():
    with pytest.raises(ConfigError) as err:  # the MVDream config's `prompt: ???`
        make(OmegaConf.create({"prompt": "???"}), text_encoder=fake_encoder)
    assert str(err.value) == "'prompt' is missing (???) in the config of MVDreamPromptProcessor.Config"
    with pytest.raises(ConfigError, match="prompt_typo"):
        make({"prompt": "p", "prompt_typo": 1}, text_encoder=fake_encoder)
    with pytest.raises(ConfigError, match="debiasing"):
        make({"prompt": "p", "use_prompt_debiasing": True}, text_encoder=fake_encoder)
    # Keys of the original configs are accepted.
    make({"prompt": "p", "negative_prompt": "neg", "pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base", "spawn": False,
          "use_perp_neg": True, "perp_neg_f_sb": [1, 0.5, -0.6]}, text_encoder=fake_encoder)


def test_guidance_takes_embeddings_from_prompt_utils(guidance, tmp_path):
    """Without text_embeddings the guidance asks prompt_utils (view_dependent_prompting=False)."""
    from mindspore import Tensor
    utils = make({"prompt": PROMPT, "cache_dir": str(tmp_path)}, text_encoder=guidance.encode_text,
                 cache_key=guidance.text_encoder_key)()
    rng = np.random.default_rng(3)
    latents, noise = (Tensor(rng.standard_normal((4, 4, 8, 8)).astype(np.float32)) for _ in range(2))
    ele, azi, dist = np.zeros(4, np.float32), np.array([0, 90, 180, 270], np.float32), np.ones(4, np.float32)
    c2w = Tensor(np.tile(np.eye(4, dtype=np.float32), (4, 1, 1)))
    implicit = guidance(latents, utils, ele, azi, dist, c2w, input_is_latent=True, timestep=500, noise=noise)
    explicit = guidance(latents, None, None, None, None, c2w, input_is_latent=True, timestep=500, noise=noise,
                        text_embeddings=utils.get_text_embeddings(ele, azi, dist, view_dependent_prompting=False))
    assert implicit["loss_sds"].asnumpy() == explicit["loss_sds"].asnumpy()

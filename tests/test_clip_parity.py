"""Tokenizer and FrozenOpenCLIPEmbedder against the original PyTorch goldens (clip_tiny.npz)."""
import json

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mvdream.checkpoint import load_state_dict_into
from mvdream.ldm.modules.encoders.modules import FrozenOpenCLIPEmbedder
from mvdream.ldm.modules.encoders.tokenizer import get_tokenizer, tokenize

pytestmark = [pytest.mark.parity]

PREFIX = "cond_stage_model.model."


@pytest.fixture(scope="module")
def golden(parity_dir):
    return dict(np.load(parity_dir / "clip_tiny.npz"))


@pytest.fixture(scope="module")
def prompts(parity_dir):
    return json.loads((parity_dir / "clip_prompts.json").read_text(encoding="utf-8"))


def _embedder(tiny_config, tiny_state_dict, **overrides):
    params = dict(tiny_config.model.params.cond_stage_config.params)
    params.update(overrides)
    emb = FrozenOpenCLIPEmbedder(**params)
    load_state_dict_into(emb.model, tiny_state_dict, prefix=PREFIX, strict=True)
    return emb


@pytest.fixture(scope="module")
def embedder(tiny_config, tiny_state_dict):
    return _embedder(tiny_config, tiny_state_dict)


def _rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_tokens_exact(golden, prompts):
    tokens = tokenize(prompts)
    assert tokens.dtype == np.int64 and tokens.shape == (7, 77)
    np.testing.assert_array_equal(tokens, golden["tokens"])


def test_token_lengths(golden, prompts):
    np.testing.assert_array_equal(get_tokenizer().token_lengths(prompts), golden["token_lengths"])
    # Truncated prompt ends in EOT; short ones are zero-padded after EOT.
    tokens = tokenize(prompts)
    assert tokens[3, -1] == 49407 and tokens[0, :3].tolist() == [49406, 49407, 0]


def test_tokenizer_roundtrip_and_single_string():
    tok = get_tokenizer()
    assert tok.vocab_size == 49408
    assert tok.decode(tok.encode("an astronaut riding a horse")).strip() == "an astronaut riding a horse"
    np.testing.assert_array_equal(tokenize("a cat"), tokenize(["a cat"]))


def test_config_and_strict_keys(tiny_state_dict, embedder):
    assert embedder.layer == "penultimate" and embedder.layer_idx == 1
    names = {PREFIX + n for n, _ in embedder.model.parameters_and_names()}
    assert names == {k for k in tiny_state_dict if k.startswith(PREFIX)}
    assert sum(int(np.prod(p.shape)) for p in embedder.model.get_parameters()) == 3_319_169
    assert all(not p.requires_grad for p in embedder.get_parameters())


def test_attn_mask(golden, embedder):
    mask, ref = embedder.model.attn_mask.asnumpy(), golden["attn_mask"]
    np.testing.assert_array_equal(np.isneginf(mask), np.isneginf(ref))
    np.testing.assert_array_equal(np.isneginf(ref), np.triu(np.ones((77, 77), bool), 1))
    finite = np.isfinite(ref)
    assert np.all(np.isfinite(mask) == finite) and np.all(mask[finite] == 0) and np.all(ref[finite] == 0)


def test_x_embed(golden, embedder):
    x = embedder.model.embed(Tensor(golden["tokens"])).asnumpy()
    assert _rel_err(x, golden["x_embed"]) <= 1e-6


def test_penultimate_matches(golden, prompts, embedder):
    z = embedder.encode(prompts)
    assert z.shape == (7, 77, 64) and z.dtype == ms.float32
    z = z.asnumpy()
    assert np.abs(z - golden["z_penultimate"]).max() <= 1e-4
    assert _rel_err(z, golden["z_penultimate"]) <= 1e-5


def test_last_layer_matches(golden, prompts, tiny_config, tiny_state_dict):
    emb = _embedder(tiny_config, tiny_state_dict, layer="last")
    z = emb(prompts).asnumpy()
    assert np.abs(z - golden["z_last"]).max() <= 1e-4
    assert _rel_err(z, golden["z_last"]) <= 1e-5
    # The two layers really differ, so the check above tests the selection.
    assert np.abs(golden["z_last"] - golden["z_penultimate"]).max() > 1e-1


def test_float16_close(golden, prompts, tiny_config, tiny_state_dict):
    emb = _embedder(tiny_config, tiny_state_dict, dtype="float16")
    z = emb(prompts[:2])
    assert z.dtype == ms.float16
    assert _rel_err(z.asnumpy().astype(np.float32), golden["z_penultimate"][:2]) <= 1e-2


def test_bad_arguments():
    with pytest.raises(ValueError, match="layer"):
        FrozenOpenCLIPEmbedder(arch="mvdream-tiny-openclip", layer="pooled")
    with pytest.raises(ValueError, match="architecture"):
        FrozenOpenCLIPEmbedder(arch="ViT-Q-99")



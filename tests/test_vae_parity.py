"""AutoencoderKL reproduces the original PyTorch VAE (goldens in vae_tiny.npz)."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor
from omegaconf import OmegaConf

from mvdream.checkpoint import load_state_dict_into
from mvdream.ldm.models.autoencoder import AutoencoderKL
from mvdream.ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from mvdream.ldm.modules.torch_layers import Conv2d

pytestmark = [pytest.mark.parity]

PREFIX = "first_stage_model."
SCALE_FACTOR = 0.18215  # LatentDiffusionInterface.scale_factor


def _close(name, got, golden, rtol=1e-5, atol=1e-4):
    got = got.asnumpy() if isinstance(got, Tensor) else np.asarray(got)
    assert got.shape == golden.shape, f"{name}: shape {got.shape} != {golden.shape}"
    err = float(np.abs(got.astype(np.float64) - golden).max())
    scale = float(np.abs(golden).max())
    print(f"{name}: max abs err {err:.3g}, rel {err / scale:.3g}")
    assert err <= atol, f"{name}: max abs err {err:.3g} > {atol}"
    assert err <= rtol * scale, f"{name}: rel err {err / scale:.3g} > {rtol}"


@pytest.fixture(scope="module")
def goldens(parity_dir):
    return dict(np.load(parity_dir / "vae_tiny.npz"))


@pytest.fixture(scope="module")
def vae(tiny_config, tiny_state_dict):
    params = OmegaConf.to_container(tiny_config.model.params.first_stage_config.params)
    model = AutoencoderKL(**params)
    load_state_dict_into(model, tiny_state_dict, prefix=PREFIX, strict=True)
    return model


def test_parameters_match_checkpoint(vae, tiny_state_dict):
    names = {PREFIX + n: tuple(p.shape) for n, p in vae.parameters_and_names()}
    expected = {k: tuple(v.shape) for k, v in tiny_state_dict.items() if k.startswith(PREFIX)}
    assert names == expected
    assert sum(int(np.prod(s)) for s in names.values()) == 658_375


def test_autoencoder_is_frozen(vae):
    """Inference only: no parameter requires grad, every convolution's backward is the input's
    gradient only (test_encoder_gradient checks that gradient against the original)."""
    assert vae.trainable_params() == []
    convs = [cell for _, cell in vae.cells_and_names() if isinstance(cell, Conv2d)]
    assert len(convs) > 10 and not any(conv.weight_grad for conv in convs)


def test_encode(vae, goldens):
    image = Tensor(goldens["image"])
    _close("encoder_out", vae.encoder(image), goldens["encoder_out"])
    posterior = vae.encode(image)
    _close("moments", posterior.parameters, goldens["moments"])
    _close("posterior_mean", posterior.mean, goldens["posterior_mean"])
    _close("posterior_logvar", posterior.logvar, goldens["posterior_logvar"])
    _close("posterior_std", posterior.std, goldens["posterior_std"])
    _close("posterior_var", posterior.var, goldens["posterior_std"].astype(np.float64) ** 2)
    sample = posterior.sample(Tensor(goldens["sample_eps"]))
    _close("posterior_sample", sample, goldens["posterior_sample"])
    _close("first_stage_encoding", SCALE_FACTOR * sample, goldens["first_stage_encoding"])
    assert np.array_equal(posterior.mode().asnumpy(), posterior.mean.asnumpy())


def test_decode(vae, goldens):
    z = Tensor(goldens["z"])
    _close("decoded", vae.decode(z), goldens["decoded"])
    _close("decode_first_stage", vae.decode(z / SCALE_FACTOR), goldens["decode_first_stage"])


def test_rectangular(vae, goldens):
    # H != W catches height/width mix-ups in the attention reshapes and resampling
    posterior = vae.encode(Tensor(goldens["image_rect"]))
    _close("rect_posterior_mean", posterior.mean, goldens["rect_posterior_mean"])
    _close("rect_posterior_logvar", posterior.logvar, goldens["rect_posterior_logvar"])
    _close("rect_decoded", vae.decode(Tensor(goldens["z_rect"])), goldens["rect_decoded"])


def test_encoder_gradient(vae, goldens):
    weight = Tensor(goldens["enc_grad_weight"])

    def objective(image):
        return (vae.encode(image).mean * weight).sum()

    grad = ms.grad(objective)(Tensor(goldens["image"]))
    _close("enc_grad_image", grad, goldens["enc_grad_image"])


def test_construct(vae, goldens):
    image = Tensor(goldens["image"])
    dec, posterior = vae(image, sample_posterior=False)
    _close("construct(mode)", dec, vae.decode(posterior.mean).asnumpy().astype(np.float64))
    dec, _ = vae(image)  # a fresh random draw: only the shape is predictable
    assert dec.shape == image.shape


def test_posterior_clamp_kl_nll():
    rng = np.random.default_rng(0)
    moments = rng.standard_normal((2, 8, 3, 5)).astype(np.float32)
    moments[0, 4, 0, 0], moments[1, 5, 1, 1] = 50.0, -80.0  # outside [-30, 20]
    post = DiagonalGaussianDistribution(Tensor(moments))
    mean, logvar = moments[:, :4].astype(np.float64), np.clip(moments[:, 4:], -30, 20).astype(np.float64)
    assert post.logvar.asnumpy()[0, 0, 0, 0] == 20.0 and post.logvar.asnumpy()[1, 1, 1, 1] == -30.0
    kl = 0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(post.kl().asnumpy(), kl, rtol=1e-5)
    x = rng.standard_normal(mean.shape).astype(np.float32)
    nll = 0.5 * (np.log(2 * np.pi) + logvar + (x - mean) ** 2 / np.exp(logvar)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(post.nll(Tensor(x)).asnumpy(), nll, rtol=1e-5)
    assert post.sample().shape == (2, 4, 3, 5)


def test_float16_smoke(vae, goldens):
    # fp32 parameters are cast per layer to the activation dtype; norms and the
    # attention softmax run in fp32 inside the cells
    posterior = vae.encode(Tensor(goldens["image"]).astype(ms.float16))
    mean = posterior.mean.asnumpy()
    assert mean.dtype == np.float16 and np.isfinite(mean).all()
    _close("fp16 posterior_mean", posterior.mean.astype(ms.float32), goldens["posterior_mean"],
           rtol=1e-2, atol=1e-2)
    dec = vae.decode(Tensor(goldens["z"]).astype(ms.float16))
    assert dec.dtype == ms.float16
    _close("fp16 decoded", dec.astype(ms.float32), goldens["decoded"], rtol=1e-2, atol=2e-2)


def test_float16_parameters(tiny_config, tiny_state_dict, goldens):
    # a model whose parameters are stored in fp16 (half the memory) runs as well
    params = OmegaConf.to_container(tiny_config.model.params.first_stage_config.params)
    model = AutoencoderKL(**params)
    load_state_dict_into(model, tiny_state_dict, prefix=PREFIX, strict=True)
    for param in model.get_parameters():
        param.set_dtype(ms.float16)
    mean = model.encode(Tensor(goldens["image"]).astype(ms.float16)).mean
    assert mean.dtype == ms.float16
    _close("fp16-param posterior_mean", mean.astype(ms.float32), goldens["posterior_mean"],
           rtol=1e-2, atol=1e-2)



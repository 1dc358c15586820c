"""tcnn SphericalHarmonics (degrees 1..8) and Frequency encodings against float64 NumPy
references of tcnn's formulas (values and gradients), and the direction mapping."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from threestudio.models.networks import DirectionEncoding, get_encoding
from threestudio.utils.config import ConfigError


def tcnn_sh(d):
    """[N, 64] float64: tcnn's ``sh_enc`` (include/tiny-cuda-nn/common_device.h) term by term."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    xy, xz, yz, x2, y2, z2 = x * y, x * z, y * z, x * x, y * y, z * z
    x4, y4, z4 = x2 * x2, y2 * y2, z2 * z2
    x6, y6, z6 = x4 * x2, y4 * y2, z4 * z2
    terms = [
        0.28209479177387814,  # 0
        -0.48860251190291987*y,  # 1
        0.48860251190291987*z,  # 2
        -0.48860251190291987*x,  # 3
        1.0925484305920792*xy,  # 4
        -1.0925484305920792*yz,  # 5
        0.94617469575755997*z2 - 0.31539156525251999,  # 6
        -1.0925484305920792*xz,  # 7
        0.54627421529603959*x2 - 0.54627421529603959*y2,  # 8
        0.59004358992664352*y*(-3.0*x2 + y2),  # 9
        2.8906114426405538*xy*z,  # 10
        0.45704579946446572*y*(1.0 - 5.0*z2),  # 11
        0.3731763325901154*z*(5.0*z2 - 3.0),  # 12
        0.45704579946446572*x*(1.0 - 5.0*z2),  # 13
        1.4453057213202769*z*(x2 - y2),  # 14
        0.59004358992664352*x*(-x2 + 3.0*y2),  # 15
        2.5033429417967046*xy*(x2 - y2),  # 16
        1.7701307697799304*yz*(-3.0*x2 + y2),  # 17
        0.94617469575756008*xy*(7.0*z2 - 1.0),  # 18
        0.66904654355728921*yz*(3.0 - 7.0*z2),  # 19
        -3.1735664074561294*z2 + 3.7024941420321507*z4 + 0.31735664074561293,  # 20
        0.66904654355728921*xz*(3.0 - 7.0*z2),  # 21
        0.47308734787878004*(x2 - y2)*(7.0*z2 - 1.0),  # 22
        1.7701307697799304*xz*(-x2 + 3.0*y2),  # 23
        -3.7550144126950569*x2*y2 + 0.62583573544917614*x4 + 0.62583573544917614*y4,  # 24
        0.65638205684017015*y*(10.0*x2*y2 - 5.0*x4 - y4),  # 25
        8.3026492595241645*xy*z*(x2 - y2),  # 26
        -0.48923829943525038*y*(3.0*x2 - y2)*(9.0*z2 - 1.0),  # 27
        4.7935367849733241*xy*z*(3.0*z2 - 1.0),  # 28
        0.45294665119569694*y*(14.0*z2 - 21.0*z4 - 1.0),  # 29
        0.1169503224534236*z*(-70.0*z2 + 63.0*z4 + 15.0),  # 30
        0.45294665119569694*x*(14.0*z2 - 21.0*z4 - 1.0),  # 31
        2.3967683924866621*z*(x2 - y2)*(3.0*z2 - 1.0),  # 32
        -0.48923829943525038*x*(x2 - 3.0*y2)*(9.0*z2 - 1.0),  # 33
        2.0756623148810411*z*(-6.0*x2*y2 + x4 + y4),  # 34
        0.65638205684017015*x*(10.0*x2*y2 - x4 - 5.0*y4),  # 35
        1.3663682103838286*xy*(-10.0*x2*y2 + 3.0*x4 + 3.0*y4),  # 36
        2.3666191622317521*yz*(10.0*x2*y2 - 5.0*x4 - y4),  # 37
        2.0182596029148963*xy*(x2 - y2)*(11.0*z2 - 1.0),  # 38
        -0.92120525951492349*yz*(3.0*x2 - y2)*(11.0*z2 - 3.0),  # 39
        0.92120525951492349*xy*(-18.0*z2 + 33.0*z4 + 1.0),  # 40
        0.58262136251873131*yz*(30.0*z2 - 33.0*z4 - 5.0),  # 41
        6.6747662381009842*z2 - 20.024298714302954*z4 + 14.684485723822165*z6 - 0.31784601133814211,  # 42
        0.58262136251873131*xz*(30.0*z2 - 33.0*z4 - 5.0),  # 43
        0.46060262975746175*(x2 - y2)*(11.0*z2*(3.0*z2 - 1.0) - 7.0*z2 + 1.0),  # 44
        -0.92120525951492349*xz*(x2 - 3.0*y2)*(11.0*z2 - 3.0),  # 45
        0.50456490072872406*(11.0*z2 - 1.0)*(-6.0*x2*y2 + x4 + y4),  # 46
        2.3666191622317521*xz*(10.0*x2*y2 - x4 - 5.0*y4),  # 47
        10.247761577878714*x2*y4 - 10.247761577878714*x4*y2 + 0.6831841051919143*x6 - 0.6831841051919143*y6,  # 48
        0.70716273252459627*y*(-21.0*x2*y4 + 35.0*x4*y2 - 7.0*x6 + y6),  # 49
        5.2919213236038001*xy*z*(-10.0*x2*y2 + 3.0*x4 + 3.0*y4),  # 50
        -0.51891557872026028*y*(13.0*z2 - 1.0)*(-10.0*x2*y2 + 5.0*x4 + y4),  # 51
        4.1513246297620823*xy*z*(x2 - y2)*(13.0*z2 - 3.0),  # 52
        -0.15645893386229404*y*(3.0*x2 - y2)*(13.0*z2*(11.0*z2 - 3.0) - 27.0*z2 + 3.0),  # 53
        0.44253269244498261*xy*z*(-110.0*z2 + 143.0*z4 + 15.0),  # 54
        0.090331607582517306*y*(-135.0*z2 + 495.0*z4 - 429.0*z6 + 5.0),  # 55
        0.068284276912004949*z*(315.0*z2 - 693.0*z4 + 429.0*z6 - 35.0),  # 56
        0.090331607582517306*x*(-135.0*z2 + 495.0*z4 - 429.0*z6 + 5.0),  # 57
        0.07375544874083044*z*(x2 - y2)*(143.0*z2*(3.0*z2 - 1.0) - 187.0*z2 + 45.0),  # 58
        -0.15645893386229404*x*(x2 - 3.0*y2)*(13.0*z2*(11.0*z2 - 3.0) - 27.0*z2 + 3.0),  # 59
        1.0378311574405206*z*(13.0*z2 - 3.0)*(-6.0*x2*y2 + x4 + y4),  # 60
        -0.51891557872026028*x*(13.0*z2 - 1.0)*(-10.0*x2*y2 + x4 + 5.0*y4),  # 61
        2.6459606618019*z*(15.0*x2*y4 - 15.0*x4*y2 + x6 - y6),  # 62
        0.70716273252459627*x*(-35.0*x2*y4 + 21.0*x4*y2 - x6 + 7.0*y6),  # 63
    ]
    return np.stack([np.broadcast_to(t, x.shape) for t in terms], -1)


def tcnn_frequency(x, n_frequencies):
    """[N, D * K * 2] float64: sin(2^k pi x_d + (j % 2) pi / 2), output j = (d, k, sin/cos)."""
    arg = x[:, :, None] * (2.0 ** np.arange(n_frequencies) * np.pi)
    return np.stack([np.sin(arg), np.sin(arg + np.pi / 2)], -1).reshape(len(x), -1)


def directions():
    """Random unit directions, the six axis directions and the eight diagonals, float64."""
    d = np.random.default_rng(0).normal(size=(20000, 3))
    diagonals = np.stack(np.meshgrid([-1, 1], [-1, 1], [-1, 1]), -1).reshape(-1, 3)
    d = np.concatenate([d, np.eye(3), -np.eye(3), diagonals])
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def encode(config, x):
    return get_encoding(x.shape[1], config)(Tensor(x)).asnumpy()


@pytest.mark.parametrize("degree", range(1, 9))
def test_spherical_harmonics_match_tcnn(degree):
    x = ((directions() + 1) / 2).astype(np.float32)  # tcnn's input: (d + 1) / 2
    out = encode({"otype": "SphericalHarmonics", "degree": degree}, x)
    # tcnn maps back with x * 2 - 1 in float32, then evaluates its polynomials
    ref = tcnn_sh((x * np.float32(2) - np.float32(1)).astype(np.float64))[:, :degree * degree]
    assert out.shape == (len(x), degree * degree)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    axes = out[-14:-8]  # +x, +y, +z, -x, -y, -z: exact zeros and exact band-0/1 values
    np.testing.assert_allclose(axes[:, 0], 0.28209479177387814, rtol=1e-7)
    if degree > 1:
        np.testing.assert_allclose(axes[:, 1:4], 0.48860251190291987 * np.array(
            [[0, 0, -1], [-1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, -1, 0]]), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("degree", [2, 4, 8])
def test_spherical_harmonics_gradient_matches_finite_differences(degree):
    d = directions()[np.r_[0:64, -14:0]]
    x = ((d + 1) / 2).astype(np.float32)
    weights = np.random.default_rng(1).normal(size=(len(x), degree * degree))
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": degree})
    grad = ms.grad(lambda t: (enc(t) * Tensor(weights.astype(np.float32))).sum())(Tensor(x)).asnumpy()

    def loss(x64):
        return (tcnn_sh(2 * x64 - 1)[:, :degree * degree] * weights).sum(-1)

    h, x64, fd = 1e-6, x.astype(np.float64), np.zeros(x.shape)
    for k in range(3):
        step = np.zeros(3)
        step[k] = h
        fd[:, k] = (loss(x64 + step) - loss(x64 - step)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


@pytest.mark.parametrize("n_frequencies", [1, 4, 12])
def test_frequency_matches_tcnn(n_frequencies):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(0, 1, (5000, 3)), rng.uniform(-3, 3, (1000, 3)),
                        np.array([[0, 0.5, 1], [0.25, 0.75, -1]])]).astype(np.float32)
    out = encode({"otype": "Frequency", "n_frequencies": n_frequencies}, x)
    assert out.shape == (len(x), 3 * n_frequencies * 2)
    np.testing.assert_allclose(out, tcnn_frequency(x.astype(np.float64), n_frequencies), rtol=0, atol=1e-6)


def test_frequency_gradient_matches_finite_differences():
    x = np.random.default_rng(3).uniform(0, 1, (64, 2)).astype(np.float32)
    weights = np.random.default_rng(4).normal(size=(64, 2 * 6 * 2))
    enc = get_encoding(2, {"otype": "Frequency", "n_frequencies": 6})
    grad = ms.grad(lambda t: (enc(t) * Tensor(weights.astype(np.float32))).sum())(Tensor(x)).asnumpy()
    h, x64 = 1e-6, x.astype(np.float64)
    fd = np.stack([((tcnn_frequency(x64 + h * e, 6) - tcnn_frequency(x64 - h * e, 6)) * weights).sum(-1) / (2 * h)
                   for e in np.eye(2)], -1)
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


def test_direction_encoding_normalises_and_maps_to_unit_cube():
    d = directions()[:100]
    enc = DirectionEncoding({"otype": "SphericalHarmonics", "degree": 4})
    out = enc(Tensor((d * np.linspace(0.1, 5, 100)[:, None]).astype(np.float32))).asnumpy()  # any length
    np.testing.assert_allclose(out, tcnn_sh(d)[:, :16], rtol=0, atol=1e-6)
    assert enc.n_output_dims == 16


@pytest.mark.parametrize("config, message", [
    ({"otype": "SphericalHarmonics", "degree": 9}, "degree must be in 1..8"),
    ({"otype": "SphericalHarmonics", "degree": 0}, "degree must be in 1..8"),
    ({"otype": "SphericalHarmonics", "degre": 4}, "unknown config key 'degre'"),
])
def test_bad_encoding_config_is_one_line(config, message):
    with pytest.raises(ConfigError, match=message) as err:
        get_encoding(3, config)
    assert "\n" not in str(err.value)

"""edm.guidance: the autoguided field, guides and weights that do not fit, the options and the one-string name of a
guided network."""
import math

import pytest
import torch

from art.analytic import load_analytic
from conftest import tiny_edm_net
from edm.guidance import GuideError, autoguide, check_guidance, check_guidance_options, guided_spec, split_guided_spec
from tiny_edm2 import tiny_edm2_net


@pytest.mark.parametrize('guidance', [0.5, 1.0, 2.0, 3.7])
def test_guided_field_extrapolates_from_the_guide(guidance):
    # Two exact Gaussian denoisers, D = S^2 x/(S^2 + sigma^2): D_w = D_g + w (D - D_g), computed here by hand.
    net, gnet = load_analytic('analytic:gauss:std=0.5,shape=1x4x4'), load_analytic('analytic:gauss:std=0.8,shape=1x4x4')
    x = torch.randn([3, 1, 4, 4], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(1.3, dtype=torch.float64)
    D, D_g = 0.25 * x / (0.25 + 1.69), 0.64 * x / (0.64 + 1.69)
    # torch.lerp and the formula round differently: a few float64 ulp of the output scale.
    torch.testing.assert_close(autoguide(net(x, sigma), gnet(x, sigma), guidance), D_g + guidance * (D - D_g),
                               rtol=0, atol=1e-14)
    half = autoguide(net(x, sigma).half(), gnet(x, sigma).float(), guidance)
    assert half.dtype == torch.float32                                       # the precision of the two outputs


@pytest.mark.parametrize('gnet_kwargs, words', [
    (dict(img_resolution=16), 'works on 3x16x16 images, the network on 3x8x8'),
    (dict(img_channels=4), 'works on 4x8x8 images'),
    (dict(label_dim=5), 'has 5 classes, the network 10'),
])
def test_guide_that_does_not_fit_is_refused(gnet_kwargs, words):
    net = tiny_edm2_net(dtype=torch.float32)
    with pytest.raises(GuideError, match=words):
        check_guidance(net, tiny_edm2_net(**dict(dict(model_channels=8), **gnet_kwargs)), 2.0)
    assert check_guidance(net, tiny_edm2_net(label_dim=0, model_channels=8), 2) == 2.0   # classifier-free guidance


@pytest.mark.parametrize('guidance, words', [(0.0, 'must be a number > 0'), (-1.0, 'must be a number > 0'),
                                             (math.nan, 'must be a number > 0'), (math.inf, 'must be a number > 0')])
def test_bad_guidance_is_refused(guidance, words):
    net, gnet = tiny_edm_net(seed=1), tiny_edm_net(seed=2)
    with pytest.raises(GuideError, match=words):
        check_guidance(net, gnet, guidance)
    with pytest.raises(GuideError, match='--guidance must be a number > 0'):
        check_guidance_options('guide.pkl', guidance)
    with pytest.raises(GuideError, match='needs a guiding network'):
        check_guidance(net, None, 2.0)


def test_guidance_options_go_together():
    assert check_guidance_options(None, None) == 1.0 and check_guidance_options('g.pkl', 1.5) == 1.5
    with pytest.raises(GuideError, match='--guidance needs a guiding network: give --gnet'):
        check_guidance_options(None, 2.0)
    with pytest.raises(GuideError, match='--gnet needs --guidance'):
        check_guidance_options('g.pkl', None)


@pytest.mark.parametrize('network, gnet', [('runs/net.pkl', 'g.pkl'),
                                           ('https://host/edm2-img512-xs-2147483-0.135.pkl?x=1&y=2',
                                            'https://host/edm2-img512-xs-uncond-2147483-0.045.pkl')])
def test_guided_spec_round_trip(network, gnet):
    spec = guided_spec(network, gnet, 1.4)
    assert spec == f'{network}?gnet={gnet}&guidance=1.4'
    assert split_guided_spec(spec) == (network, gnet, 1.4)
    assert guided_spec(network) == network and guided_spec(network, gnet, 1.0) == network   # an unguided field
    assert split_guided_spec(network) == (network, None, 1.0)
    with pytest.raises(GuideError, match='is not a number'):
        split_guided_spec(f'{network}?gnet={gnet}&guidance=lots')

"""edm.guidance: the autoguided field, the EDM interface it gives EDM2 networks, guides that do not fit, the loader
and the one-string name of a guided network."""
import math

import pytest
import torch

from art.analytic import load_analytic
from conftest import tiny_edm_net, write_network_pkl
from edm.guidance import (GuideError, GuidedDenoiser, as_denoiser, check_guidance_options, guided_spec,
                          load_guided_pkl, split_guided_spec)
from tiny_edm2 import tiny_edm2_net, write_edm2_pkl
from training.encoders import StandardRGBEncoder


class Recorder(torch.nn.Module):
    """Wraps a network and logs its name at every call into a shared list."""

    def __init__(self, net, name, log):
        super().__init__()
        self.net, self.name, self.log = net, name, log
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim

    def forward(self, x, sigma, class_labels=None):
        self.log.append(self.name)
        return self.net(x, sigma, class_labels)


@pytest.mark.parametrize('guidance', [0.5, 1.0, 2.0, 3.7])
def test_guided_field_extrapolates_from_the_guide(guidance):
    # Two exact Gaussian denoisers, D = S^2 x/(S^2 + sigma^2): D_w = D_g + w (D - D_g), computed here by hand.
    net, gnet = load_analytic('analytic:gauss:std=0.5,shape=1x4x4'), load_analytic('analytic:gauss:std=0.8,shape=1x4x4')
    x = torch.randn([3, 1, 4, 4], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(1.3, dtype=torch.float64)
    D, D_g = 0.25 * x / (0.25 + 1.69), 0.64 * x / (0.64 + 1.69)
    # torch.lerp and the formula round differently: a few float64 ulp of the output scale.
    torch.testing.assert_close(GuidedDenoiser(net, gnet, guidance)(x, sigma), D_g + guidance * (D - D_g),
                               rtol=0, atol=1e-14)


def test_guide_is_called_right_after_the_net_and_not_at_all_with_weight_one():
    log = []
    net, gnet = Recorder(tiny_edm_net(seed=1), 'net', log), Recorder(tiny_edm_net(seed=2), 'gnet', log)
    x = torch.randn([2, 3, 8, 8])
    GuidedDenoiser(net, gnet, 2.0)(x, torch.tensor(1.0))
    assert log == ['net', 'gnet']
    log.clear()
    out = GuidedDenoiser(net, gnet, 1.0)(x, torch.tensor(1.0))
    assert log == ['net'] and torch.equal(out, net.net(x, torch.tensor(1.0)))


def test_edm2_network_gets_edms_interface_and_edm_networks_stay_as_they_are():
    net = tiny_edm2_net(dtype=torch.float32)
    wrapped = as_denoiser(net)
    assert isinstance(wrapped, GuidedDenoiser) and wrapped.net is net
    assert (wrapped.sigma_min, wrapped.sigma_max) == (0.0, math.inf)
    assert (wrapped.img_resolution, wrapped.img_channels, wrapped.label_dim) == (8, 3, 10)
    sigma = torch.tensor([0.0123456789, 80.0], dtype=torch.float64)
    assert torch.equal(wrapped.round_sigma(sigma), sigma)                       # continuous noise levels
    x, labels = torch.randn([2, 3, 8, 8]), torch.eye(10)[[1, 7]]
    assert torch.equal(wrapped(x, sigma, labels), net(x, sigma, labels))
    edm = tiny_edm_net()
    assert as_denoiser(edm) is edm
    analytic = load_analytic('analytic:gauss1d')
    assert as_denoiser(analytic) is analytic
    # A guide narrows the range to where both networks are defined; the net's rounding stays.
    guided = GuidedDenoiser(analytic, load_analytic('analytic:gauss:std=2,shape=1x1x1,sigma_max=2'), 1.5)
    assert guided.sigma_max == 2.0 and guided.round_sigma(0.5) == 0.5


@pytest.mark.parametrize('gnet_kwargs, words', [
    (dict(img_resolution=16), 'works on 3x16x16 images, the network on 3x8x8'),
    (dict(img_channels=4), 'works on 4x8x8 images'),
    (dict(label_dim=5), 'has 5 classes, the network 10'),
])
def test_guide_that_does_not_fit_is_refused(gnet_kwargs, words):
    net = tiny_edm2_net(dtype=torch.float32)
    with pytest.raises(GuideError, match=words):
        GuidedDenoiser(net, tiny_edm2_net(**dict(dict(model_channels=8), **gnet_kwargs)), 2.0)
    GuidedDenoiser(net, tiny_edm2_net(label_dim=0, model_channels=8), 2.0)     # unconditional: classifier-free guidance


@pytest.mark.parametrize('guidance, words', [(0.0, 'must be a number > 0'), (-1.0, 'must be a number > 0'),
                                             (math.nan, 'must be a number > 0'), (math.inf, 'must be a number > 0')])
def test_bad_guidance_is_refused(guidance, words):
    net, gnet = tiny_edm_net(seed=1), tiny_edm_net(seed=2)
    with pytest.raises(GuideError, match=words):
        GuidedDenoiser(net, gnet, guidance)
    with pytest.raises(GuideError, match='--guidance must be a number > 0'):
        check_guidance_options('guide.pkl', guidance)
    with pytest.raises(GuideError, match='needs a guiding network'):
        GuidedDenoiser(net, None, 2.0)


def test_guidance_options_go_together():
    assert check_guidance_options(None, None) == 1.0 and check_guidance_options('g.pkl', 1.5) == 1.5
    with pytest.raises(GuideError, match='--guidance needs a guiding network: give --gnet'):
        check_guidance_options(None, 2.0)
    with pytest.raises(GuideError, match='--gnet needs --guidance'):
        check_guidance_options('g.pkl', None)


def test_load_guided_pkl(tmp_path):
    net, gnet = tiny_edm2_net(seed=1), tiny_edm2_net(seed=2, model_channels=8)
    plain = load_guided_pkl(write_edm2_pkl(tmp_path / 'net.pkl', net))
    assert isinstance(plain, GuidedDenoiser) and plain.gnet is None and type(plain.encoder) is StandardRGBEncoder
    assert plain.net.unet.out_gain.dtype == torch.float16                    # the file's dtype, as upstream runs it
    guided = load_guided_pkl(str(tmp_path / 'net.pkl'), write_edm2_pkl(tmp_path / 'g.pkl', gnet, encoder=False), 2.0)
    assert guided.guidance == 2.0 and torch.equal(guided.gnet.unet.out_gain, gnet.unet.out_gain)
    # An EDM2 file without an encoder gets upstream's default; an EDM file stays as it is (no encoder).
    assert type(load_guided_pkl(str(tmp_path / 'g.pkl')).encoder) is StandardRGBEncoder
    edm = load_guided_pkl(write_network_pkl(tmp_path / 'edm.pkl', tiny_edm_net()))
    assert not isinstance(edm, GuidedDenoiser)
    with pytest.raises(GuideError, match='works on 3x8x8 images, the network on 3x16x16'):
        load_guided_pkl(write_edm2_pkl(tmp_path / 'big.pkl', tiny_edm2_net(img_resolution=16)), str(tmp_path / 'g.pkl'),
                        2.0)


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

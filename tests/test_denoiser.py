"""edm.denoiser: any network as a denoiser with EDM's interface, its file's encoder and its guide."""
import math

import pytest
import torch

from art.analytic import load_analytic
from conftest import tiny_edm_net, write_network_pkl
from edm.denoiser import Denoiser, as_denoiser, load_denoiser
from edm.guidance import GuideError, autoguide
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


def test_guide_is_called_right_after_the_net_and_not_at_all_with_weight_one():
    log = []
    net, gnet = Recorder(tiny_edm_net(seed=1), 'net', log), Recorder(tiny_edm_net(seed=2), 'gnet', log)
    x = torch.randn([2, 3, 8, 8])
    out = Denoiser(net, gnet, 2.0)(x, torch.tensor(1.0))
    assert log == ['net', 'gnet'] and torch.equal(out, autoguide(net.net(x, 1.0), gnet.net(x, 1.0), 2.0))
    log.clear()
    out = Denoiser(net, gnet, 1.0)(x, torch.tensor(1.0))
    assert log == ['net'] and torch.equal(out, net.net(x, torch.tensor(1.0)))


def test_edm2_network_gets_edms_interface_and_edm_networks_stay_as_they_are():
    net = tiny_edm2_net(dtype=torch.float32)
    wrapped = as_denoiser(net)
    assert isinstance(wrapped, Denoiser) and wrapped.net is net
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
    guided = Denoiser(analytic, load_analytic('analytic:gauss:std=2,shape=1x1x1,sigma_max=2'), 1.5)
    assert guided.sigma_max == 2.0 and guided.round_sigma(0.5) == 0.5
    with pytest.raises(GuideError, match='guidance 2 needs a guiding network'):
        as_denoiser(net, guidance=2.0)


def test_load_denoiser(tmp_path):
    net, gnet = tiny_edm2_net(seed=1), tiny_edm2_net(seed=2, model_channels=8)
    plain = load_denoiser(write_edm2_pkl(tmp_path / 'net.pkl', net))
    assert isinstance(plain, Denoiser) and plain.gnet is None and type(plain.encoder) is StandardRGBEncoder
    assert plain.net.unet.out_gain.dtype == torch.float16                    # the file's dtype, as upstream runs it
    guided = load_denoiser(str(tmp_path / 'net.pkl'), write_edm2_pkl(tmp_path / 'g.pkl', gnet, encoder=False), 2.0)
    assert guided.guidance == 2.0 and torch.equal(guided.gnet.unet.out_gain, gnet.unet.out_gain)
    # An EDM2 file without an encoder gets upstream's default; an EDM file stays as it is (no encoder).
    assert type(load_denoiser(str(tmp_path / 'g.pkl')).encoder) is StandardRGBEncoder
    edm = load_denoiser(write_network_pkl(tmp_path / 'edm.pkl', tiny_edm_net()))
    assert not isinstance(edm, Denoiser)
    with pytest.raises(GuideError, match='works on 3x8x8 images, the network on 3x16x16'):
        load_denoiser(write_edm2_pkl(tmp_path / 'big.pkl', tiny_edm2_net(img_resolution=16)), str(tmp_path / 'g.pkl'),
                      2.0)

"""torch_utils.persistence: the upstream pickle layout, and loading our pickles in a fresh process."""
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import torch

import dnnlib
from conftest import ROOT, tiny_edm_net, write_network_pkl
from torch_utils import persistence
from training import networks


class _MetaRecorder(pickle.Unpickler):
    """Unpickler that records every persistence meta dict instead of rebuilding objects."""

    def __init__(self, f):
        super().__init__(f)
        self.metas = []

    def find_class(self, module, name):
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            def record(meta):
                self.metas.append(meta)
                return meta
            return record
        return super().find_class(module, name)


def test_pickle_has_upstream_structure(tmp_path):
    net = tiny_edm_net()
    path = write_network_pkl(tmp_path / 'net.pkl', net)
    with open(path, 'rb') as f:
        recorder = _MetaRecorder(f)
        data = recorder.load()
    assert set(data) == {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    top = data['ema']
    assert set(top) == {'type', 'version', 'module_src', 'class_name', 'state'}
    assert top['type'] == 'class' and top['version'] == 6 and top['class_name'] == 'EDMPrecond'
    assert top['module_src'] == (ROOT / 'training' / 'networks.py').read_text()
    state = top['state']
    for key in ('_parameters', '_buffers', '_modules', 'training', '_init_args', '_init_kwargs',
                'img_resolution', 'img_channels', 'label_dim', 'use_fp16', 'sigma_min', 'sigma_max', 'sigma_data'):
        assert key in state, key
    assert state['_init_kwargs']['model_channels'] == 16
    # Children are persistent objects too, each with its own meta; every class is one of ours.
    names = {meta['class_name'] for meta in recorder.metas}
    assert {'EDMPrecond', 'SongUNet', 'UNetBlock', 'Conv2d', 'Linear', 'GroupNorm', 'PositionalEmbedding'} <= names
    assert all(meta['version'] == 6 for meta in recorder.metas)


def test_persistent_class_records_init_args():
    net = networks.Linear(3, 4, bias=False)
    assert persistence.is_persistent(net) and persistence.is_persistent(networks.Linear)
    assert not persistence.is_persistent(torch.nn.Linear(3, 4))
    assert net.init_args == (3, 4) and net.init_kwargs == dnnlib.EasyDict(bias=False)
    assert isinstance(net.init_kwargs, dnnlib.EasyDict)
    assert persistence.persistent_class(networks.Linear) is networks.Linear


def test_same_process_round_trip_returns_our_classes():
    net = tiny_edm_net()
    clone = pickle.loads(pickle.dumps(net))
    assert type(clone) is networks.EDMPrecond
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(clone(x, torch.tensor(1.5)), net(x, torch.tensor(1.5)), rtol=0, atol=0)


def test_loads_in_fresh_subprocess_in_both_modes(tmp_path):
    net = tiny_edm_net(label_dim=4)
    path = write_network_pkl(tmp_path / 'net.pkl', net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.eye(4)[[1, 3]]
    D = net(x, torch.tensor([0.3, 7.0]), labels)
    np.savez(tmp_path / 'io.npz', x=x.numpy(), labels=labels.numpy(), D=D.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        sys.path.insert(0, {str(ROOT)!r})
        from edm import load_network_pkl
        trust = sys.argv[1] == 'trust'
        net = load_network_pkl({path!r}, trust_embedded_code=trust)['ema']
        io = np.load({str(tmp_path / 'io.npz')!r})
        D = net(torch.from_numpy(io['x']), torch.tensor([0.3, 7.0]), torch.from_numpy(io['labels']))
        assert np.array_equal(D.numpy(), io['D']), 'outputs differ'
        mod = type(net).__module__
        print(mod, type(net).__name__, net.training, any(p.requires_grad for p in net.parameters()))
    """)
    for mode in ('safe', 'trust'):
        out = subprocess.run([sys.executable, '-c', script, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        module, name, training, grad = out.stdout.split()
        assert name == 'EDMPrecond' and training == 'False' and grad == 'False'
        # Safe mode rebuilds our class; trusted mode finds the embedded source equal to the live training.networks
        # (imported by edm.loading) and so also returns our classes, as upstream does in the training process.
        assert module == 'training.networks'


def test_import_hook_patches_embedded_source(tmp_path):
    module_dir = tmp_path / 'mods'
    module_dir.mkdir()
    (module_dir / 'custom_arch.py').write_text(textwrap.dedent("""
        import torch
        from torch_utils import persistence

        @persistence.persistent_class
        class Scale(torch.nn.Module):
            def __init__(self, factor):
                super().__init__()
                self.factor = factor
            def forward(self, x):
                return x * self.factor
    """))
    make = f"import sys, pickle; sys.path[:0] = [{str(ROOT)!r}, {str(module_dir)!r}]; import custom_arch; " \
           f"pickle.dump(dict(ema=custom_arch.Scale(3.0)), open({str(tmp_path / 'c.pkl')!r}, 'wb'))"
    subprocess.run([sys.executable, '-c', make], check=True, timeout=60)
    load = textwrap.dedent(f"""
        import sys, pickle, torch
        sys.path.insert(0, {str(ROOT)!r})
        from torch_utils import persistence
        @persistence.import_hook
        def hook(meta):
            meta.module_src = meta.module_src.replace('x * self.factor', 'x * self.factor + 1')
            return meta
        obj = pickle.load(open({str(tmp_path / 'c.pkl')!r}, 'rb'))['ema']
        print(float(obj(torch.ones(1))))
    """)
    out = subprocess.run([sys.executable, '-c', load], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == 4.0

"""edm.loading: safe loading of network pickles refuses hostile files without running them."""
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_edm_net, write_network_pkl
from dnnlib.util import UserError
from edm.loading import PersistentPlaceholder, PickleSecurityError, load_network_pkl
from torch_utils import persistence
from training import networks


class _Reduce:
    """Pickles as an arbitrary call `fn(*args)`: the building block of hostile pickles."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _persistent(class_name, module_src, state=None, version=6):
    """An object that pickles as a persistence record with the given metadata."""
    meta = dict(type='class', version=version, module_src=module_src, class_name=class_name, state=state or {})
    return _Reduce(persistence._reconstruct_persistent_obj, meta)


def _hostile_pickles(marker):
    """(name, pickled bytes) of files that must be refused; each would create `marker` if run."""
    touch = f'touch {marker}'
    evil_src = f'import os\nos.system({touch!r})\nclass Evil:\n    pass\n'
    legacy_blob = pickle.dumps(_Reduce(os.system, touch))
    yield 'os.system', pickle.dumps(dict(ema=_Reduce(os.system, touch)))
    yield 'builtins.eval', pickle.dumps(dict(ema=_Reduce(eval, f'__import__("os").system({touch!r})')))
    yield 'subprocess', pickle.dumps(dict(ema=_Reduce(subprocess.call, ['touch', str(marker)])))
    yield 'unknown reduce target', pickle.dumps(dict(ema=_Reduce(torch.load, str(marker))))
    yield 'exec via module_src', pickle.dumps(dict(ema=_persistent('Evil', evil_src)))
    yield 'known class name, evil module_src', pickle.dumps(dict(ema=_persistent('EDMPrecond', evil_src)))
    yield 'hostile storage blob', pickle.dumps(dict(ema=_Reduce(torch.storage._load_from_bytes, legacy_blob)))
    yield 'wrong version', pickle.dumps(dict(ema=_persistent('EDMPrecond', evil_src, version=5)))


@pytest.mark.parametrize('index', range(8))
def test_safe_mode_refuses_hostile_pickles(tmp_path, index):
    marker = tmp_path / 'pwned'
    name, data = list(_hostile_pickles(marker))[index]
    path = tmp_path / 'hostile.pkl'
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        load_network_pkl(str(path))
    message = str(info.value)
    assert '\n' not in message and 'hostile.pkl' in message, (name, message)
    assert not marker.exists(), f'{name}: the pickle ran code'


def test_refusal_names_the_global_and_the_opt_in(tmp_path):
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(dict(ema=_Reduce(os.system, 'true'))))
    with pytest.raises(PickleSecurityError, match=r'posix\.system|os\.system') as info:
        load_network_pkl(str(path))
    assert 'trust_embedded_code=True' in str(info.value)


def test_safe_load_equals_original(tmp_path):
    net = tiny_edm_net(label_dim=3)
    path = write_network_pkl(tmp_path / 'net.pkl', net)
    data = load_network_pkl(path)
    loaded = data['ema']
    assert type(loaded) is networks.EDMPrecond and not loaded.training
    assert set(data) == {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    assert loaded.init_kwargs == net.init_kwargs
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x, torch.tensor(2.0)), net(x, torch.tensor(2.0)))


def test_unknown_persistent_objects_become_placeholders(tmp_path):
    aug = _persistent('CustomAugment', 'raise SystemExit("must not run")', state=dict(p=0.12))
    path = tmp_path / 'net.pkl'
    path.write_bytes(pickle.dumps(dict(ema=tiny_edm_net(), augment_pipe=aug)))
    data = load_network_pkl(str(path))
    placeholder = data['augment_pipe']
    assert isinstance(placeholder, PersistentPlaceholder) and placeholder.class_name == 'CustomAugment'
    assert placeholder.meta['state']['p'] == 0.12
    with pytest.raises(UserError, match='trust_embedded_code=True'):
        placeholder(torch.zeros(1))


def test_truncated_and_non_pickles(tmp_path, tiny_pkl):
    data = open(tiny_pkl, 'rb').read()
    (tmp_path / 'cut.pkl').write_bytes(data[:len(data) // 2])
    (tmp_path / 'text.pkl').write_text('hello')
    (tmp_path / 'list.pkl').write_bytes(pickle.dumps([1, 2]))
    for name, pattern in [('cut.pkl', 'truncated'), ('text.pkl', 'truncated'), ('list.pkl', 'not an EDM network pickle'),
                          ('missing.pkl', 'cannot open')]:
        with pytest.raises(UserError, match=pattern):
            load_network_pkl(str(tmp_path / name))


def test_torch_save_checkpoint_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save(dict(ema=torch.zeros(2)), buffer)
    (tmp_path / 'ckpt.pkl').write_bytes(buffer.getvalue())
    with pytest.raises(UserError):
        load_network_pkl(str(tmp_path / 'ckpt.pkl'))


def test_trusted_mode_runs_embedded_code_only_on_request(tmp_path):
    marker = tmp_path / 'ran'
    src = f'import pathlib\npathlib.Path({str(marker)!r}).write_text("x")\nimport torch\n' \
          f'from torch_utils import persistence\n@persistence.persistent_class\nclass Custom(torch.nn.Module):\n    pass\n'
    data = pickle.dumps(dict(ema=_persistent('Custom', src, state=dict(training=False, _parameters={}, _buffers={}, _modules={}))))
    (tmp_path / 'custom.pkl').write_bytes(data)
    with pytest.raises(PickleSecurityError, match="'Custom'"):
        load_network_pkl(str(tmp_path / 'custom.pkl'))
    assert not marker.exists()
    net = load_network_pkl(str(tmp_path / 'custom.pkl'), trust_embedded_code=True)['ema']
    assert marker.exists() and type(net).__name__ == 'Custom'


def test_cli_reports_hostile_pickle_in_one_line(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pkl'
    path.write_bytes(dict(_hostile_pickles(marker))['os.system'])
    out = subprocess.run([sys.executable, '-m', 'edm.generate', f'--network={path}', f'--outdir={tmp_path / "out"}',
                          '--seeds=0-1', '--steps=2', '--device=cpu'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in out.stderr, out.stderr
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_loss_and_augment_pipe_come_back_as_our_classes(tmp_path):
    from training.augment import AugmentPipe
    from training.loss import EDMLoss
    pipe = AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    path = tmp_path / 'snap.pkl'
    path.write_bytes(pickle.dumps(dict(ema=tiny_edm_net(), loss_fn=EDMLoss(P_mean=-1.0), augment_pipe=pipe,
                                       dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset'))))
    data = load_network_pkl(str(path))
    assert type(data['loss_fn']) is EDMLoss and data['loss_fn'].init_kwargs == dict(P_mean=-1.0)
    assert type(data['augment_pipe']) is AugmentPipe and data['augment_pipe'].init_kwargs == pipe.init_kwargs
    assert data['dataset_kwargs']['class_name'] == 'training.dataset.ImageFolderDataset'

"""edm.loading: safe loading of network pickles refuses hostile files without running them."""
import copy
import io
import os
import pickle
import pickletools
import re
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import dnnlib
from conftest import FIXTURES, ROOT, tiny_edm_net, write_network_pkl
from dnnlib.util import UserError
from edm import loading
from edm.loading import PersistentPlaceholder, PickleSecurityError, load_network_pkl
from torch_utils import persistence
from training import networks
from training.encoders import StandardRGBEncoder
from training.networks_edm2 import Precond


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


def _refused_without_running(tmp_path, hostile, index) -> str:
    """Write the index-th pickle of hostile(marker) and load it safely: a one-line UserError naming the file, and the
    marker file the pickle would create never appears. Returns the message."""
    marker = tmp_path / 'pwned'
    name, data = list(hostile(marker))[index]
    path = tmp_path / 'hostile.pkl'
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        load_network_pkl(str(path))
    message = str(info.value)
    assert '\n' not in message and 'hostile.pkl' in message, (name, message)
    assert not marker.exists(), f'{name}: the pickle ran code'
    return message


@pytest.mark.parametrize('index', range(8))
def test_safe_mode_refuses_hostile_pickles(tmp_path, index):
    _refused_without_running(tmp_path, _hostile_pickles, index)


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
    for name, pattern in [('cut.pkl', 'truncated'), ('text.pkl', 'truncated'),
                          ('list.pkl', 'not an EDM network pickle'), ('missing.pkl', 'cannot open')]:
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
          'from torch_utils import persistence\n@persistence.persistent_class\n' \
          'class Custom(torch.nn.Module):\n    pass\n'
    state = dict(training=False, _parameters={}, _buffers={}, _modules={})
    data = pickle.dumps(dict(ema=_persistent('Custom', src, state=state)))
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
                          '--seeds=0-1', '--steps=2', '--device=cpu'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
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


# ----------------------------------------------------------------------------------------------------------------------
# EDM2 snapshots (tests/fixtures/edm2-compat, written by upstream EDM2; see its README).

EDM2_SNAPSHOT = FIXTURES / 'edm2-compat' / 'edm2_snapshot_tiny.nosrc.pkl'

# Every global the snapshot references (README of the fixtures), and the only one inside its storage streams.
EDM2_GLOBALS = {('dnnlib.util', 'EasyDict'), ('torch_utils.persistence', '_reconstruct_persistent_obj'),
                ('torch.nn.modules.container', 'ModuleDict'), ('collections', 'OrderedDict'),
                ('torch._utils', '_rebuild_parameter'), ('torch._utils', '_rebuild_tensor_v2'),
                ('torch.storage', '_load_from_bytes')}


def _edm2_snapshot(ema, **entries) -> dnnlib.EasyDict:
    """A snapshot dict laid out as EDM2's training loop writes it (the loss is left out: it is not ours)."""
    data = dnnlib.EasyDict(encoder=StandardRGBEncoder(), dataset_kwargs=dnnlib.EasyDict(
        class_name='training.dataset.ImageFolderDataset', path='datasets/tiny-img8.zip', use_labels=True), loss_fn=None)
    data.update(entries)
    data.ema = ema
    return data


def _tiny_edm2_net():
    """EDM2's Precond built by name with the fixture snapshot's arguments, as a float16 EMA snapshot holds it."""
    kwargs = dict(model_channels=16, dropout=0.0, use_fp16=True, channel_mult=[1, 2], num_blocks=1,
                  attn_resolutions=[4], channels_per_head=16, img_resolution=8, img_channels=3, label_dim=10)
    net = dnnlib.util.construct_class_by_name(class_name='training.networks_edm2.Precond', **kwargs)
    return net.eval().requires_grad_(False).to(torch.float16)


class _RecordingUnpickler(loading._SafeUnpickler):
    """The safe unpickler, noting every global it resolves and the globals inside every storage stream."""

    def __init__(self, f):
        super().__init__(f)
        self.globals, self.storage_globals = set(), set()

    def find_class(self, module, name):
        self.globals.add((module, name))
        found = super().find_class(module, name)
        if (module, name) != ('torch.storage', '_load_from_bytes'):
            return found

        def load_storage(data):
            stream = io.BytesIO(data)
            for _ in range(5):   # the five pickles of torch's legacy format, then raw data
                self.storage_globals |= {arg for op, arg, _ in pickletools.genops(stream) if op.name == 'GLOBAL'}
            return found(data)
        return load_storage


def test_edm2_snapshot_loads_safely_and_matches_upstream():
    arrays = np.load(EDM2_SNAPSHOT.with_name('edm2_snapshot_tiny.npz'))
    data = load_network_pkl(str(EDM2_SNAPSHOT))
    assert type(data) is dnnlib.EasyDict and list(data) == ['encoder', 'dataset_kwargs', 'loss_fn', 'ema']
    assert type(data.encoder) is StandardRGBEncoder
    assert data.dataset_kwargs == dict(class_name='training.dataset.ImageFolderDataset', path='datasets/tiny-img8.zip',
                                       use_labels=True)
    assert isinstance(data.loss_fn, PersistentPlaceholder) and data.loss_fn.class_name == 'EDM2Loss'
    assert data.loss_fn.meta['state']['P_mean'] == -0.8 and data.loss_fn.meta['state']['P_std'] == 1.6
    net = data.ema
    assert type(net) is Precond and not net.training and not any(p.requires_grad for p in net.parameters())
    state = net.state_dict()
    expected = {k[len('state.'):]: v for k, v in arrays.items() if k.startswith('state.')}
    assert list(state) == list(expected)
    assert all(state[k].dtype == torch.float16 and np.array_equal(state[k].numpy(), v) for k, v in expected.items())

    x, sigma = torch.from_numpy(arrays['in.x']), torch.from_numpy(arrays['in.sigma'])
    labels = torch.from_numpy(arrays['in.class_labels'])
    # float16 parameters as generate_images runs them on the CPU, then cast to float32: the two differ by 5e-5 of
    # the output scale (gains divided in float16), 1e-5 is float32 round-off (tests/test_networks_edm2.py).
    for suffix, model in [('fp16_params', net), ('float32_params', copy.deepcopy(net).to(torch.float32))]:
        with torch.no_grad():
            D, logvar = model(x, sigma, labels, return_logvar=True)
        for actual, key in [(D, f'out.D_{suffix}'), (logvar, f'out.logvar_{suffix}')]:
            np.testing.assert_allclose(actual.numpy(), arrays[key], rtol=0, atol=1e-5 * np.abs(arrays[key]).max())
    assert torch.equal(data.encoder.decode(torch.from_numpy(arrays['out.D_fp16_params'])),
                       torch.from_numpy(arrays['out.encoder_decode_of_D_fp16_params']))


def test_edm2_snapshot_needs_exactly_the_allowed_globals():
    with open(EDM2_SNAPSHOT, 'rb') as f:
        unpickler = _RecordingUnpickler(f)
        unpickler.load()
    assert unpickler.globals == EDM2_GLOBALS and EDM2_GLOBALS <= set(loading._SAFE_GLOBALS)
    assert unpickler.storage_globals == {'torch HalfStorage'}


def _edm2_hostile_pickles(marker):
    """(name, pickled bytes) of EDM2-style files that must be refused; each would create `marker` if run."""
    touch = f'touch {marker}'
    yield 'os.system beside a valid EDM2 network', pickle.dumps(_edm2_snapshot(_tiny_edm2_net(),
                                                                               loss_fn=_Reduce(os.system, touch)))
    # The upstream file itself with its EasyDict global swapped for another dnnlib.util function of the same length.
    swapped = EDM2_SNAPSHOT.read_bytes().replace(b'\x8c\x08EasyDict', b'\x8c\x08open_url')
    yield 'upstream file, one global swapped', swapped
    blob = pickle.dumps(torch.zeros(2, dtype=torch.float16))   # any tensor: take one of its storage streams
    storage = next(arg for op, arg, _ in pickletools.genops(blob) if op.name in ('BINBYTES', 'SHORT_BINBYTES'))
    assert b'ctorch\nHalfStorage\n' in storage
    evil = storage.replace(b'ctorch\nHalfStorage\n', b'cposix\nsystem\n')
    yield 'os.system inside a storage stream', pickle.dumps(dict(ema=_Reduce(torch.storage._load_from_bytes, evil)))
    evil_src = f'import os\nos.system({touch!r})\nclass Precond:\n    pass\n'
    yield 'Precond with evil module_src', pickle.dumps(_edm2_snapshot(_persistent('Precond', evil_src)))


@pytest.mark.parametrize('index', range(4))
def test_edm2_hostile_variants_are_refused_without_running(tmp_path, index):
    message = _refused_without_running(tmp_path, _edm2_hostile_pickles, index)
    expected = {0: 'posix.system', 1: 'dnnlib.util.open_url', 2: 'posix.system'}.get(index)
    assert expected is None or expected in message, message


def _records(node, path='data'):
    """(path, what) pairs describing a safely unpickled tree: classes, state keys in order, tensors' dtype, shape
    and requires_grad, and every other value."""
    if isinstance(node, loading._Record):
        yield path, ('record', node.meta['type'], node.meta['version'], node.class_name, list(node.state))
        node = node.state
    elif isinstance(node, torch.nn.Module):   # a plain container such as ModuleDict
        yield path, (type(node), list(vars(node)))
        node = vars(node)
    if isinstance(node, dict):
        yield path, (type(node), list(node))
        for key, value in node.items():
            yield from _records(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        yield path, (type(node), len(node))
        for i, value in enumerate(node):
            yield from _records(value, f'{path}[{i}]')
    elif isinstance(node, torch.Tensor):
        yield path, (type(node), node.dtype, tuple(node.shape), node.requires_grad)
    else:
        yield path, (type(node), node)


def test_edm2_pickle_written_here_has_upstream_layout(tmp_path):
    ours = pickle.dumps(_edm2_snapshot(_tiny_edm2_net()))
    with open(EDM2_SNAPSHOT, 'rb') as f:
        theirs = _RecordingUnpickler(f)
        reference = theirs.load()
    written = _RecordingUnpickler(io.BytesIO(ours))
    data = written.load()
    assert (written.globals, written.storage_globals) == (theirs.globals, theirs.storage_globals)
    assert list(data) == list(reference)
    for key in ('encoder', 'dataset_kwargs', 'ema'):   # the loss is upstream's class, not ours
        assert list(_records(data[key], key)) == list(_records(reference[key], key))
    (tmp_path / 'ours.pkl').write_bytes(ours)
    assert type(load_network_pkl(str(tmp_path / 'ours.pkl'))['ema']) is Precond


def test_vae_encoder_in_a_snapshot_loads_safely(tmp_path):
    from training.encoders import StabilityVAEEncoder
    path = tmp_path / 'latent.pkl'
    path.write_bytes(pickle.dumps(_edm2_snapshot(_tiny_edm2_net(), encoder=StabilityVAEEncoder(batch_size=4))))
    encoder = load_network_pkl(str(path)).encoder
    assert type(encoder) is StabilityVAEEncoder and encoder._vae is None and encoder.init_kwargs == dict(batch_size=4)
    np.testing.assert_array_equal(encoder.scale, StabilityVAEEncoder().scale)


def test_our_persistent_class_names_are_unique():
    names = [name for module in loading._OUR_MODULES for name, obj in vars(module).items()
             if isinstance(obj, type) and persistence.is_persistent(obj) and obj.__module__ == module.__name__]
    assert len(names) == len(set(names)) and {'Precond', 'UNet', 'Block', 'MPConv', 'MPFourier',
                                                 'StandardRGBEncoder', 'StabilityVAEEncoder'} <= set(names)


def test_networks_built_on_meta_load_the_same(monkeypatch, tmp_path):
    # Large networks are built on the meta device; force that path for tiny ones (iDDPMPrecond's constructor reads
    # tensor values, so it falls back to the CPU).
    cpu = load_network_pkl(str(EDM2_SNAPSHOT)).ema
    iddpm = networks.iDDPMPrecond(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1, 2],
                                  num_blocks=1, attn_resolutions=[4]).eval()
    path = write_network_pkl(tmp_path / 'iddpm.pkl', iddpm)
    monkeypatch.setattr(loading, '_META_BUILD_MIN_ELEMENTS', 0)
    meta = load_network_pkl(str(EDM2_SNAPSHOT)).ema
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(cpu.state_dict().values(),
                                                                        meta.state_dict().values()))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(meta(x, torch.tensor(1.5)), cpu(x, torch.tensor(1.5)))
    loaded = load_network_pkl(path)['ema']
    assert loaded.sigma_min == iddpm.sigma_min
    assert torch.equal(loaded(x, torch.tensor(1.5)), iddpm(x, torch.tensor(1.5)))


# ----------------------------------------------------------------------------------------------------------------------
# Rebuilding is bounded by the file and checked against it.

@pytest.mark.parametrize('class_name, kwargs', [
    ('Precond', dict(img_resolution=64, img_channels=3, label_dim=0, model_channels=512)),
    ('EDMPrecond', dict(img_resolution=64, img_channels=3, model_type='SongUNet', model_channels=512)),
    ('iDDPMPrecond', dict(img_resolution=64, img_channels=3, M=10**9)),
])
def test_small_file_asking_for_a_large_network_is_refused_without_building_it(tmp_path, class_name, kwargs):
    # Built as asked, each of these would take gigabytes (or, iDDPM's 10^9 noise levels, hours).
    state = dict(_init_args=(), _init_kwargs=kwargs, training=False, _parameters={}, _buffers={}, _modules={})
    path = tmp_path / 'small.pkl'
    path.write_bytes(pickle.dumps(dict(ema=_persistent(class_name, '', state))))
    assert path.stat().st_size < 500
    peak, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with pytest.raises(UserError, match=f'constructor arguments of {class_name} ask for a larger network than the '
                                        f'weights in the file') as info:
        load_network_pkl(str(path))
    assert time.perf_counter() - start < 1.0 and '\n' not in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024   # KiB: no new peak beyond 200 MB


def _edited_pkl(tmp_path, net, **init_kwargs) -> str:
    """A pickle of net whose record asks the constructor for other arguments than those its weights were made with."""
    net._init_kwargs = dict(net._init_kwargs, **init_kwargs)
    return write_network_pkl(tmp_path / 'edited.pkl', net)


@pytest.mark.parametrize('init_kwargs, words', [
    (dict(model_channels=8), r'of another shape or dtype \(model\.[^ ]+, [^ ]+, \.\.\.\): model\.[^ ]+ is \[\d+'),
    (dict(num_blocks=2), r'(^|; )\d+ missing \(model\.enc\.'),
    (dict(attn_resolutions=[]), r'^\d+ extra \(model\.enc\.4x4_block0\.norm2\.weight, '),
])
def test_weights_that_do_not_fit_the_constructor_are_refused_in_one_line(tmp_path, init_kwargs, words):
    path = _edited_pkl(tmp_path, tiny_edm_net(), **init_kwargs)
    with pytest.raises(UserError, match='the weights in the file do not fit EDMPrecond as its recorded constructor '
                                        'arguments build it: ') as info:
        load_network_pkl(path)
    message = str(info.value).split('build it: ')[1]
    assert '\n' not in message and re.search(words, message), message


def test_recorded_attributes_are_applied_or_refused(tmp_path):
    net = tiny_edm_net()
    net.sigma_data, net.model.label_dropout, net.comment = 0.7, 0.25, 'edited'   # set after construction
    loaded = load_network_pkl(write_network_pkl(tmp_path / 'net.pkl', net))['ema']
    assert (loaded.sigma_data, loaded.model.label_dropout, loaded.comment) == (0.7, 0.25, 'edited')
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x, torch.tensor(2.0)), net(x, torch.tensor(2.0)))
    for name, value, words in [('sigma_data', 'high', "EDMPrecond.sigma_data is recorded as str 'high', where our "
                                                      "EDMPrecond holds float 0.5"),
                               ('round_sigma', 1.0, 'EDMPrecond.round_sigma is recorded as float 1.0, where our '
                                                    'EDMPrecond holds nothing'),
                               ('img_channels', np.zeros(2, dtype=object), 'EDMPrecond.img_channels is recorded as '
                                                                           'ndarray array([0, 0], dtype=object)')]:
        edited = tiny_edm_net()
        edited.__dict__[name] = value
        with pytest.raises(UserError, match=re.escape(words)):
            load_network_pkl(write_network_pkl(tmp_path / 'edited.pkl', edited))


def test_embedded_code_that_would_run_is_noted_not_run(tmp_path, monkeypatch, capsys):
    marker = tmp_path / 'pwned'
    ours = persistence._module_to_src(networks)
    for source, note in [(ours, None), (ours + '\n# edited here\n', None),
                         (f'import os\nos.system("touch {marker}")\n' + ours, 'runs statements when imported (line 2)'),
                         ('class Other:\n    pass\n', 'does not define EDMPrecond'), ('def (', 'is not valid Python')]:
        monkeypatch.setattr(networks.EDMPrecond, '_orig_module_src', source)
        net = load_network_pkl(write_network_pkl(tmp_path / 'net.pkl', tiny_edm_net()))['ema']
        assert type(net) is networks.EDMPrecond and not marker.exists()
        err = capsys.readouterr().err
        if note is None:
            assert err == ''
        else:
            assert err.count('\n') == 1 and err.startswith(f"note: the code embedded in '{tmp_path / 'net.pkl'}' for "
                                                           f"EDMPrecond {note}; it was not run"), err

"""dataset_tool (docs/edm-compat.md §7.4): label round trips, MNIST-format IDX padding, layout, errors."""
import errno
import gzip
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import cli_error
from dnnlib.util import UserError
from edm.dataset_tool import convert_dataset
from training.dataset import ImageFolderDataset, read_idx

ROOT = Path(__file__).resolve().parents[1]


def _images(root, names, size=8, mode='RGB'):
    rng = np.random.RandomState(0)
    out = {}
    for name in names:
        shape = (size, size, 3) if mode == 'RGB' else (size, size)
        img = (rng.rand(*shape) * 255).astype(np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(img).save(root / name)
        out[name] = img
    return out


def test_folder_with_dataset_json_to_zip_round_trip(tmp_path):
    src = tmp_path / 'src'
    names = [f'a/{k}.png' for k in range(5)]
    imgs = _images(src, names)
    src_labels = {n: (7 * k) % 4 for k, n in enumerate(names)}
    labels = [[n.replace('/', '\\'), label] for n, label in src_labels.items()]
    (src / 'dataset.json').write_text(json.dumps({'labels': labels}))
    dest = tmp_path / 'out.zip'
    assert convert_dataset(str(src), str(dest), progress=False) == 5

    with zipfile.ZipFile(dest) as z:
        infos = {i.filename: i for i in z.infolist()}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos.values())
        assert sorted(infos) == sorted([f'00000/img{k:08d}.png' for k in range(5)] + ['dataset.json'])
        meta = json.loads(z.read('dataset.json'))
    assert meta['labels'] == [[f'00000/img{k:08d}.png', src_labels[n]] for k, n in enumerate(sorted(names))]

    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert ds.name == 'out' and ds.resolution == 8
    got = [int(np.argmax(ds[i][1])) for i in range(len(ds))]
    assert got == [src_labels[n] for n in sorted(names)]
    for i, n in enumerate(sorted(names)):
        assert np.array_equal(ds[i][0], imgs[n].transpose(2, 0, 1))  # lossless


def test_top_level_folder_labels_and_folder_dest(tmp_path):
    src = tmp_path / 'src'
    _images(src, ['cat/1.png', 'cat/2.png', 'dog/1.png'], mode='L')
    dest = tmp_path / 'outdir'
    convert_dataset(str(src), str(dest), progress=False, max_images=3)
    meta = json.loads((dest / 'dataset.json').read_text())
    assert [label for _, label in meta['labels']] == [0, 0, 1]
    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert ds.num_channels == 1 and ds.label_dim == 2


def test_no_labels_gives_null(tmp_path):
    src = tmp_path / 'src'
    _images(src, ['1.png', '2.png'])
    convert_dataset(str(src), str(tmp_path / 'o.zip'), progress=False)
    with zipfile.ZipFile(tmp_path / 'o.zip') as z:
        assert json.loads(z.read('dataset.json')) == {'labels': None}


def _write_idx(path, array):
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack('>' + 'i' * array.ndim, *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_padded_to_32(tmp_path):
    rng = np.random.RandomState(1)
    images = (rng.rand(7, 28, 28) * 255).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images)
    _write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', labels)
    assert np.array_equal(read_idx(str(tmp_path / 'train-labels-idx1-ubyte.gz')), labels)
    dest = tmp_path / 'mnist.zip'
    convert_dataset(str(tmp_path / 'train-images-idx3-ubyte.gz'), str(dest), progress=False, max_images=6)
    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert len(ds) == 6 and ds.image_shape == [1, 32, 32] and ds.label_dim == 10
    for i in range(6):
        img, label = ds[i]
        assert np.array_equal(img[0, 2:30, 2:30], images[i])
        assert img[0, :2].sum() == 0 and img[0, 30:].sum() == 0 and img[0, :, :2].sum() == 0
        assert int(np.argmax(label)) == labels[i]


def test_mnist_idx_native_28(tmp_path):
    rng = np.random.RandomState(2)
    images = (rng.rand(3, 28, 28) * 255).astype(np.uint8)
    _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images)
    _write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.array([0, 7, 9], dtype=np.uint8))
    dest = tmp_path / 'mnist28.zip'
    convert_dataset(str(tmp_path / 'train-images-idx3-ubyte.gz'), str(dest), resolution=(28, 28), progress=False)
    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert ds.image_shape == [1, 28, 28] and [int(np.argmax(ds[i][1])) for i in range(3)] == [0, 7, 9]
    assert all(np.array_equal(ds[i][0][0], images[i]) for i in range(3))  # unpadded, not resampled


def test_resize_and_center_crop(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    PIL.Image.fromarray(np.full((12, 20, 3), 100, np.uint8)).save(src / 'wide.png')
    convert_dataset(str(src), str(tmp_path / 'c.zip'), transform='center-crop', resolution=(8, 8), progress=False)
    assert ImageFolderDataset(str(tmp_path / 'c.zip')).image_shape == [3, 8, 8]
    convert_dataset(str(src), str(tmp_path / 'w.zip'), transform='center-crop-wide', resolution=(8, 4),
                    progress=False)
    img = ImageFolderDataset(str(tmp_path / 'w.zip'))[0][0]
    assert img.shape == (3, 8, 8) and img[:, :2].sum() == 0 and img[:, 2:6].min() > 0


def test_errors(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    PIL.Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(src / 'a.png')
    with pytest.raises(UserError, match='square'):
        convert_dataset(str(src), str(tmp_path / 'x.zip'), progress=False)
    assert not (tmp_path / 'x.zip').exists() and len(list(tmp_path.glob('*.zip'))) == 0  # no partial output
    with pytest.raises(UserError, match='requires --resolution'):
        convert_dataset(str(src), str(tmp_path / 'x.zip'), transform='center-crop', progress=False)
    with pytest.raises(UserError, match='does not exist'):
        convert_dataset(str(tmp_path / 'nothing'), str(tmp_path / 'x.zip'), progress=False)
    PIL.Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / 'six.png')
    (tmp_path / 's6').mkdir()
    os.replace(tmp_path / 'six.png', tmp_path / 's6' / 'six.png')
    with pytest.raises(UserError, match='multiple of 4'):
        convert_dataset(str(tmp_path / 's6'), str(tmp_path / 'x.zip'), progress=False)


def test_cli_one_line_error(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-m', 'edm.dataset_tool', f'--source={tmp_path}/none',
                          f'--dest={tmp_path}/o.zip'], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0
    assert res.stderr.strip().count('\n') == 0 and res.stderr.startswith('error:') and 'does not exist' in res.stderr


@pytest.mark.parametrize('args, words', [
    (['--dest={file}/out.zip'], '{file} is a file, not a folder'),      # checked before the source is read
    (['--dest={file}'], '{file} is a file, not a folder'),              # a folder is wanted (no .zip suffix)
    (['--dest={tmp}/out.zip', '--resolution=0x0'], "'0x0': width and height must be positive"),
])
def test_cli_bad_dest_and_resolution_are_one_line(tmp_path, args, words):
    _images(tmp_path / 'src', ['a.png'])
    paths = dict(file=tmp_path / 'file', tmp=tmp_path)
    paths['file'].write_text('x')
    before = sorted(tmp_path.rglob('*'))
    line = cli_error(['-m', 'edm.dataset_tool', f'--source={tmp_path / "src"}'] + [a.format(**paths) for a in args])
    assert words.format(**paths) in line
    assert sorted(tmp_path.rglob('*')) == before


@pytest.mark.parametrize('existing', [False, True])
def test_failed_conversion_into_a_folder_leaves_it_as_it_was(tmp_path, existing):
    src = tmp_path / 'src'
    _images(src, ['a.png', 'b.png'])
    PIL.Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(src / 'c.png')    # differs from the first two
    dest = tmp_path / 'dest'
    if existing:
        dest.mkdir()
    with pytest.raises(UserError, match='differs from the first image'):
        convert_dataset(str(src), str(dest), progress=False)
    assert (dest.is_dir() and os.listdir(dest) == []) if existing else not dest.exists()


class _FullDisk:
    """A file that takes `room` bytes and then fails as a full disk does (every later write too)."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, 'No space left on device')
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize('dest_name', ['out.zip', 'out'])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, dest_name):
    from edm import dataset_tool
    _images(tmp_path / 'src', [f'{k}.png' for k in range(4)])
    real_zip, real_open = zipfile.ZipFile, open

    class FullZip(real_zip):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fp = _FullDisk(self.fp, 600)                   # about two 8x8 PNGs; the central directory fails too

    def full_open(path, mode='r', *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FullDisk(f, 0) if 'img00000002' in str(path) else f
    monkeypatch.setattr(dataset_tool.zipfile, 'ZipFile', FullZip)
    monkeypatch.setattr(dataset_tool, 'open', full_open, raising=False)
    with pytest.raises(SystemExit) as info:
        dataset_tool.main.main([f'--source={tmp_path / "src"}', f'--dest={tmp_path / dest_name}'])
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith('error: No space left on device writing ' + str(tmp_path / dest_name)), lines
    assert sorted(os.listdir(tmp_path)) == ['src']                  # no partial zip, temporary file or folder

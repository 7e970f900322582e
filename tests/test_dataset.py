"""ImageFolderDataset (docs/edm-compat.md §7.4): folder and zip, labels, max_size, xflip, cache, errors; IDX files."""
import gzip
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest

from dnnlib.util import UserError
from training.dataset import ImageFolderDataset, read_idx


def _write_folder(root, n=6, size=4, channels=3, labels=True, backslash=False):
    os.makedirs(root / '00000', exist_ok=True)
    rng = np.random.RandomState(0)
    images, entries = [], []
    for k in range(n):
        shape = (size, size, channels) if channels == 3 else (size, size)
        img = (rng.rand(*shape) * 255).astype(np.uint8)
        name = f'00000/img{k:08d}.png'
        PIL.Image.fromarray(img).save(root / name)
        images.append(img)
        entries.append([name.replace('/', '\\') if backslash else name, k % 3])
    if labels:
        (root / 'dataset.json').write_text(json.dumps({'labels': entries}))
    return images


def _zip_folder(folder, dest):
    with zipfile.ZipFile(dest, 'w', compression=zipfile.ZIP_STORED) as z:
        for root, _, files in os.walk(folder):
            for f in files:
                full = os.path.join(root, f)
                z.write(full, os.path.relpath(full, folder).replace(os.sep, '/'))
    return dest


def test_folder_and_zip_properties_and_items(tmp_path):
    images = _write_folder(tmp_path / 'ds')
    zpath = _zip_folder(tmp_path / 'ds', tmp_path / 'mydata.zip')
    for path, name in [(tmp_path / 'ds', 'ds'), (zpath, 'mydata')]:
        ds = ImageFolderDataset(str(path), use_labels=True)
        assert ds.name == name and len(ds) == 6
        assert ds.image_shape == [3, 4, 4] and ds.num_channels == 3 and ds.resolution == 4
        assert ds.label_shape == [3] and ds.label_dim == 3 and ds.has_labels and ds.has_onehot_labels
        img, label = ds[4]
        assert img.dtype == np.uint8 and np.array_equal(img, images[4].transpose(2, 0, 1))
        assert label.dtype == np.float32 and label.tolist() == [0, 1, 0]  # 4 % 3 = 1, one-hot
        ds.close()


def test_unused_or_missing_labels_have_shape_zero(tmp_path):
    _write_folder(tmp_path / 'ds', labels=False, channels=1)
    ds = ImageFolderDataset(str(tmp_path / 'ds'), use_labels=True)
    assert ds.label_shape == [0] and not ds.has_labels
    img, label = ds[0]
    assert img.shape == (1, 4, 4) and label.shape == (0,)
    _write_folder(tmp_path / 'ds2')
    assert ImageFolderDataset(str(tmp_path / 'ds2'), use_labels=False)[0][1].shape == (0,)


def test_backslash_names_in_dataset_json(tmp_path):
    _write_folder(tmp_path / 'ds', backslash=True)
    ds = ImageFolderDataset(str(tmp_path / 'ds'), use_labels=True)
    assert [int(np.argmax(ds[i][1])) for i in range(6)] == [0, 1, 2, 0, 1, 2]


def test_max_size_xflip_and_cache(tmp_path):
    images = _write_folder(tmp_path / 'ds', n=10)
    ds = ImageFolderDataset(str(tmp_path / 'ds'), max_size=4, random_seed=3, xflip=True, cache=True)
    order = np.arange(10)
    np.random.RandomState(3).shuffle(order)
    expected = np.sort(order[:4])
    assert len(ds) == 8
    for i in range(4):
        raw = images[expected[i]].transpose(2, 0, 1)
        assert np.array_equal(ds[i][0], raw)
        assert np.array_equal(ds[i + 4][0], raw[:, :, ::-1])  # second half mirrored
    assert ds.get_details(5).xflip and not ds.get_details(1).xflip
    ds[0][0][:] = 0  # items are copies: the cache is not modified
    assert np.array_equal(ds[0][0], images[expected[0]].transpose(2, 0, 1))
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == 8


def test_errors(tmp_path):
    with pytest.raises(UserError, match='not found'):
        ImageFolderDataset(str(tmp_path / 'missing'))
    with pytest.raises(UserError, match='not found'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='no image'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    _write_folder(tmp_path / 'ds')
    with pytest.raises(UserError, match='resolution 8'):
        ImageFolderDataset(str(tmp_path / 'ds'), resolution=8)
    (tmp_path / 'bad.zip').write_bytes(b'not a zip')
    with pytest.raises(UserError, match='zip'):
        ImageFolderDataset(str(tmp_path / 'bad.zip'))


@pytest.mark.parametrize('content, message', [
    (bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]), None),                 # one dimension of 3: [7, 8, 9]
    (bytes([0, 0, 8, 3, 0, 0]), 'header promises 3 dimensions'),       # the dimensions cut short
    (bytes([0, 0, 8, 1, 0, 0, 0, 3, 7]), 'expected 3 bytes'),          # the data cut short
    (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), 'unsigned-byte'),  # float32 IDX
])
def test_read_idx(tmp_path, content, message):
    path = tmp_path / 'x-idx1-ubyte.gz'
    with gzip.open(path, 'wb') as f:
        f.write(content)
    if message is None:
        assert read_idx(str(path)).tolist() == [7, 8, 9]
    else:
        with pytest.raises(UserError, match=message):
            read_idx(str(path))
    path.write_bytes(b'not gzip')
    with pytest.raises(UserError, match='cannot read'):
        read_idx(str(path))

"""edm.images: pixel conversion, file naming and the grid picture."""
import errno
import os

import numpy as np
import PIL.Image
import pytest
import torch

from edm.images import image_grid, image_path, save_images, to_uint8


def test_to_uint8_clips_and_truncates_like_upstream():
    x = torch.tensor([-2.0, -1.0, -0.0039, 0.0, 0.5, 0.99, 1.0, 3.0], dtype=torch.float64).reshape(1, 1, 1, 8)
    expected = np.clip(x.numpy() * 127.5 + 128, 0, 255).astype(np.uint8)  # truncation after clipping
    assert np.array_equal(to_uint8(x)[0, 0, :, 0], expected[0, 0, 0])
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 127, 128, 191, 254, 255, 255]


def test_image_paths():
    assert image_path('out', 42).endswith('out/000042.png')
    assert image_path('out', 1234, subdirs=True).endswith('out/001000/001234.png')


def test_save_images_modes_and_grid(tmp_path):
    gray = torch.linspace(-1, 1, 2 * 16).reshape(2, 1, 4, 4)
    rgb = torch.zeros(3, 3, 4, 4)
    paths = save_images(gray, [5, 6], str(tmp_path / 'g'))
    assert [PIL.Image.open(p).mode for p in paths] == ['L', 'L']
    assert np.array_equal(np.asarray(PIL.Image.open(paths[1])), to_uint8(gray)[1, :, :, 0])
    paths = save_images(rgb, [7, 8, 9], str(tmp_path / 'c'))
    assert PIL.Image.open(paths[0]).mode == 'RGB' and not list((tmp_path / 'c').glob('.tmp-*'))
    grid = image_grid(rgb)
    assert grid.size == (8, 8) and grid.mode == 'RGB'


def test_a_full_disk_names_the_image_and_leaves_no_part_of_it(tmp_path, monkeypatch):
    def full(image, f, format=None):
        f.write(b'\x89PNG partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PIL.Image.Image, 'save', full)
    with pytest.raises(OSError) as info:
        save_images(torch.zeros(2, 1, 4, 4), [3, 4], str(tmp_path))
    assert info.value.errno == errno.ENOSPC and info.value.filename == image_path(str(tmp_path), 3)
    assert os.listdir(tmp_path) == []

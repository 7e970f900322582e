"""art.plots: exact export round-trips, the schedule table, and atomic PNG plots."""
import json

import numpy as np
import PIL.Image
import pytest

from art import plots

# Values whose shortest repr has 17 significant digits, tiny and huge magnitudes: a lossy writer would change them.
GRID = np.array([80.0, 0.1 + 0.2 + 10, 1 / 3, 2 ** -30, 1e-300, 0.0])


@pytest.mark.parametrize('fmt', plots.EXPORT_FORMATS)
def test_export_round_trips_exactly(fmt):
    text = plots.export_text(GRID, fmt, comment='a comment\nover two lines')
    back = plots.parse_export(text, fmt)
    assert back.dtype == np.float64
    assert back.tobytes() == GRID.tobytes()
    assert text.endswith('\n')


@pytest.mark.parametrize('fmt', ['list', 'diffusers'])
def test_json_formats_are_plain_lists(fmt):
    values = json.loads(plots.export_text(GRID, fmt))
    assert isinstance(values, list) and values == GRID.tolist() and values[-1] == 0.0


def test_k_diffusion_snippet_executes_to_the_grid():
    torch = pytest.importorskip('torch')
    namespace = {}
    exec(plots.export_text(GRID, 'k-diffusion', comment='x'), namespace)  # pylint: disable=exec-used
    sigmas = namespace['sigmas']
    assert isinstance(sigmas, torch.Tensor) and sigmas.dtype == torch.float64 and sigmas.ndim == 1
    assert sigmas.numpy().tobytes() == GRID.tobytes()


def test_diffusers_export_for_a_scheduler_is_its_snippet():
    text = plots.export_text(GRID[:4].tolist() + [0.0], 'diffusers', comment='c', scheduler='EulerDiscreteScheduler')
    assert text.startswith('# c\n') and 'EulerDiscreteScheduler.from_config(pipe.scheduler.config' in text
    assert f"sigmas = {json.dumps(GRID[:4].tolist() + [0.0])}" in text


def test_export_rejects_unknown_format_and_garbage():
    with pytest.raises(ValueError, match='unknown export format'):
        plots.export_text(GRID, 'npz')
    with pytest.raises(ValueError, match='diffusers format'):
        plots.export_text(GRID, 'list', scheduler='EulerDiscreteScheduler')
    with pytest.raises(ValueError):
        plots.parse_export('sigmas = [1, 0]', 'k-diffusion')
    with pytest.raises(ValueError):
        plots.parse_export('{"a": 1}', 'list')


def test_schedule_table_pads_shorter_grids():
    table = plots.schedule_table({'a': [3.0, 1.0, 0.0], 'b': [3.0, 0.0]}).splitlines()
    assert table[0] == '| i | a (K=2) | b (K=1) |'
    assert len(table) == 2 + 3
    assert table[-1] == '| 2 | 0 |  |'


def _png(path):
    with PIL.Image.open(path) as image:
        image.load()
        return image.format, image.size


def test_plot_schedules_writes_png_atomically(tmp_path):
    path = tmp_path / 'sub' / 'grids.png'
    plots.plot_schedules({'a': GRID, 'b': [80.0, 1.0, 0.0]}, path, title='t')
    fmt, (width, height) = _png(path)
    assert fmt == 'PNG' and 300 < width < 3000 and 200 < height < 3000
    assert [p.name for p in path.parent.iterdir()] == ['grids.png']


def test_plot_metric_vs_nfe(tmp_path):
    rows = [dict(schedule=s, nfe=n, value=v) for s, scale in (('edm', 1.0), ('art', 0.5))
            for n, v in ((2, 0.6 * scale), (10, 0.1 * scale), (100, 0.01 * scale))]
    rows.append(dict(schedule='exact', nfe=10, value=0.0))    # cannot be drawn on a log axis: left out, not an error
    path = plots.plot_metric_vs_nfe(rows, tmp_path / 'w2.png', 'W2')
    fmt, (width, height) = _png(path)
    assert fmt == 'PNG' and width > 300 and height > 200
    with pytest.raises(ValueError):
        plots.plot_metric_vs_nfe([], tmp_path / 'empty.png', 'W2')


def test_more_lines_than_colours_get_another_style(tmp_path, monkeypatch):
    import matplotlib.axes
    drawn, plot = [], matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        drawn.append((kwargs['label'], kwargs.get('linestyle')))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, 'plot', record)
    rows = [dict(schedule=f's{i}', nfe=n, value=1.0 + i) for i in range(12) for n in (5, 10)]
    plots.plot_metric_vs_nfe(rows, tmp_path / 'many.png', 'FID')
    assert [style for _, style in drawn] == ['-'] * 10 + ['--'] * 2

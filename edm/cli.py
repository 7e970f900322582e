"""Click plumbing shared by every command line: one-line errors, option callbacks, devices, generate options.

Command lines parse their options with these and call library functions; library modules never import this one.
"""
import errno
import os
import sys
import tempfile
from typing import Any, Callable, List, Optional

import click
import torch

import dnnlib
from dnnlib.util import UserError
from edm import grids
from edm.rng import MAX_SEED


class _OneLineErrors:
    """Mixin for click commands: usage errors and UserErrors print `error: <message>` and exit non-zero."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs['standalone_mode'] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            raise SystemExit(exc.exit_code) from None
        except click.exceptions.Abort:
            _fail('aborted')
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except UserError as exc:
            _fail(str(exc))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _drop_unwritable_stdout()
            where = f' writing {exc.filename}' if exc.filename else ''
            _fail(f'{exc.strerror}{where}; free some space or write elsewhere')


def _drop_unwritable_stdout() -> None:
    """Flush stdout; when that fails too (a full disk behind it), point it at os.devnull, so that the interpreter's
    own flush at exit does not print a second error."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(message: str, exit_code: int = 1) -> None:
    """Print `error: message` on stderr and exit with exit_code."""
    click.echo(f'error: {message}', err=True)
    raise SystemExit(exit_code)


class Command(_OneLineErrors, click.Command):
    """click.Command with one-line errors."""


class Group(_OneLineErrors, click.Group):
    """click.Group with one-line errors."""


MAX_LIST_LEN = 10_000_000    # the most integers a list option expands to (--seeds=0-9999999): its memory stays bounded


def int_list_callback(minimum: int, what: str, maximum: Optional[int] = None
                      ) -> Callable[[click.Context, click.Parameter, Optional[str]], Optional[List[int]]]:
    """click callback factory: a non-empty parse_int_list (e.g. 1,2,5-10) of at most MAX_LIST_LEN integers in
    [minimum, maximum] (None stays None)."""
    def callback(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[List[int]]:
        if value is None:
            return None
        try:
            values = dnnlib.util.parse_int_list(value, max_len=MAX_LIST_LEN)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if not values:
            raise click.BadParameter(f'no {what} given')
        if min(values) < minimum:
            raise click.BadParameter(f'{what} must be integers >= {minimum}')
        if maximum is not None and max(values) > maximum:
            raise click.BadParameter(f'{what} must be integers <= {maximum:,}, got {max(values):,}')
        return values
    return callback


def steps_callback(what: str = 'steps') -> Callable[[click.Context, click.Parameter, Optional[str]],
                                                     Optional[List[int]]]:
    """click callback factory for a list of step counts K: integers in [1, edm.grids.MAX_STEPS]."""
    return int_list_callback(1, what, grids.MAX_STEPS)


parse_seeds = int_list_callback(0, 'seeds', MAX_SEED)
STEPS = click.IntRange(1, grids.MAX_STEPS)   # click type of a single step count K
SEED = click.IntRange(0, MAX_SEED)           # click type of a single seed


def name_list_callback(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[List[str]]:
    """click callback: a comma-separated list of names, stripped; '' gives [], an empty entry (a,,b) is an error."""
    if value is None or not value.strip():
        return None if value is None else []
    names = [name.strip() for name in value.split(',')]
    if '' in names:
        raise click.BadParameter(f'{value!r} has an empty entry; separate the names by single commas')
    return names


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    return torch.device('cpu')


def parse_device(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> torch.device:
    """click callback: `--device`, default cuda:LOCAL_RANK when available, else cpu."""
    if value is None:
        return default_device()
    try:
        device = torch.device(value)
    except RuntimeError:
        raise click.BadParameter(f'{value!r} is not a torch device (use cpu or cuda)') from None
    if device.type not in ('cpu', 'cuda'):
        raise click.BadParameter(f'{value!r}: only cpu and cuda devices are supported')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine; use --device=cpu')
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    return device


def generate_options(sigma_schedule_flag: str = '--schedule', default_outdir: Optional[str] = None
                     ) -> Callable[[Callable], Callable]:
    """The options of upstream generate.py plus --device and --trust-pickle (shared with generate_art.py, which
    names the ablation option for sigma(t) `--sigma-schedule` and has a default output folder)."""
    options = [
        click.option('--outdir', help='Where to save the output images', metavar='DIR', type=str,
                     required=default_outdir is None, default=default_outdir, show_default=default_outdir is not None),
        click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63',
                     show_default=True, callback=parse_seeds),
        click.option('--subdirs', help='Create subdirectory for every 1000 seeds', is_flag=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT',
                     type=click.IntRange(min=0), default=None),
        click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT',
                     type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT',
                     type=STEPS, default=18, show_default=True),
        click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT',
                     type=click.FloatRange(min=0, min_open=True)),
        click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT',
                     type=click.FloatRange(min=0, min_open=True)),
        click.option('--rho', help='Time step exponent', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True),
                     default=7, show_default=True),
        click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT',
                     type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT',
                     type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT',
                     type=click.FloatRange(min=0), default='inf', show_default=True),
        click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=float,
                     default=1, show_default=True),
        click.option('--disc', 'discretization', help='Ablate time step discretization {t_i}',
                     type=click.Choice(['vp', 've', 'iddpm', 'edm'])),
        click.option(sigma_schedule_flag, 'schedule', help='Ablate noise schedule sigma(t)',
                     type=click.Choice(['vp', 've', 'linear'])),
        click.option('--scaling', help='Ablate signal scaling s(t)', type=click.Choice(['vp', 'none'])),
        click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='DEVICE',
                     type=str, default=None, callback=parse_device),
        click.option('--trust-pickle', 'trust_pickle', is_flag=True,
                     help='Run the code embedded in the network pickle (only for files you trust)'),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def guidance_options() -> Callable[[Callable], Callable]:
    """--gnet and --guidance: autoguidance by a guiding network (edm.guidance; checked there, before loading)."""
    options = [
        click.option('--gnet', help='Guiding network pickle for autoguidance (only its "ema" is read)',
                     metavar='PATH|URL', type=str, default=None),
        click.option('--guidance', help='Guidance weight w > 0: D_gnet + w (D - D_gnet); needs --gnet', metavar='FLOAT',
                     type=float, default=None),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


# ---------------------------------------------------------------------------------------------------------------------
# Checks made before any loading or sampling, so that a mistake costs nothing and leaves nothing half-written.

def _writable_folder(path: str, option: str) -> None:
    """UserError unless the folders missing from `path` can be made: its nearest existing ancestor must be a folder
    we can create files in (probed with a temporary file that vanishes at once: unlike permission bits, the probe
    also sees read-only mounts and file systems that refuse new files even to root)."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f'{option}: cannot make {path}: {existing} is a file, not a folder; choose another path')
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f'{option}: cannot write in {existing} ({exc.strerror or exc}); choose another path or fix '
                        f'its permissions') from None


def check_output_dir(path: str, option: str) -> str:
    """UserError unless `path` is an existing folder we can write in, or a folder we can create (nothing is created
    here, so a later error leaves no empty folder behind). Returns path."""
    if not path:
        raise UserError(f'{option} must not be empty; give a folder path')
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f'{option}: {path} is a file, not a folder; give a folder path (new or existing)')
    _writable_folder(path, option)
    return path


def check_output_file(path: str, option: str) -> str:
    """UserError unless `path` can be written as a file: not a folder, in a folder that exists and is writable or
    can be created (nothing is created here). Returns path."""
    if not path:
        raise UserError(f'{option} must not be empty; give a file path')
    if os.path.isdir(path):
        raise UserError(f'{option}: {path} is a folder; give a file path')
    if os.path.exists(path) and not os.path.isfile(path):     # a device such as /dev/full: the atomic rename
        raise UserError(f'{option}: {path} is not a regular file; give a file path')   # would replace it
    _writable_folder(os.path.dirname(os.path.abspath(path)), option)
    return path


def check_sigma_range(sigma_min: Optional[float], sigma_max: Optional[float], discretization: str = 'edm',
                      net: Any = None) -> None:
    """UserError unless --sigma_min/--sigma_max leave a range sigma_min < sigma_max once the grid's defaults fill in
    what is not given and the levels are clamped to the network's own range, as the samplers do (net None: before
    loading, without the clamping). Nothing is checked when neither option is given."""
    if sigma_min is None and sigma_max is None:
        return
    low, high = grids.sigma_range(discretization, sigma_min, sigma_max, net)
    if low < high:
        return
    given = ' '.join(f'--{name}={value:g}' for name, value in (('sigma_min', sigma_min), ('sigma_max', sigma_max))
                     if value is not None)
    whence = [f'the {discretization} grid\'s default for the other'] if sigma_min is None or sigma_max is None else []
    if net is not None:
        whence.append(f'clamped to the network\'s range [{float(net.sigma_min):g}, {float(net.sigma_max):g}]')
    raise UserError(f'{given} leaves no noise levels: sigma_min {low:g} is not below sigma_max {high:g}'
                    f'{" (" + ", ".join(whence) + ")" if whence else ""}; give --sigma_min below --sigma_max')

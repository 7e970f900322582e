"""The benchmark report: every schedule method side by side, as a Markdown table and a plot per setting.

    python -m art.report --outdir=docs/bench [--settings=trained,mixture,fmnist-mixture] [--art-rl=RUN_DIR] ...

The settings, their sizes and schedule sources are declared in art/settings.py (the options without --trained- or
--inception- set MixtureOptions, the others TrainedOptions); the tables and report.md are written by
art/report_writer.py. Writes `<outdir>/report.md`, one PNG per setting and `rows.json`.
"""

from typing import List, Optional

import click

from art.direct import NUM_LATENTS
from art.settings import SETTINGS, MixtureOptions, TrainedOptions, one_clock_file, run_report
from edm.cli import Command, check_output_dir, int_list_callback, name_list_callback

MAX_LATENTS = 100_000       # latents or images per set, training latents: twice the 50k images of a full-size FID
MAX_REPEATS = 20            # disjoint seed sets per value
MAX_ITERS = 100_000         # direct's Adam iterations (its own default is 300)


@click.command(cls=Command)
@click.option('--outdir', help='Where to write report.md, plots and rows.json', metavar='DIR', default='docs/bench',
              show_default=True)
@click.option('--art-rl', 'art_rl', help='Run directory of train_art.py with art-rl schedules for the mixture',
              metavar='DIR', default=None)
@click.option('--num', help='Latents (images) per seed set', type=click.IntRange(min=2), default=256, show_default=True)
@click.option('--repeats', help='Disjoint seed sets per value (mean +- std)', type=click.IntRange(min=1), default=4,
              show_default=True)
@click.option('--direct-latents', help='Training latents of direct on the two mixtures (direct\'s default)',
              type=click.IntRange(min=1), default=NUM_LATENTS, show_default=True)
@click.option('--fid-num', help='Images per Inception-FID value on the Fashion-MNIST mixture (0: skip FID)',
              type=click.IntRange(min=0), default=256, show_default=True)
@click.option('--fid-ref', help='FID reference statistics for the Fashion-MNIST mixture  [default: exact draws]',
              metavar='NPZ', default=None)
@click.option('--fid-ref-num', help='Exact draws from the mixture for its FID reference', type=click.IntRange(min=2),
              default=2000, show_default=True)
@click.option('--fid-steps', help='Step counts of the mixture\'s FID settings', metavar='LIST', default='5,10',
              show_default=True, callback=steps_callback('fid-steps'))
@click.option('--fid-solvers', help='Solvers of the mixture\'s FID settings',
              type=click.Choice(['euler', 'heun', 'both']), default='euler', show_default=True)
@click.option('--settings', help=f'Settings to run, of {", ".join(SETTINGS)}', metavar='LIST',
              default=','.join(SETTINGS), show_default=True, callback=name_list_callback)
@click.option('--trained-num', help='Latents of the rms cells of the trained network', type=click.IntRange(min=2),
              default=TrainedOptions.num, show_default=True)
@click.option('--trained-fid-num', help='Images per LeNet-FID value of the trained network (0: skip LeNet-FID)',
              type=click.IntRange(min=0), default=TrainedOptions.fid_num, show_default=True)
@click.option('--trained-fid-repeats', help='Disjoint image sets of the LeNet-FID at Euler K = 5',
              type=click.IntRange(min=1), default=TrainedOptions.fid_repeats, show_default=True)
@click.option('--trained-closed-form', help='Closed-form schedule of the trained network (its clock serves every K)',
              metavar='FILE', default=None, show_default='the shipped one')
@click.option('--trained-art-rl', help='art-rl schedule of the trained network, or a train_art.py run directory',
              metavar='FILE|DIR', default=None, show_default='the shipped one')
@click.option('--trained-direct-steps', help='K at which direct is made on the trained network', metavar='LIST',
              default=','.join(map(str, TrainedOptions.direct_steps)), show_default=True,
              callback=steps_callback('trained-direct-steps'))
@click.option('--trained-direct-latents', help='Training latents of direct on the trained network',
              type=click.IntRange(min=1), default=TrainedOptions.direct_latents, show_default=True)
@click.option('--trained-direct-iters', help='Adam iterations of direct on the trained network (held-out stopping)',
              type=click.IntRange(min=0), default=TrainedOptions.direct_iters, show_default=True)
@click.option('--trained-gits-latents', help='Teacher trajectories of gits on the trained network',
              type=click.IntRange(min=1), default=TrainedOptions.gits_latents, show_default=True)
@click.option('--inception-ref', help='Inception statistics of the training images (fid.py ref --detector=offline) '
              'for the trained network  [default: no Inception FID]', metavar='NPZ', default=None)
@click.option('--inception-num', help='Images per Inception-FID value of the trained network',
              type=click.IntRange(min=2), default=TrainedOptions.inception_num, show_default=True)
def main(outdir: str, art_rl: Optional[str], num: int, repeats: int, direct_latents: int, fid_num: int,
         fid_ref: Optional[str], fid_ref_num: int, fid_steps: List[int], fid_solvers: str, settings: List[str],
         trained_num: int, trained_fid_num: int, trained_fid_repeats: int, trained_closed_form: Optional[str],
         trained_art_rl: Optional[str], trained_direct_steps: List[int], trained_direct_latents: int,
         trained_direct_iters: int, trained_gits_latents: int, inception_ref: Optional[str],
         inception_num: int) -> None:
    """Benchmark every schedule method and write the report."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UserError(f'--settings: unknown {", ".join(unknown)}; choose from {", ".join(SETTINGS)}')
    check_output_dir(outdir, '--outdir')
    version = code_version()                        # before this run writes its own outputs into the tree
    for ref in (fid_ref, inception_ref):            # a bad file fails now, not after an hour of sampling
        if ref:
            fid.load_reference(ref)
    trained = TrainedOptions(
        num=trained_num, fid_num=trained_fid_num, fid_repeats=trained_fid_repeats, inception_ref=inception_ref,
        inception_num=inception_num,
        closed_form_file=one_clock_file(trained_closed_form, 'closed-form', '--trained-closed-form'),
        art_rl_file=one_clock_file(trained_art_rl, 'art-rl', '--trained-art-rl'), direct_steps=trained_direct_steps,
        direct_latents=trained_direct_latents, direct_iters=trained_direct_iters, gits_latents=trained_gits_latents)
    os.makedirs(outdir, exist_ok=True)
    parts = {'trained': lambda: trained_results(outdir, trained),
             'mixture': lambda: mixture_results(outdir, art_rl, num, repeats, direct_latents),
             'fmnist-mixture': lambda: fmnist_mixture_results(outdir, num, repeats, direct_latents, fid_num, fid_ref,
                                                              fid_ref_num, fid_steps, fid_solvers)}
    results, walls = [], {}
    for name in SETTINGS:
        if name in settings:
            start = time.perf_counter()
            results += parts[name]()
            walls[name] = time.perf_counter() - start
    print(write_report(outdir, results, version, walls))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter

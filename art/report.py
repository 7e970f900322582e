"""The benchmark report: every schedule method side by side, as a Markdown table and a plot per setting.

    python -m art.report --outdir=docs/bench [--settings=trained,mixture,fmnist-mixture] [--art-rl=RUN_DIR] ...

The settings, their sizes and schedule sources are declared in art/settings.py (the options without --trained-,
--inception- or --diffusers- set MixtureOptions, --diffusers-* DiffusersOptions, the others TrainedOptions); the
tables and report.md are written by art/report_writer.py. Writes `<outdir>/report.md`, one PNG per setting and
`rows.json`.
"""

from typing import List, Optional

import click

from art.compare import MAX_LATENTS
from art.practitioner import DiffusersOptions
from art.settings import SETTINGS, MixtureOptions, TrainedOptions, one_clock_file, run_report
from edm.cli import Command, check_output_dir, name_list_callback, steps_callback

MAX_REPEATS = 20            # disjoint seed sets per value
MAX_DIRECT_ITERS = 100_000  # direct's Adam iterations (a cap far above what its stopping rule takes)
MAX_REFERENCE_STEPS = 4096  # RK4 steps of a reference solve


@click.command(cls=Command)
@click.option('--outdir', help='Where to write report.md, plots and rows.json', metavar='DIR', default='docs/bench',
              show_default=True)
@click.option('--art-rl', 'art_rl', help='Run directory of train_art.py with art-rl schedules for the mixture',
              metavar='DIR', default=None)
@click.option('--num', help='Latents (images) per seed set', type=click.IntRange(2, MAX_LATENTS),
              default=MixtureOptions.num, show_default=True)
@click.option('--repeats', help='Disjoint seed sets per value (mean +- std)', type=click.IntRange(1, MAX_REPEATS),
              default=MixtureOptions.repeats, show_default=True)
@click.option('--direct-latents', help='Training latents of direct on the two mixtures (direct\'s default)',
              type=click.IntRange(1, MAX_LATENTS), default=MixtureOptions.direct_latents, show_default=True)
@click.option('--fid-num', help='Images per Inception-FID value on the Fashion-MNIST mixture (0: skip FID)',
              type=click.IntRange(0, MAX_LATENTS), default=MixtureOptions.fid_num, show_default=True)
@click.option('--fid-ref', help='FID reference statistics for the Fashion-MNIST mixture  [default: exact draws]',
              metavar='NPZ', default=None)
@click.option('--fid-ref-num', help='Exact draws from the mixture for its FID reference',
              type=click.IntRange(2, MAX_LATENTS), default=MixtureOptions.fid_ref_num, show_default=True)
@click.option('--fid-steps', help='Step counts of the mixture\'s FID settings', metavar='LIST',
              default=','.join(map(str, MixtureOptions.fid_steps)), show_default=True,
              callback=steps_callback('fid-steps'))
@click.option('--fid-solvers', help='Solvers of the mixture\'s FID settings',
              type=click.Choice(['euler', 'heun', 'both']), default=MixtureOptions.fid_solvers, show_default=True)
@click.option('--settings', help=f'Settings to run, of {", ".join(SETTINGS)}', metavar='LIST',
              default=','.join(SETTINGS), show_default=True, callback=name_list_callback)
@click.option('--trained-num', help='Latents of the rms cells of the trained network',
              type=click.IntRange(2, MAX_LATENTS), default=TrainedOptions.num, show_default=True)
@click.option('--trained-fid-num', help='Images per LeNet-FID value of the trained network (0: skip LeNet-FID)',
              type=click.IntRange(0, MAX_LATENTS), default=TrainedOptions.fid_num, show_default=True)
@click.option('--trained-fid-repeats', help='Disjoint image sets of the LeNet-FID at Euler K = 5',
              type=click.IntRange(1, MAX_REPEATS), default=TrainedOptions.fid_repeats, show_default=True)
@click.option('--trained-closed-form', help='Closed-form schedule of the trained network (its clock serves every K)',
              metavar='FILE', default=None, show_default='the shipped one')
@click.option('--trained-art-rl', help='art-rl schedule of the trained network, or a train_art.py run directory',
              metavar='FILE|DIR', default=None, show_default='the shipped one')
@click.option('--trained-direct-steps', help='K at which direct is made on the trained network', metavar='LIST',
              default=','.join(map(str, TrainedOptions.direct_steps)), show_default=True,
              callback=steps_callback('trained-direct-steps'))
@click.option('--trained-direct-latents', help='Training latents of direct on the trained network',
              type=click.IntRange(1, MAX_LATENTS), default=TrainedOptions.direct_latents, show_default=True)
@click.option('--trained-direct-iters', help='Adam iterations of direct on the trained network (held-out stopping)',
              type=click.IntRange(0, MAX_DIRECT_ITERS), default=TrainedOptions.direct_iters, show_default=True)
@click.option('--trained-gits-latents', help='Teacher trajectories of gits on the trained network',
              type=click.IntRange(1, MAX_LATENTS), default=TrainedOptions.gits_latents, show_default=True)
@click.option('--inception-ref', help='Inception statistics of the training images (fid.py ref --detector=offline) '
              'for the trained network  [default: no Inception FID]', metavar='NPZ', default=None)
@click.option('--inception-num', help='Images per Inception-FID value of the trained network',
              type=click.IntRange(2, MAX_LATENTS), default=TrainedOptions.inception_num, show_default=True)
@click.option('--diffusers-network', help='The diffusers model folder of the practitioner\'s table', metavar='FOLDER',
              default=DiffusersOptions.network, show_default='assets/ddpm-fmnist28-cond')
@click.option('--diffusers-steps', help='Step counts of the practitioner\'s table', metavar='LIST',
              default=','.join(map(str, DiffusersOptions.steps)), show_default=True,
              callback=steps_callback('diffusers-steps'))
@click.option('--diffusers-num', help='Latents of the rms of the practitioner\'s table',
              type=click.IntRange(2, MAX_LATENTS), default=DiffusersOptions.num, show_default=True)
@click.option('--diffusers-fid-num', help='Images per LeNet-FID value of the practitioner\'s table (0: skip FID)',
              type=click.IntRange(0, MAX_LATENTS), default=DiffusersOptions.fid_num, show_default=True)
@click.option('--diffusers-reference-steps', help='RK4 steps of the practitioner\'s rms reference',
              type=click.IntRange(2, MAX_REFERENCE_STEPS), default=DiffusersOptions.reference_steps, show_default=True)
@click.option('--diffusers-closed-form', help='Closed-form schedule of the diffusers model (its clock serves every K)',
              metavar='FILE', default=None, show_default='the network\'s cached adaptive clock')
@click.option('--diffusers-art-rl', help='art-rl schedule of the diffusers model', metavar='FILE', default=None,
              show_default='no art-rl rows')
@click.option('--diffusers-direct-steps', help='K at which direct is made on the diffusers model', metavar='LIST',
              default=','.join(map(str, DiffusersOptions.direct_steps)), show_default=True,
              callback=steps_callback('diffusers-direct-steps'))
@click.option('--diffusers-sigma-max', help='Noise level the project\'s grids on the diffusers model start from',
              metavar='SIGMA', type=click.FloatRange(min=0, min_open=True), default=None,
              show_default='min(80, the table\'s top)')
def main(outdir: str, art_rl: Optional[str], num: int, repeats: int, direct_latents: int, fid_num: int,
         fid_ref: Optional[str], fid_ref_num: int, fid_steps: List[int], fid_solvers: str, settings: List[str],
         trained_num: int, trained_fid_num: int, trained_fid_repeats: int, trained_closed_form: Optional[str],
         trained_art_rl: Optional[str], trained_direct_steps: List[int], trained_direct_latents: int,
         trained_direct_iters: int, trained_gits_latents: int, inception_ref: Optional[str],
         inception_num: int, diffusers_network: str, diffusers_steps: List[int], diffusers_num: int,
         diffusers_fid_num: int, diffusers_reference_steps: int, diffusers_closed_form: Optional[str],
         diffusers_art_rl: Optional[str], diffusers_direct_steps: List[int],
         diffusers_sigma_max: Optional[float]) -> None:
    """Benchmark every schedule method and write the report."""
    check_output_dir(outdir, '--outdir')
    mixtures = MixtureOptions(art_rl=art_rl, num=num, repeats=repeats, direct_latents=direct_latents, fid_num=fid_num,
                              fid_ref=fid_ref, fid_ref_num=fid_ref_num, fid_steps=fid_steps, fid_solvers=fid_solvers)
    trained = TrainedOptions(
        num=trained_num, fid_num=trained_fid_num, fid_repeats=trained_fid_repeats, inception_ref=inception_ref,
        inception_num=inception_num,
        closed_form_file=one_clock_file(trained_closed_form, 'closed-form', '--trained-closed-form'),
        art_rl_file=one_clock_file(trained_art_rl, 'art-rl', '--trained-art-rl'), direct_steps=trained_direct_steps,
        direct_latents=trained_direct_latents, direct_iters=trained_direct_iters, gits_latents=trained_gits_latents)
    diffusers = DiffusersOptions(
        network=diffusers_network, steps=diffusers_steps, num=diffusers_num, fid_num=diffusers_fid_num,
        reference_steps=diffusers_reference_steps, closed_form_file=diffusers_closed_form, art_rl_file=diffusers_art_rl,
        direct_steps=diffusers_direct_steps, sigma_max=diffusers_sigma_max)
    print(run_report(outdir, settings, mixtures, trained, diffusers))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter

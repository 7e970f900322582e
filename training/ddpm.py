"""diffusers' own DDPM recipe: a class-conditional UNet2DModel trained to predict the noise, resumable.

The recipe is the one diffusers' DDPM training examples use: `DDPMScheduler` (1,000 steps, linear betas) puts noise on
an image with `add_noise` at a uniform random timestep, the UNet predicts that noise (epsilon prediction) and the loss
is the mean squared error; AdamW with a learning-rate warm-up, an EMA of the weights with diffusers' `EMAModel` warm-up
(inv_gamma 1, power 3/4), gradients clipped at norm 1. Snapshots are written in diffusers' pipeline format
(`DDPMPipeline.save_pretrained`: model_index.json, unet/ and scheduler/, safetensors weights) from the EMA weights.
"""

import dataclasses
import json
import os
import time
from typing import Callable, Optional

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from dnnlib.util import UserError, atomic_write, atomic_write_text

STATE_FILE = 'training-state.pt'


def unet_config(resolution: int = 28, channels: int = 1, num_classes: int = 10) -> dict:
    """The shipped architecture: 3 resolutions (28, 14, 7), attention at the lowest one, 1.6 M parameters."""
    return dict(sample_size=resolution, in_channels=channels, out_channels=channels, num_class_embeds=num_classes,
                block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8,
                down_block_types=('DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D'),
                up_block_types=('AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D'))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Options of a run; a resumed run must have the same ones, save a longer `kimg`."""
    kimg: int = 200              # images shown, in thousands
    batch: int = 64
    lr: float = 3e-4
    warmup_steps: int = 500      # linear learning-rate warm-up, then constant
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    snap_kimg: int = 10          # a training state and a pipeline snapshot every this many kimg
    seed: int = 0


def _lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up to the full learning rate, constant after (diffusers' 'constant_with_warmup')."""
    return min(1.0, (step + 1) / max(warmup_steps, 1))


def _save_state(run_dir: str, step: int, unet, ema, opt, gen: torch.Generator, recipe: Recipe) -> None:
    """The whole training state in one file, written atomically."""
    state = dict(step=step, unet=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                 gen=gen.get_state(), recipe=dataclasses.asdict(recipe))
    atomic_write(os.path.join(run_dir, STATE_FILE), lambda f: torch.save(state, f))


def _save_snapshot(run_dir: str, kimg: int, unet: UNet2DModel, ema: EMAModel, scheduler: DDPMScheduler) -> str:
    """The EMA weights as a diffusers pipeline folder snapshot-NNNNNN/."""
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    folder = os.path.join(run_dir, f'snapshot-{kimg:06d}')
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    ema.restore(unet.parameters())
    return folder


def train(images: torch.Tensor, labels: torch.Tensor, run_dir: str, recipe: Recipe,
          log: Callable[[str], None] = print) -> str:
    """Train (or resume) in `run_dir` on uint8 images [N, C, H, W] and int labels [N]; returns the last snapshot."""
    os.makedirs(run_dir, exist_ok=True)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', prediction_type='epsilon')
    with torch.random.fork_rng(devices=[]):            # the initial weights from the recipe's seed, not the process's
        torch.manual_seed(recipe.seed)
        unet = UNet2DModel(**unet_config(images.shape[2], images.shape[1], int(labels.max()) + 1))
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(unet.parameters(), decay=recipe.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0,
                   power=recipe.ema_power)
    gen = torch.Generator().manual_seed(recipe.seed)
    step = _resume(run_dir, recipe, unet, ema, opt, gen)
    total_steps = recipe.kimg * 1000 // recipe.batch
    snap_steps = max(recipe.snap_kimg * 1000 // recipe.batch, 1)
    alphas_cumprod = scheduler.alphas_cumprod
    data = images.float() / 127.5 - 1
    log(f'{sum(p.numel() for p in unet.parameters()):,} parameters; step {step} of {total_steps}')
    snapshot, start, losses = None, time.time(), []
    unet.train()
    while step < total_steps:
        idx = torch.randint(len(data), (recipe.batch,), generator=gen)
        x0, y = data[idx], labels[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(len(alphas_cumprod), (recipe.batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        for group in opt.param_groups:
            group['lr'] = recipe.lr * _lr_factor(step, recipe.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        step += 1
        if step % snap_steps == 0 or step == total_steps:
            kimg = round(step * recipe.batch / 1000)
            _save_state(run_dir, step, unet, ema, opt, gen, recipe)
            snapshot = _save_snapshot(run_dir, kimg, unet, ema, scheduler)
            line = dict(kimg=kimg, step=step, loss=sum(losses) / len(losses), sec=round(time.time() - start, 1))
            atomic_write_text(os.path.join(run_dir, 'log.jsonl'), _read(run_dir, 'log.jsonl') + json.dumps(line) + '\n')
            log(f'kimg {kimg}: loss {line["loss"]:.4f}, {line["sec"]:.0f} s this session')
            losses = []
    return snapshot or _latest_snapshot(run_dir)


def _read(run_dir: str, name: str) -> str:
    """A text file of the run folder, or '' when it does not exist yet."""
    path = os.path.join(run_dir, name)
    return open(path, encoding='utf-8').read() if os.path.exists(path) else ''


def _latest_snapshot(run_dir: str) -> Optional[str]:
    """The newest snapshot-NNNNNN folder of a run, or None."""
    names = sorted(n for n in os.listdir(run_dir) if n.startswith('snapshot-'))
    return os.path.join(run_dir, names[-1]) if names else None


def _resume(run_dir: str, recipe: Recipe, unet, ema, opt, gen: torch.Generator) -> int:
    """Load the run's training state if there is one; returns the step to continue from."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return 0
    state = torch.load(path, map_location='cpu', weights_only=True)
    same = {**state['recipe'], 'kimg': recipe.kimg} == dataclasses.asdict(recipe)   # a run may be extended
    if not same:
        raise UserError(f'{run_dir} was trained with {state["recipe"]}, not {dataclasses.asdict(recipe)}: '
                        f'resume with the same options (--kimg may grow) or use another folder')
    unet.load_state_dict(state['unet'])
    ema.load_state_dict(state['ema'])
    opt.load_state_dict(state['opt'])
    gen.set_state(state['gen'])
    return state['step']

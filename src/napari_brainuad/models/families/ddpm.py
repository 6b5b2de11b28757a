"""``ddpm``: denoising diffusion (MONAI DiffusionModelUNet). The slice is noised to ``t_int`` and
denoised back with MONAI DDIM steps of ``t_int.steps``; trained to predict the noise (MSE) on
timesteps below ``training.max_timestep``, the range partial noising uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...progress import Step
from ..slicewise import SliceModel


def ddim_scheduler(card):
    """The card's DDIM scheduler with timesteps every ``t_int.steps``, and that stride."""
    from monai.networks.schedulers import DDIMScheduler

    sched = card.architecture["scheduler"]
    scheduler = DDIMScheduler(num_train_timesteps=sched["num_train_timesteps"], schedule=sched["schedule"],
                              clip_sample=False, **sched.get("schedule_args", {}))
    stride = int(card.t_int.get("steps", 25))
    scheduler.set_timesteps(sched["num_train_timesteps"] // stride)
    return scheduler, stride


class DDPMModel(SliceModel):
    family = "ddpm"

    CHUNK = 8
    """Slices per network call inside a step: progress (and Cancel) every fraction of a second on a CPU."""

    def __init__(self, card, device="cpu", network=None):
        super().__init__(card, device, network)
        self.scheduler, self.stride = ddim_scheduler(card)

    @staticmethod
    def make_network(arch, channels_in):
        from monai.networks.nets import DiffusionModelUNet

        return DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=arch["channels"],
                                  attention_levels=arch["attention_levels"], num_res_blocks=arch["num_res_blocks"],
                                  num_head_channels=arch["num_head_channels"], norm_num_groups=arch.get("norm_groups", 32))

    @staticmethod
    def objective(recipe, device):
        from monai.networks.schedulers import DDPMScheduler

        sched = recipe["architecture"]["scheduler"]
        scheduler = DDPMScheduler(num_train_timesteps=sched["num_train_timesteps"], schedule=sched["schedule"],
                                  **sched.get("schedule_args", {}))
        t_max = recipe["training"].get("max_timestep", scheduler.num_train_timesteps)  # partial noising stays below

        def loss(model, batch, generator):
            x = batch.target * 2 - 1
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            t = torch.randint(0, t_max, (x.shape[0],), generator=generator).to(x.device)
            return F.mse_loss(model(scheduler.add_noise(x, noise, t), timesteps=t), noise)
        return loss

    def reconstruct_batch(self, x, t_int, generator):
        x = x * 2 - 1  # the network works in [-1, 1]
        start = (t_int // self.stride) * self.stride
        timesteps = [int(t) for t in self.scheduler.timesteps if t <= start]
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        sample = self.scheduler.add_noise(x, noise, torch.full((x.shape[0],), start, device=x.device, dtype=torch.long))
        chunks = range(0, x.shape[0], self.CHUNK)
        for i, t in enumerate(timesteps):
            eps = torch.empty_like(sample)
            for n, j in enumerate(chunks):
                part = sample[j:j + self.CHUNK]
                with torch.inference_mode():
                    eps[j:j + self.CHUNK] = self.network(
                        part, timesteps=torch.full((part.shape[0],), t, device=x.device, dtype=torch.long))
                yield Step(f"denoising from t={start}", (i + (n + 1) / len(chunks)) / len(timesteps))
            with torch.inference_mode():
                sample, _ = self.scheduler.step(eps, t, sample)
        return (sample + 1) / 2

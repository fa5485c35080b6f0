"""SDEdit runs the whole schedule below its start timestep, as the official code does (t = 50/1000, then every
step down to 0), not int(steps x strength) of a `steps`-long schedule (2 of 50 at strength 0.05)."""

import numpy as np
import pytest
import torch

from models.diffusion import Sampling, load_diffusion, sdedit, sdedit_schedule_length


def test_schedule_length_puts_the_asked_steps_below_the_start_timestep():
    assert sdedit_schedule_length(50, 0.05, 1000) == 1000  # every one of the 1000 training steps: 50 below t = 50
    assert sdedit_schedule_length(25, 0.05, 1000) == 500  # every other one: 25 below t = 50
    assert sdedit_schedule_length(4, 1.0, 1000) == 4  # full-strength SDEdit is plain sampling
    # 29 / 0.29 = 100, but 100 x 0.29 = 28.999... in floating point, which diffusers truncates to 28.
    assert sdedit_schedule_length(29, 0.29, 1000) == 101 and int(101 * 0.29) == 29
    assert sdedit_schedule_length(50, 0.01, 1000) == 1000  # only 10 steps lie below t = 10: all of them run
    with pytest.raises(ValueError, match="less than one of the model's 1000 training steps"):
        sdedit_schedule_length(50, 0.0005, 1000)


@pytest.fixture
def one_thread():
    """The tiny UNet's 50 steps take seconds on one thread, and much longer contending for shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "DDIMScheduler"])
def test_sdedit_at_strength_5_percent_denoises_through_every_step_below_t_50(scheduler, one_thread):
    import diffusers

    pipeline = load_diffusion("tiny", "image-to-image")
    pipeline.scheduler = getattr(diffusers, scheduler).from_config(pipeline.scheduler.config)
    timesteps, step = [], pipeline.scheduler.step

    def counting_step(model_output, timestep, *args, **kwargs):
        timesteps.append(int(timestep))
        return step(model_output, timestep, *args, **kwargs)

    pipeline.scheduler.step = counting_step
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    sdedit(pipeline, [image], ["a mug"], [0], strength=0.05, sampling=Sampling(steps=50, guidance_scale=1.0, size=16))
    # The tiny scheduler counts timesteps from steps_offset = 1, as Stable Diffusion's does: t = 50 ... 1.
    if scheduler == "DDIMScheduler":
        assert timesteps == list(range(50, 0, -1))  # 50 denoising steps, one per timestep below the start
    else:  # PLMS evaluates its first step twice (a warm-up): 51 evaluations, one at every timestep 51 ... 1
        assert sorted(timesteps, reverse=True) == timesteps == list(range(51, 0, -1))

"""Data consistency uses the task's noise-free forward operator (rule 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LatentSRLib.transforms.consistency import consistency_map, data_consistent, forward_operator
from LatentSRLib.transforms.degradations import make_degradation, task_degradation
from LatentSRLib.transforms.tasks import parse_task


@pytest.fixture()
def hr():
    # a smooth image with structure at several scales, inside (0, 1) so that clipping plays no part
    y, x = np.mgrid[0:64, 0:64] / 64.0
    image = 0.5 + 0.2 * np.sin(6 * x) * np.cos(4 * y) + 0.1 * np.sin(23 * x + 17 * y)
    return torch.from_numpy(image.astype(np.float32))[None, None]


@pytest.mark.parametrize("task_name", ["sr4", "refine2"])
def test_noisy_tasks_use_the_noise_free_operator(hr, task_name):
    task = parse_task(task_name, noise=0.05, seed=3)
    clean = parse_task(task_name)
    measured = torch.as_tensor(forward_operator(task)(hr))
    # the operator is the noise-free chain of the task (same mode, scale and options, no noise)
    torch.testing.assert_close(measured, torch.as_tensor(make_degradation(clean.mode, clean.scale)(hr)))
    # the truth explains its own noise-free measurement exactly, so the map is zero there...
    assert float(consistency_map(hr, measured, task).max()) < 1e-5
    # ... and projecting the truth leaves it unchanged
    torch.testing.assert_close(data_consistent(hr, measured, task), hr, atol=1e-5, rtol=0)
    # the noisy chain (what the training pairs were made with) does add noise
    noisy = torch.as_tensor(task_degradation(task)(hr))
    assert float((noisy - measured).std()) > 0.02


def test_projection_restores_the_measured_band(hr):
    task = parse_task("sr4")
    measured = torch.as_tensor(forward_operator(task)(hr))
    wrong = (hr * 0.8 + 0.05).clamp(0, 1)  # an intensity bias, all in the band the measurement keeps
    fixed = data_consistent(wrong, measured, task)
    assert float(consistency_map(fixed, measured, task).mean()) < 0.1 * float(consistency_map(wrong, measured, task).mean())
    assert float((fixed - hr).abs().mean()) < 0.5 * float((wrong - hr).abs().mean())

"""Data consistency: how far a super-resolved image is from explaining the measured low-resolution
image, and one projection step towards it.

Both use the task's noise-free forward operator (:func:`~.degradations.task_degradation` with
``noise=False``, rule 11): noise belongs to the measurement, not to the operator that explains it.
With the noisy chain, degrading the truth would not reproduce the truth's own noise-free image, so
``DC(truth) != truth`` and the consistency map would never reach zero. Images are ``(B, 1, H, W)``
tensors in [0, 1] on the HR grid.
"""

from __future__ import annotations

import torch

from LatentSRLib.transforms.degradations import task_degradation
from LatentSRLib.transforms.tasks import Task

__all__ = ["consistency_map", "data_consistent", "forward_operator"]


def forward_operator(task: Task):
    """The noise-free degradation of ``task``: HR image on the HR grid -> its LR image on the HR grid."""
    return task_degradation(task, noise=False)


def consistency_map(sr: torch.Tensor, lr: torch.Tensor, task: Task) -> torch.Tensor:
    """``|A(SR) - LR|`` with ``A`` the noise-free forward operator: zero where the result, degraded as
    the model's task degrades, reproduces the measured input."""
    return (torch.as_tensor(forward_operator(task)(sr)) - lr).abs()


def data_consistent(sr: torch.Tensor, lr: torch.Tensor, task: Task) -> torch.Tensor:
    """One projection step towards the measurement: ``SR + (LR - A(SR))``, clipped to [0, 1].

    Degrading the result then reproduces the LR input far more closely, and whatever the model got
    wrong in the bands the measurement kept (e.g. an autoencoder's low-frequency intensity bias) is
    replaced by what was measured. For the linear operators of the ``sr`` and ``refine`` tasks that
    keep exactly the band they measure, ``data_consistent(truth, A(truth)) == truth`` up to clipping.
    """
    return (sr + (lr - torch.as_tensor(forward_operator(task)(sr)))).clamp(0, 1)

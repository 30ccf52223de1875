"""Worker for test_torchrun: a few Hyperflows steps on fixed data, in one process or under torchrun.

Run as ``python ddp_prune_steps.py OUT STEPS`` (single process) or through ``torchrun
--nproc-per-node 2``. Uses the pruning loop's own pieces (``attach_scores``, ``wrap_ddp``,
``rank_batches``, ``_train_step``) on a model without BatchNorm and without augmentation: with those
two out of the way, the K ranks' shares of each step together are the single process's batch, so
DDP must give the same update up to float summation order. Rank 0 writes the final weights and
scores, the rank-averaged density and whether the replicas are bit-identical to ``OUT`` (.npz).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn


def main(out: str, steps: int) -> None:
    from edgeflow import distributed
    from edgeflow.prune.config import PruneConfig
    from edgeflow.prune.hyperflows import _train_step, _weight_params
    from edgeflow.prune.scored import attach_scores

    torch.set_num_threads(1)
    rank = distributed.setup(torch.device("cpu"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    ms = attach_scores(model, granularity="weight", generator=torch.Generator().manual_seed(1))
    data = torch.Generator().manual_seed(2)
    x = torch.randn(256, 1, 12, 12, generator=data)
    y = torch.randint(0, 10, (256,), generator=data)
    config = PruneConfig(sparsity=0.9, batch_size=64, augment=False)
    net = distributed.wrap_ddp(model, torch.device("cpu"))
    opt = torch.optim.SGD(_weight_params(model, ms), lr=0.1, momentum=0.9)
    score_opt = torch.optim.Adam(ms.scores(), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    done = 0
    while done < steps:
        for idx in distributed.rank_batches(len(y), batch_size=config.batch_size, generator=gen):
            _train_step(net, ms, x[idx], y[idx], opt=opt, score_opt=score_opt, pressure=0.5,
                        config=config)
            done += 1
            if done == steps:
                break
    density = distributed.mean_over_ranks(ms.density(), torch.device("cpu"))
    agree = distributed.replicas_agree(model)
    if rank.is_main:
        state = {k.replace(".", "_"): v.detach().numpy() for k, v in model.state_dict().items()}
        np.savez(out, density=density, agree=-1 if agree is None else int(agree),
                 world_size=rank.world_size, **state)
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

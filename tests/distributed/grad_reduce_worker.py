"""Worker for test_torchrun: :func:`edgeflow.distributed.all_reduce_gradients` and
:func:`edgeflow.distributed.shard_values` under torchrun, on the uneven cases the outcome stage
meets. Run through ``torchrun --nproc-per-node 2 grad_reduce_worker.py OUT``; rank 0 writes ``OUT``
(JSON) with what every rank ended up holding.

Rank r sets ``a.grad`` to r + 1 only on rank 0 (rank 1 skipped all its tasks: no gradient), ``b``
gets a gradient on no rank (it must stay ``None``, as in one process), ``c`` on every rank.
"""

from __future__ import annotations

import json
import sys

import torch


def main(out: str) -> None:
    from edgeflow import distributed

    torch.set_num_threads(1)
    cur = distributed.setup(torch.device("cpu"))
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    if cur.rank == 0:
        a.grad = torch.full((3,), 1.0)
    c.grad = torch.full((3,), float(cur.rank + 1))
    distributed.all_reduce_gradients([a, b, c])
    # 5 items over 2 ranks: 3 and 2; each rank computes only its own
    full = distributed.shard_values([10.0 * i + 0.1 for i in distributed.shard(5)], 5,
                                    torch.device("cpu"))
    mine = {"a": a.grad.tolist(), "b": None if b.grad is None else b.grad.tolist(),
            "c": c.grad.tolist(), "full": full}
    every = distributed.gather_to_main(mine)
    if cur.is_main:
        with open(out, "w") as f:
            json.dump(every, f)


if __name__ == "__main__":
    main(sys.argv[1])

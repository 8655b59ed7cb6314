"""``CMALoss(gather=True)`` under torch.distributed (2 CPU processes, gloo) equals one process.

Each rank runs a tiny two-tower model wrapped in DDP on its shard of a global batch
and computes the loss with ``gather=True``. Checked on every rank against a
single-process computation on the whole batch (same seed, same weights):
- the loss is the global-batch loss;
- after DDP's gradient averaging, every parameter gradient (towers and logit scale)
  equals the single-process gradient of the global-batch loss;
- the features' own gradients are ``world_size ×`` the single-process slice (the
  documented all-gather semantics that make the DDP average right).
Pair mode (uneven shards too) and class-bank mode.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
D_IN, D = 12, 8


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Towers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(D_IN, D)
        self.text = torch.nn.Linear(D_IN, D)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.5))

    def forward(self, images, texts):
        return self.image(images), self.text(texts), self.logit_scale.exp()


def _data(mode: str):
    gen = torch.Generator().manual_seed(0)
    B = 13 if mode == "uneven" else 12
    images = torch.randn(B, D_IN, generator=gen)
    if mode == "class":
        texts = torch.randn(5, D_IN, generator=gen)  # class prompts, the same on every rank
        labels = torch.randint(0, 5, (B,), generator=gen)
    else:
        texts = images + 0.5 * torch.randn(B, D_IN, generator=gen)
        labels = None
    return images, texts, labels


def _shard(B: int, rank: int) -> slice:
    bounds = [0, 7, B] if B == 13 else [0, B // 2, B]  # uneven: 7 + 6 rows
    return slice(bounds[rank], bounds[rank + 1])


def _single_process(mode: str):
    from fastood.nn import CMALoss

    torch.manual_seed(1)
    model = Towers()
    images, texts, labels = _data(mode)
    img, txt, scale = model(images, texts)
    img.retain_grad()
    loss = CMALoss(lam=0.01, backend="torch")(img, txt, scale, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, img.grad.clone()


MODES = ("pair", "uneven", "class")


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for mode in MODES:
            _check_mode(rank, mode)
            queue.put((rank, mode, "ok"))
        dist.barrier()  # both ranks are done with every collective
    except BaseException as exc:  # report to the parent, then fail this rank
        queue.put((rank, mode, f"{type(exc).__name__}: {exc}"))
        raise
    # Every result is reported: leave without tearing gloo down. Its teardown can race the
    # peer's closing connections and abort the rank ("terminate called without an active
    # exception", SIGABRT) even after the barrier — seen in two CI-clone runs; a gloo shutdown
    # race, not a result. os._exit skips it (SimpleQueue.put has already written to the pipe).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _check_mode(rank: int, mode: str) -> None:
    from fastood.nn import CMALoss

    ref_loss, ref_grads, ref_img_grad = _single_process(mode)
    torch.manual_seed(1)
    model = torch.nn.parallel.DistributedDataParallel(Towers())
    images, texts, labels = _data(mode)
    sl = _shard(images.shape[0], rank)
    if mode == "class":
        img, txt, scale = model(images[sl], texts)
        lab = labels[sl]
    else:
        img, txt, scale = model(images[sl], texts[sl])
        lab = None
    img.retain_grad()
    out = CMALoss(lam=0.01, gather=True, backend="torch")(img, txt, scale, output_dict=True, labels=lab)
    loss = out["contrastive_loss"]
    loss.backward()  # DDP all-reduces (averages) the parameter gradients here
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
    for name, p in model.module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(img.grad, WORLD * ref_img_grad[sl], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_gather_matches_single_process():
    """One spawn of two ranks checks every mode (spawning dominates the runtime)."""
    queue = mp.get_context("spawn").SimpleQueue()
    procs = mp.start_processes(_worker, args=(_free_port(), queue), nprocs=WORLD, join=False, start_method="spawn")
    try:
        while not procs.join(timeout=60):
            pass
    finally:
        results = []
        while not queue.empty():
            results.append(queue.get())
    assert sorted(results) == sorted((r, m, "ok") for r in range(WORLD) for m in MODES), results

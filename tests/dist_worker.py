"""Worker side of ``test_distributed.py``: STEP training under DDP / FSDP2 (gloo, CPU).

A separate module so that ``multiprocessing``'s spawn start method can import the rank
entry point by name. Every rank writes its result (or its traceback) to a file in the
test's tmp dir; the parent compares them with a single-process run of the same training.
"""

from __future__ import annotations

import datetime
import os
import traceback

import torch
import torch.nn.functional as F

import step
from step.nn import SparseLinear, sparsity_of

STEPS = 40
GLOBAL_BATCH = 16
IN, HIDDEN, OUT = 16, 32, 8
LR = 1e-2
# With window=5 the plateau statistic of this problem first reaches 0.95 at step 20
# (0.898 at step 19, 1.043 at step 20): the switch is decided by the criterion, well
# inside [t_min, t_max], and not by the cap.
T_MIN, T_MAX, WINDOW = 5, 30, 5
TIMEOUT = datetime.timedelta(seconds=60)


def build_model() -> torch.nn.Sequential:
    """Two sparse layers and a dense LayerNorm, the same init on every rank."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        SparseLinear(IN, HIDDEN), torch.nn.LayerNorm(HIDDEN), torch.nn.ReLU(),
        SparseLinear(HIDDEN, OUT),
    )  # fmt: skip


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sequence of global batches: ``X [STEPS, B, IN]``, ``Y [STEPS, B, OUT]``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, GLOBAL_BATCH, IN, generator=g)
    w = torch.randn(IN, OUT, generator=g)
    y = x @ w + 0.5 * torch.randn(STEPS, GLOBAL_BATCH, OUT, generator=g)
    return x, y


def make_optimizer(params) -> step.optim.STEP:
    autoswitch = step.optim.AutoSwitch(t_min=T_MIN, t_max=T_MAX, window=WINDOW)
    return step.optim.STEP(params, lr=LR, autoswitch=autoswitch)


def train(model, opt, x, y) -> None:
    for t in range(STEPS):
        loss = F.mse_loss(model(x[t]), y[t])  # mean over the (local) batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def result_of(opt, params: dict[str, torch.Tensor], modes: list[str]) -> dict:
    return {
        "switch_step": opt.switch_step,
        "phase": opt.phase,
        "history": [(r.step, r.z, r.v, r.statistic) for r in opt.autoswitch.history],
        "params": {k: v.detach().clone() for k, v in params.items()},
        "modes": modes,
    }


def train_single_process() -> dict:
    """The reference: one process, the full global batch every step."""
    model = build_model()
    opt = make_optimizer(model.parameters())
    x, y = make_data()
    train(model, opt, x, y)
    modes = [m.sparsity.mode for m in model if isinstance(m, SparseLinear)]
    return result_of(opt, dict(model.named_parameters()), modes)


def _run_ddp(rank: int, world_size: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model = build_model()
    ddp = DistributedDataParallel(model)
    opt = make_optimizer(ddp.parameters())
    x, y = make_data()
    half = GLOBAL_BATCH // world_size
    local = slice(rank * half, (rank + 1) * half)
    train(ddp, opt, x[:, local], y[:, local])
    modes = [m.sparsity.mode for m in model if isinstance(m, SparseLinear)]
    return result_of(opt, dict(model.named_parameters()), modes)


def _run_fsdp2(rank: int, world_size: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh("cpu", (world_size,))
    model = build_model()
    layers = [m for m in model if isinstance(m, SparseLinear)]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # What fully_shard did to the sparse weights, checked by the parent.
    sharding = []
    for layer in layers:
        w = layer.weight
        sharding.append({
            "is_dtensor": isinstance(w, DTensor),
            "sharded_dim0": tuple(w.placements) == (Shard(0),) if isinstance(w, DTensor) else None,
            "local_shape": tuple(w.to_local().shape) if isinstance(w, DTensor) else None,
            "sparsity_attached": sparsity_of(w) is layer.sparsity,
        })  # fmt: skip
    opt = make_optimizer(model.parameters())
    n_sparse = len(opt.sparse_params())
    x, y = make_data()
    half = GLOBAL_BATCH // world_size
    local = slice(rank * half, (rank + 1) * half)
    train(model, opt, x[:, local], y[:, local])
    full = {name: p.full_tensor() for name, p in model.named_parameters()}
    result = result_of(opt, full, [layer.sparsity.mode for layer in layers])
    result.update(sharding=sharding, n_sparse=n_sparse)
    return result


RUNNERS = {"ddp": _run_ddp, "fsdp2": _run_fsdp2}


def run_rank(rank: int, world_size: int, port: int, mode: str, out_dir: str) -> None:
    """Entry point of one spawned rank; writes ``rank{rank}.pt`` or ``rank{rank}.err``."""
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
            world_size=world_size, timeout=TIMEOUT,
        )  # fmt: skip
        try:
            result = RUNNERS[mode](rank, world_size)
        finally:
            dist.destroy_process_group()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise SystemExit(1) from None

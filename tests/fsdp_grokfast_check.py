"""Run under torchrun with 2 CPU processes (tests/test_distributed.py): Grokfast filters on FSDP2
shards against the same filter on a plain copy of the model (the 1-process filter on the whole
gradient), a NaN planted in rank 1's shard alone at step 1. Exits 0 when every filtered gradient
and the gathered filter state equal the reference exactly."""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from trainforge.optim.grokfast import EMAFilter, MAFilter


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    sharded, plain = build(), build()
    for block in sharded:
        fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    for filters in ((EMAFilter(0.5), EMAFilter(0.5)), (MAFilter(2), MAFilter(2))):
        for step in range(4):
            x = torch.full((3, 4), float(step + 1))  # gradients that change from step to step
            for model in (sharded, plain):
                model.zero_grad()
                model(x).sum().backward()
            # rows 3..5 of the first weight are rank 1's shard: its row 0 is the whole weight's row 3
            plain[0].weight.grad[3, 0] = float("nan") if step == 1 else plain[0].weight.grad[3, 0]
            if step == 1 and rank == 1:
                with torch.no_grad():
                    sharded[0].weight.grad.to_local()[0, 0] = float("nan")
            filters[0](sharded.parameters(), 2.0)
            filters[1](plain.parameters(), 2.0)
            for p, q in zip(sharded.parameters(), plain.parameters()):
                torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=0, atol=0, equal_nan=True)
        state, ref = filters[0].state_dict(), filters[1].state_dict()  # the former a collective
        if rank == 0:
            assert state["world_size"] == 2 and len(state["ranks"]) == 2
            for key in filters[1].STATE_KEYS:
                whole = ref["groups"][0][key]
                parts = [r["groups"][0][key] for r in state["ranks"]]
                if whole.dim() == 0 or key in ("pos", "count"):  # scalars: every rank's equals the reference
                    assert all(torch.equal(p, whole) for p in parts), key
                    continue
                # each rank's flat state is its shards', parameter after parameter: rebuild the whole
                def pieces(flat, shapes):
                    sizes = [torch.Size(s).numel() for s in shapes]
                    return [v.reshape(*flat.shape[:-1], *s) for v, s in zip(flat.split(sizes, -1), shapes)]
                mine = [pieces(p, r["shapes"][0]) for p, r in zip(parts, state["ranks"])]
                full = pieces(whole, ref["shapes"][0])
                lead = whole.dim() - 1  # MA's queue has the window first
                for i, expected in enumerate(full):
                    got = torch.cat([m[i] for m in mine], dim=lead)
                    assert torch.equal(got, expected), (key, i)
    dist.barrier()  # gloo torn down while the peer still talks can abort it (as trainforge's shutdown knows)
    dist.destroy_process_group()
    print(f"rank {rank}: ok")


if __name__ == "__main__":
    main()

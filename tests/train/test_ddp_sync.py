"""SparseRowSync: the row-sparse all-reduce of large embedding tables equals DDP's dense mean (2 gloo ranks)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank, world, init_file, result_file, dense_grad):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from ssmrec.train.ddp import SparseRowSync

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5000, 4), torch.nn.Embedding(10, 4))
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, 40, (64,), generator=g) * 125  # rank-dependent rows among 40
    loss = (model[0](ids).sum(0) * torch.arange(4)).sum()
    if dense_grad:  # an L2 term on the whole table (FuxiCTR's embedding regulariser) touches every row
        loss = loss + 1e-3 * model[0].weight.pow(2).sum()
    loss.backward()
    dense = model[0].weight.grad.clone()
    dist.all_reduce(dense)
    dense /= world
    sync = SparseRowSync(model, min_rows=4096)
    assert sync.parameter_names == ["0.weight"]  # the 10-row table stays with DDP
    sync.sync()
    same = torch.equal(model[0].weight.grad, dense)
    if rank == 0:
        torch.save({"same": same, "rows": sync.rows_synced}, result_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("dense_grad", [False, True])
def test_row_sparse_sync_equals_the_dense_mean(tmp_path, dense_grad):
    result = tmp_path / "result.pt"
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(result), dense_grad), nprocs=2, join=True)
    out = torch.load(result, weights_only=True)
    assert out["same"]
    if dense_grad:  # most rows touched: one dense all-reduce
        assert out["rows"] == 5000
    else:  # only the union of touched rows travels
        assert 0 < out["rows"] <= 40

"""GlooSyncBatchNorm on 2 CPU ranks normalises, back-propagates and tracks running statistics exactly
as one BatchNorm1d on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssmrec.nn.sync_batchnorm import GlooSyncBatchNorm, convert_sync_batchnorm


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, 3, generator=g) * 3 + 1
    w = torch.randn(12, 5, 3, generator=g)
    return x, w


def _bn(cls):
    torch.manual_seed(1)
    bn = cls(5, momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _rank(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x, w = _data()
    rows = slice(rank * 6, rank * 6 + 6)
    xr = x[rows].clone().requires_grad_(True)
    bn = _bn(GlooSyncBatchNorm).train()
    y = bn(xr)
    (y * w[rows]).sum().backward()
    for p in bn.parameters():
        dist.all_reduce(p.grad)  # what DDP does (sum; the test's loss is a sum)
    torch.save({"y": y.detach(), "x_grad": xr.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var}, out / f"rank{rank}.pt")
    dist.destroy_process_group()
    # Skip interpreter teardown: gloo's background threads sometimes abort the worker in C++ static
    # destructors ("terminate called without an active exception"), after the results are saved.
    os._exit(0)


@pytest.mark.slow
@pytest.mark.equivalence
def test_two_ranks_match_one_batchnorm_on_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    x, w = _data()
    x = x.clone().requires_grad_(True)
    bn = _bn(torch.nn.BatchNorm1d).train()
    y = bn(x)
    (y * w).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r[0]["x_grad"], r[1]["x_grad"]]), x.grad, **tol)
    for k in (0, 1):
        torch.testing.assert_close(r[k]["w_grad"], bn.weight.grad, **tol)
        torch.testing.assert_close(r[k]["b_grad"], bn.bias.grad, **tol)
        torch.testing.assert_close(r[k]["running_mean"], bn.running_mean, **tol)
        torch.testing.assert_close(r[k]["running_var"], bn.running_var, **tol)


@pytest.mark.equivalence
def test_without_a_process_group_it_is_plain_batchnorm():
    x, _ = _data()
    a, b = _bn(GlooSyncBatchNorm).train(), _bn(torch.nn.BatchNorm1d).train()
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.running_var, b.running_var)


def test_convert_keeps_weights_and_state_dict_keys():
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.Sequential(torch.nn.BatchNorm1d(5)))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    conv = convert_sync_batchnorm(m, torch.device("cpu"))
    assert isinstance(conv[1], GlooSyncBatchNorm) and isinstance(conv[2][0], GlooSyncBatchNorm)
    assert set(conv.state_dict()) == set(before)
    for k, v in conv.state_dict().items():
        torch.testing.assert_close(v, before[k])

"""The causal low-pass branch (ssmrec.nn.lowpass): at the scored (last) position it is BSARec's FFT
filter, every position is causal, and its recurrent step equals the parallel form.

Tolerances: float64 throughout for the FFT comparison (1e-10: the two sides differ only in summation
order over <= 50 terms); float32 step-vs-parallel at 1e-5 (O(1) outputs, 12 steps of rotations whose
rounding stays ~1e-6)."""

from __future__ import annotations

import pytest
import torch

from ssmrec.nn.lowpass import CausalLowPass


def _bsarec_fft_filter(x: torch.Tensor, c: int, beta: torch.Tensor) -> torch.Tensor:
    """BSARec's frequency layer before dropout / residual (AAAI'24 §4.2), written from the paper:
    rfft over the window, bins >= c // 2 + 1 zeroed, irfft, ``low + beta² (x - low)``."""
    L = x.shape[1]
    spec = torch.fft.rfft(x, dim=1, norm="ortho")
    spec[:, c // 2 + 1:] = 0
    low = torch.fft.irfft(spec, n=L, dim=1, norm="ortho")
    return low + beta.square() * (x - low)


PATHS = {"toeplitz": CausalLowPass.TOEPLITZ_MAX_LEN, "cumsum": 0}  # windows up to this length use the matrix


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("L,c", [(50, 5), (20, 3), (16, 7)])
def test_last_position_equals_bsarec_fft_filter(L, c, path):
    torch.manual_seed(0)
    lp = CausalLowPass(8, period=L, c=c).double().eval()
    lp.TOEPLITZ_MAX_LEN = PATHS[path]
    lp.norm = torch.nn.Identity()  # compare the filter itself: norm(filter + x) with an identity norm
    x = torch.randn(3, L, 8, dtype=torch.float64)
    got = lp(x)[:, -1] - x[:, -1]
    want = _bsarec_fft_filter(x, c, lp.beta.detach())[:, -1]
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    # and not at an earlier position, where BSARec's circular filter reads later items
    assert not torch.allclose(lp(x)[:, L // 2] - x[:, L // 2], _bsarec_fft_filter(x, c, lp.beta.detach())[:, L // 2])


def test_outputs_are_causal():
    torch.manual_seed(1)
    lp = CausalLowPass(6, period=10, c=5).eval()
    x = torch.randn(2, 10, 6)
    y = lp(x)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 6)
    y2 = lp(x2)
    torch.testing.assert_close(y2[:, :6], y[:, :6])
    assert not torch.allclose(y2[:, 6:], y[:, 6:])


@pytest.mark.parametrize("path", PATHS)
def test_step_equals_parallel_form_and_masked_rows_keep_state(path):
    torch.manual_seed(2)
    lp = CausalLowPass(6, period=12, c=5).eval()
    lp.TOEPLITZ_MAX_LEN = PATHS[path]
    x = torch.randn(4, 12, 6)
    y_par, state_par = lp.forward_with_state(x)
    state = lp.allocate_state(4)
    for t in range(12):
        y_t, state = lp.step(x[:, t], state)
        torch.testing.assert_close(y_t, y_par[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, state_par, atol=1e-5, rtol=1e-5)
    keep = torch.tensor([True, False, True, False])
    _, new = lp.step(torch.randn(4, 6), state, keep)
    torch.testing.assert_close(new[~keep], state[~keep])
    assert not torch.allclose(new[keep], state[keep])


@pytest.mark.parametrize("path", PATHS)
def test_left_padding_mask_equals_the_unpadded_sequence(path):
    torch.manual_seed(3)
    lp = CausalLowPass(5, period=10, c=3).eval()
    lp.TOEPLITZ_MAX_LEN = PATHS[path]
    x = torch.randn(1, 7, 5)
    padded = torch.cat([torch.randn(1, 3, 5), x], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    y_pad, s_pad = lp.forward_with_state(padded, mask)
    y, s = lp.forward_with_state(x)
    torch.testing.assert_close(y_pad[:, 3:], y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_pad, s, atol=1e-5, rtol=1e-5)


def test_matrix_and_cumulative_sum_paths_agree_with_gradients():
    torch.manual_seed(4)
    lp = CausalLowPass(6, period=50, c=5).double()
    lp.dropout.p = 0.0
    x = torch.randn(3, 40, 6, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for limit in PATHS.values():
        lp.TOEPLITZ_MAX_LEN = limit
        y, state = lp.forward_with_state(x)
        (gx,) = torch.autograd.grad((y * torch.linspace(-1, 1, 6, dtype=torch.float64)).sum(), x)
        outs.append((y.detach(), state.detach()))
        grads.append(gx)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)


def test_gradients_reach_input_and_beta():
    lp = CausalLowPass(4, period=8, c=3)
    x = torch.randn(2, 8, 4, requires_grad=True)
    lp(x)[:, -1].pow(2).sum().backward()
    assert x.grad[:, 0].abs().sum() > 0 and lp.beta.grad.abs().sum() > 0


def test_too_many_bins_for_the_period_is_refused():
    with pytest.raises(ValueError, match="period >= 6"):
        CausalLowPass(4, period=5, c=5)

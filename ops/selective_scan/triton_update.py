"""Triton kernel for one decode step of the selective scan (``selective_state_update``), forward only.

One program per (block of BLOCK_D channels, batch row); the state tile (BLOCK_D, BLOCK_N) is
read once and the new state written once:

    dl = [softplus](dt + dt_bias);  h' = exp(dl A) * h + dl * B * x;  y = (C . h' + D x) [* silu(z)]

Computed in float32 (float64 for float64 inputs). The kernel writes the new state to a separate
buffer (the public function copies it into ``state``). Gradients, when asked for, come from the
differentiable torch step (``state_update.py``), which gives the same values.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_aot import AotSpec
from ._pointwise import compute_dtype
from .triton_fwd import _acc, _load_channel_vec, _softplus


@triton.jit
def _ss_update_kernel(
    STATE, X, DT, A, B, C, D, Z, DT_BIAS, Y, NEW_STATE,   # STATE, NEW_STATE (b, dim, N); X, DT, Z, Y (b, dim); B (b, GB, N); C (b, GC, N)
    dim, N, GB, GC,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    IS_F64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    m = mask_d[:, None] & mask_n[None, :]
    row = pid_b * dim + offs_d                                              # (BD,)
    x = _acc(tl.load(X + row, mask=mask_d, other=0.0), IS_F64)
    dl = _acc(tl.load(DT + row, mask=mask_d, other=0.0), IS_F64) + _load_channel_vec(DT_BIAS, offs_d, mask_d, HAS_DBIAS, IS_F64)
    if SOFTPLUS:
        dl = _softplus(dl)
    A_ = _acc(tl.load(A + offs_d[:, None] * N + offs_n[None, :], mask=m, other=0.0), IS_F64)
    gb = offs_d // (dim // GB)
    gc = offs_d // (dim // GC)
    Bv = _acc(tl.load(B + (pid_b * GB + gb[:, None]) * N + offs_n[None, :], mask=m, other=0.0), IS_F64)
    Cv = _acc(tl.load(C + (pid_b * GC + gc[:, None]) * N + offs_n[None, :], mask=m, other=0.0), IS_F64)
    h = _acc(tl.load(STATE + row[:, None] * N + offs_n[None, :], mask=m, other=0.0), IS_F64)
    h = tl.exp(dl[:, None] * A_) * h + (dl * x)[:, None] * Bv
    y = tl.sum(h * Cv, axis=1) + _load_channel_vec(D, offs_d, mask_d, HAS_D, IS_F64) * x
    if HAS_Z:
        zz = _acc(tl.load(Z + row, mask=mask_d, other=0.0), IS_F64)
        y = y * zz * tl.sigmoid(zz)
    tl.store(NEW_STATE + row[:, None] * N + offs_n[None, :], h, mask=m)
    tl.store(Y + row, y, mask=mask_d)


def triton_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """-> (y (batch, dim) in x's dtype, new_state (batch, dim, N) in state's dtype)."""
    cd = compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    batch, dim = x.shape
    N = A.shape[1]
    B3 = B if B.dim() == 3 else B.unsqueeze(1)
    C3 = C if C.dim() == 3 else C.unsqueeze(1)
    st, x_, dt_, A_, B_, C_, D_, z_, db_ = (None if t is None else t.contiguous()
                                            for t in (state, x, dt, A, B3, C3, D, z, dt_bias))
    y = torch.empty(batch, dim, dtype=x.dtype, device=x.device)
    new_state = torch.empty(batch, dim, N, dtype=state.dtype, device=state.device)
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_D = max(1, min(64, 4096 // BLOCK_N))
    _ss_update_kernel[(triton.cdiv(dim, BLOCK_D), batch)](
        st, x_, dt_, A_, B_, C_, D_ if D_ is not None else x_, z_ if z_ is not None else x_,
        db_ if db_ is not None else x_, y, new_state, dim, N, B3.shape[1], C3.shape[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        IS_F64=cd == torch.float64, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N)
    return y, new_state


_SIG = {"STATE": "*fp32", "X": "*bf16", "DT": "*bf16", "A": "*fp32", "B": "*bf16", "C": "*bf16", "D": "*fp32",
        "Z": "*bf16", "DT_BIAS": "*fp32", "Y": "*bf16", "NEW_STATE": "*fp32",
        "dim": "i32", "N": "i32", "GB": "i32", "GC": "i32",
        "HAS_D": "constexpr", "HAS_Z": "constexpr", "HAS_DBIAS": "constexpr", "SOFTPLUS": "constexpr",
        "IS_F64": "constexpr", "BLOCK_D": "constexpr", "BLOCK_N": "constexpr"}

AOT_SPECS = [AotSpec(module=__name__, name="_ss_update_kernel", signature=_SIG,
                     constexprs=dict(HAS_D=True, HAS_Z=True, HAS_DBIAS=True, SOFTPLUS=True, IS_F64=False,
                                     BLOCK_D=64, BLOCK_N=16), label="bf16_io_fp32_state")]

"""ssd_scan: the Mamba-2 state-space-duality scan (Dao & Gu 2024), as mamba_chunk_scan_combined.

    dt'_t = softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias
    h_t   = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T        h: (H, P, N) per batch row
    y_t   = h_t C_t + D x_t;   y = y * silu(z) when z is given

Shapes: x (b, L, H, P); dt (b, L, H); A (H,); B, C (b, L, G, N), head h reads group
h // (H // G); D (H,) or (H, P); z (b, L, H, P); dt_bias (H,); initial_states (b, H, P, N).
``chunk_size`` (a power of two) only changes how the work is cut, never the result (the CPU path
uses min(chunk_size, 64), the Triton kernels max(chunk_size, 16)).

``cu_seqlens`` (flash-attn convention, batch 1, int tensor [0, l1, ..., L]) restarts the state at
every boundary. Then ``initial_states`` and the returned final states are per sequence:
(n_seqs, H, P, N). (mamba_ssm takes seq_idx instead; cu_seqlens is the same information.)

Paths (``backend=``): "reference" = sequential loop (reference.py); "cpu" = chunked torch and C loops
with a hand-written chunked backward (cpu.py, cpu_bwd.py), registered as the custom ops
``parazoo::ssd_chunked`` / ``parazoo::ssd_chunked_bwd``; "triton" = Triton kernels (triton_*.py),
registered as the custom op ``parazoo::ssd_scan``. Both custom ops have a fake and an autograd formula,
so that they work under torch.compile (fullgraph too).
Returns y (b, L, H, P) in x's dtype [, final_states float32 (float64 for float64 x)].
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._validate import check_cu_seqlens, check_power_of_two, check_same_device, check_tensor
from .cpu import compute_dtype, ssd_chunked
from .reference import dt_preprocess, ssd_scan_reference

__all__ = ["ssd_scan"]

OP = "ssd_scan"
# The CPU path cuts chunks of at most 64 positions whatever chunk_size asks (mamba_ssm's default is 256):
# its Q x Q work grows with the chunk, and 64 measured 2.6x faster than 256 at the Mamba-2 130M shape on
# a 2-core CPU (32 and 128 slower again, also with the hand-written backward). The chunk size never
# changes the result.
CPU_MAX_CHUNK = 64
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, cu_seqlens):
    dims: dict = {}
    check_tensor("x", x, op=OP, shape=("b", "L", "H", "P"), dtypes=_FLOATS, dims=dims)
    check_tensor("dt", dt, op=OP, shape=("b", "L", "H"), dtypes=_FLOATS, dims=dims)
    check_tensor("A", A, op=OP, shape=("H",), dtypes=_FLOATS, dims=dims)
    check_tensor("B", B, op=OP, shape=("b", "L", "G", "N"), dtypes=(x.dtype,), dims=dims)
    check_tensor("C", C, op=OP, shape=("b", "L", "G", "N"), dtypes=(x.dtype,), dims=dims)
    H, G = dims["H"], dims["G"]
    if G < 1 or H % G:
        raise ValueError(f"{OP}: the number of groups of B and C (dim 2, G={G}) must divide the number "
                         f"of heads of x (dim 2, H={H}); got B shape {tuple(B.shape)}, x shape {tuple(x.shape)}")
    check_power_of_two("chunk_size", chunk_size, op=OP)
    if D is not None:
        check_tensor("D", D, op=OP, ndim=(1, 2), dtypes=_FLOATS)
        check_tensor("D", D, op=OP, shape=("H",) if D.dim() == 1 else ("H", "P"), dims=dims)
    check_tensor("z", z, op=OP, shape=("b", "L", "H", "P"), dtypes=(x.dtype,), optional=True, dims=dims)
    check_tensor("dt_bias", dt_bias, op=OP, shape=("H",), dtypes=_FLOATS, optional=True, dims=dims)
    check_cu_seqlens(cu_seqlens, dims["L"], dims["b"], op=OP)
    n_states = dims["b"] if cu_seqlens is None else cu_seqlens.numel() - 1
    check_tensor("initial_states", initial_states, op=OP, shape=(n_states, "H", "P", "N"), dtypes=_FLOATS,
                 optional=True, dims=dims)
    check_same_device(OP, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      initial_states=initial_states, cu_seqlens=cu_seqlens)


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
             initial_states=None, return_final_states=False, cu_seqlens=None, *, backend="auto"):
    """Mamba-2 SSD scan; see the module docstring. Returns y or (y, final_states)."""
    _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, cu_seqlens)
    backend = resolve_backend(backend, x, dt, A, B, C, D, z, dt_bias, initial_states, op=OP)
    if backend == "reference":
        return ssd_scan_reference(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                  initial_states=initial_states, return_final_states=return_final_states,
                                  cu_seqlens=cu_seqlens)
    if backend == "cpu":
        cdt = compute_dtype(x.dtype)
        dtp = dt_preprocess(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus)
        y, final = ssd_chunked(x, dtp, A, B, C, D, z, initial_states, cu_seqlens, min(chunk_size, CPU_MAX_CHUNK))
    else:
        from .triton_op import ssd_scan_triton

        y, final = ssd_scan_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states,
                                   cu_seqlens)
    return (y, final) if return_final_states else y

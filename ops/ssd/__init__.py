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
(n_seqs, H, P, N).

mamba_chunk_scan_combined's other keywords, so that Mamba-2 code written for mamba_ssm ports by
changing the import (keyword-only here; the positional order is the contract's):
- ``seq_idx`` (b, L) int: the sequence index of every token; the state restarts wherever it changes
  along a row (see ``ops/_seq_idx.py``: rows of any batch size, carried as cu_seqlens on the rows laid
  end to end). ``initial_states`` (b, H, P, N) is then per row (the state before a row's tokens of
  sequence 0) and final states are each row's last sequence's, as in mamba_ssm. With ``cu_seqlens``
  too (mamba_ssm passes both for ``return_varlen_states``), the two must cut the same sequences.
- ``dt_limit`` (lo, hi): dt' = clamp(dt', lo, hi) after the bias and softplus; the gradient is 0 where
  it clamps. None (the default) clamps nowhere. mamba_ssm's default (0, inf) clamps dt' at 0 from
  below; that changes nothing with dt_softplus=True (how Mamba-2 calls it), and without softplus our
  default keeps the equation above, as mamba_ssm's own reference (ssd_chunk_scan_combined_ref) does.
- ``return_varlen_states=True`` (needs ``cu_seqlens``): also returns the last state of every packed
  sequence, (n_seqs, H, P, N), last: y, [final_states,] varlen_states. The final_states beside it
  are then the state at the end of the packed row, (1, H, P, N), as in mamba_ssm.

Paths (``backend=``): "reference" = sequential loop (reference.py); "cpu" = chunked torch and C loops
with a hand-written chunked backward (cpu.py, cpu_bwd.py), registered as the custom ops
``parazoo::ssd_chunked`` / ``parazoo::ssd_chunked_bwd``; "triton" = Triton kernels (triton_*.py),
registered as the custom op ``parazoo::ssd_scan``. Both custom ops have a fake and an autograd formula,
so that they work under torch.compile (fullgraph too).
Returns y (b, L, H, P) in x's dtype [, final_states] [, varlen_states], states in float32 (float64 for
float64 x).
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._seq_idx import seq_idx_packing
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


def _check_dt_limit(dt_limit):
    """dt_limit: None or (lo, hi) with lo <= hi -> None or (float lo, float hi)."""
    if dt_limit is None:
        return None
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ValueError(f"{OP}: argument 'dt_limit' must be None or a pair (lo, hi) of numbers, "
                         f"got {dt_limit!r}") from None
    if not lo <= hi:
        raise ValueError(f"{OP}: argument 'dt_limit' must have lo <= hi, got {dt_limit!r}")
    return lo, hi


def ssd_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
             initial_states=None, return_final_states=False, cu_seqlens=None, *, seq_idx=None, dt_limit=None,
             return_varlen_states=False, backend="auto"):
    """Mamba-2 SSD scan; see the module docstring. Returns y [, final_states] [, varlen_states]."""
    _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, cu_seqlens if seq_idx is None else None)
    limit = _check_dt_limit(dt_limit)
    if not isinstance(return_varlen_states, bool):
        raise ValueError(f"{OP}: argument 'return_varlen_states' must be a bool, got {return_varlen_states!r}")
    if return_varlen_states and cu_seqlens is None:
        raise ValueError(f"{OP}: return_varlen_states=True needs argument 'cu_seqlens' (the packed sequences "
                         "whose last states it returns), got None")
    b, L = x.shape[:2]
    packing = None
    if seq_idx is not None:
        packing = seq_idx_packing(seq_idx, b, L, x.device, OP)
        if cu_seqlens is not None:
            check_cu_seqlens(cu_seqlens, L, b, op=OP)
            if packing is not None and not torch.equal(cu_seqlens.detach().to("cpu", torch.int64),
                                                       packing.cu_seqlens.to("cpu")):
                raise ValueError(f"{OP}: arguments 'cu_seqlens' and 'seq_idx' must cut the same sequences: "
                                 f"cu_seqlens {cu_seqlens.tolist()}, seq_idx starts {packing.cu_seqlens.tolist()}")
    if limit is not None:                       # clamp in torch; the paths then take dt' as it is
        cdt = compute_dtype(x.dtype)
        dt = dt_preprocess(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus).clamp(*limit)
        dt_bias, dt_softplus = None, False
    if packing is not None:                     # the rows end to end as one packed row
        def flat(t):
            return None if t is None else t.reshape(1, b * L, *t.shape[2:])
        y, finals = _scan(flat(x), flat(dt), A, flat(B), flat(C), chunk_size, D, flat(z), dt_bias, dt_softplus,
                          packing.initial(initial_states), packing.cu_seqlens, backend)
        y, final = y.reshape(b, L, *y.shape[2:]), packing.row_finals(finals)
    else:
        y, finals = _scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, cu_seqlens, backend)
        final = finals[-1:] if return_varlen_states else finals
    out = (y,) + ((final,) if return_final_states else ()) + ((finals,) if return_varlen_states else ())
    return out if len(out) > 1 else y


def _scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, cu_seqlens, backend):
    """The validated scan on one backend -> y, final states (per sequence with cu_seqlens, else per row)."""
    backend = resolve_backend(backend, x, dt, A, B, C, D, z, dt_bias, initial_states, op=OP)
    if backend == "reference":
        return ssd_scan_reference(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                  initial_states=initial_states, return_final_states=True, cu_seqlens=cu_seqlens)
    if backend == "cpu":
        cdt = compute_dtype(x.dtype)
        dtp = dt_preprocess(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus)
        return ssd_chunked(x, dtp, A, B, C, D, z, initial_states, cu_seqlens, min(chunk_size, CPU_MAX_CHUNK))
    from .triton_op import ssd_scan_triton

    return ssd_scan_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, cu_seqlens)

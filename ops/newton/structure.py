"""Jacobian structures of a recurrence h_t = f(h_{t-1}, x_t) and the linear scans they need.

A Newton step solves the linearised recurrence  delta_t = A_t delta_{t-1} + r_t  with
A_t = df/dh_{t-1}; the adjoint solves  lambda_t = A_{t+1}^T lambda_{t+1} + g_t  in reverse.
How A_t is stored decides which parallel scan solves them:

* ``"diag"``         state (B, T, *S), A (B, T, *S): every state element evolves alone
                     (ParaGRU). Solved by ``parazoo.ops.linear_scan``.
* ``("block", K)``   state (B, T, *C, K), A (B, T, *C, K, K): independent K x K blocks along
                     the last state dim (ParaLSTM: K = 2, [c, h] per channel).
                     Solved by ``parazoo.ops.block_scan``.
* ``"dense"``        state (B, T, *S) flattened to D = prod(S), A (B, T, D, D): any cell, small
                     D only. Solved by ``block_scan`` with one D x D block.

A_t[..., i, j] = d f_i / d h_j (row = output element, column = input element).
Jacobians, deltas and adjoints are kept in at least float32 (``solve_dtype``).
"""
from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["Structure", "parse_structure", "solve_dtype"]

_SPEC_HELP = "'diag', ('block', K) with K >= 1, or 'dense'"


def solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of Newton iterates, Jacobians, deltas and adjoints: float32 at least."""
    return torch.promote_types(dtype, torch.float32)


@dataclasses.dataclass(frozen=True)
class Structure:
    """One Jacobian layout; ``k`` is the block size (1 for diag, 0 for dense: decided by D)."""

    kind: str  # "diag" | "block" | "dense"
    k: int = 1

    def __str__(self) -> str:
        return f"('block', {self.k})" if self.kind == "block" else repr(self.kind)

    # ---- shapes -------------------------------------------------------------------------
    def check_state_shape(self, state_shape: tuple, op: str = "newton_solve") -> None:
        """Raise ValueError when the state (without batch/time dims) cannot carry this layout."""
        if self.kind == "block" and (len(state_shape) == 0 or state_shape[-1] != self.k):
            raise ValueError(f"{op}: jacobian={self} needs the state's last dim to be the block size {self.k}, "
                             f"got state shape {tuple(state_shape)} (per batch element)")

    def jac_shape(self, lead: tuple, state_shape: tuple) -> tuple:
        """Shape of A for states of shape (*lead, *state_shape)."""
        if self.kind == "diag":
            return (*lead, *state_shape)
        if self.kind == "block":
            return (*lead, *state_shape, self.k)
        d = math.prod(state_shape)
        return (*lead, d, d)

    # ---- structured linear algebra -----------------------------------------------------
    def matvec(self, A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A @ v with A in this layout and v shaped like the state (*lead, *S)."""
        if self.kind == "diag":
            return A * v
        if self.kind == "block":
            return (A @ v.unsqueeze(-1)).squeeze(-1)
        lead = A.shape[:-2]
        return (A @ v.reshape(*lead, -1, 1)).reshape(v.shape)

    def transpose(self, A: torch.Tensor) -> torch.Tensor:
        return A if self.kind == "diag" else A.transpose(-1, -2)

    def scan(self, A: torch.Tensor, b: torch.Tensor, reverse: bool = False, backend: str = "auto") -> torch.Tensor:
        """Solve h_t = A_t h_{t-1} + b_t (reverse: h_t = A_t h_{t+1} + b_t) with zero start.

        A in this layout over (B, T, ...); b (B, T, *S). Calls the public scan ops so that the
        Triton / fused-CPU paths are used.
        """
        # from the subpackages: ``parazoo.ops.linear_scan`` is the package once a submodule is imported
        from ..block_scan import block_scan
        from ..linear_scan import linear_scan

        if self.kind == "diag":
            return linear_scan(A, b, reverse=reverse, backend=backend)
        if self.kind == "block":
            return block_scan(A, b, reverse=reverse, backend=backend)
        B, T = b.shape[:2]
        out = block_scan(A, b.reshape(B, T, -1), reverse=reverse, backend=backend)
        return out.reshape(b.shape)

    def allowed_mask(self, state_shape: tuple, device=None) -> torch.Tensor:
        """(D, D) bool: which entries of the full Jacobian this layout may hold (D = prod(S))."""
        d = math.prod(state_shape)
        if self.kind == "dense":
            return torch.ones(d, d, dtype=torch.bool, device=device)
        group = torch.arange(d, device=device) // self.k  # diag: k = 1, one group per element
        return group[:, None] == group[None, :]

    def from_dense(self, J: torch.Tensor, state_shape: tuple) -> torch.Tensor:
        """This layout's A from a full (*lead, D, D) Jacobian (used by the structure probe)."""
        lead = J.shape[:-2]
        if self.kind == "dense":
            return J
        if self.kind == "diag":
            return torch.diagonal(J, dim1=-2, dim2=-1).reshape(*lead, *state_shape)
        k = self.k
        nb = J.shape[-1] // k
        blocks = J.reshape(*lead, nb, k, nb, k)
        idx = torch.arange(nb, device=J.device)
        blocks = blocks[..., idx, :, idx, :]  # advanced indexing moves the block dim first
        blocks = blocks.movedim(0, -3) if lead else blocks
        return blocks.reshape(*lead, *state_shape, k)


def parse_structure(spec, op: str = "newton_solve") -> Structure:
    """'diag' | ('block', K) | 'dense' (also a Structure) -> Structure; ValueError otherwise."""
    if isinstance(spec, Structure):
        return spec
    if spec == "diag":
        return Structure("diag", 1)
    if spec == "dense":
        return Structure("dense", 0)
    if (isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] == "block"
            and isinstance(spec[1], int) and not isinstance(spec[1], bool) and spec[1] >= 1):
        return Structure("diag", 1) if spec[1] == 1 else Structure("block", int(spec[1]))
    raise ValueError(f"{op}: argument 'jacobian' must be {_SPEC_HELP}, got {spec!r}")

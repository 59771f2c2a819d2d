"""Exact nearest-neighbour search over a fixed point set (PRDC's dataset constraint).

* ``brute`` (the default on GPU): the points stay on the device; a query batch is compared with
  every point in chunks. Per chunk the ``candidates`` closest points under the fast expansion
  ‖x‖² − 2x·p + ‖p‖² are re-scored with the direct Σ(x − p)². Re-scoring repairs fp32 rounding of
  the expansion but not a reduced-precision product: with TF32 matmuls (``allow_tf32``, or
  ``torch.set_float32_matmul_precision("high")``, which inductor suggests) a dense cluster of
  near-identical points puts the wrong candidates first and the answer is wrong. So when reduced
  fp32 matmul precision is on, the product x·p is computed in float64 (:func:`ieee_product`);
  otherwise in float32. Everything is tensor ops on the device: no host sync per query.
* ``kdtree`` (the default on CPU): a scipy ``cKDTree`` built once, queried exactly (eps = 0) on
  all cores.

Both return the index of the nearest point for each query (Euclidean distance; ties may resolve
to different indices in the two methods).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from offrl.errors import OffrlError

Method = Literal["auto", "brute", "kdtree"]


def reduced_precision_matmul(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` may use reduced precision (TF32 or bf16 passes)."""
    if torch.get_float32_matmul_precision() != "highest":
        return True
    return device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32


def ieee_product(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x @ p.T at (at least) IEEE float32 accuracy whatever the matmul precision setting: float32
    when full precision is on, else computed in float64 and returned as float32."""
    if reduced_precision_matmul(x.device):
        return torch.matmul(x.double(), p.double().T).float()
    return torch.matmul(x, p.T)


class ExactNN:
    """Exact 1-nearest-neighbour index over ``points`` ``[N, D]``."""

    def __init__(self, points: torch.Tensor, method: Method = "auto", chunk: int = 262_144, candidates: int = 8):
        if points.dim() != 2 or len(points) == 0:
            raise OffrlError(f"nearest-neighbour points must be a non-empty [N, D] tensor, got shape {tuple(points.shape)}")
        if method == "auto":
            method = "brute" if points.device.type != "cpu" else "kdtree"
        if method not in ("brute", "kdtree"):
            raise OffrlError(f"unknown nearest-neighbour method '{method}' (brute, kdtree)")
        self.method = method
        self.device = points.device
        self.dim = points.shape[1]
        # distances are translation-invariant: centring keeps the brute-force expansion well conditioned
        self.center = points.detach().double().mean(0).float()
        points = points.detach().float() - self.center
        if method == "kdtree":
            from scipy.spatial import cKDTree

            self.tree = cKDTree(points.detach().cpu().numpy().astype(np.float64), balanced_tree=False)
        else:
            self.points = points.contiguous()
            self.sq_norms = self.points.square().sum(1)
            self.chunk = int(chunk)
            self.candidates = int(candidates)

    def __len__(self) -> int:
        return self.tree.n if self.method == "kdtree" else len(self.points)

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Index (int64, on ``x``'s device) of the nearest point to each row of ``x`` ``[B, D]``."""
        if x.shape[-1] != self.dim:
            raise OffrlError(f"query has {x.shape[-1]} dims, the index holds {self.dim}-dim points")
        x = x.detach().float() - self.center.to(x.device)
        if self.method == "kdtree":
            _, idx = self.tree.query(x.cpu().double().numpy(), k=1, workers=-1)
            return torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(x.device)
        return self._brute(x)

    def _brute(self, x: torch.Tensor) -> torch.Tensor:
        best_d = best_i = None
        xn = x.square().sum(1, keepdim=True)
        for start in range(0, len(self.points), self.chunk):
            p = self.points[start:start + self.chunk]
            approx = xn - 2.0 * ieee_product(x, p) + self.sq_norms[start:start + self.chunk]
            k = min(self.candidates, len(p))
            cand = approx.topk(k, dim=1, largest=False).indices  # [B, k]
            exact = (x.unsqueeze(1) - p[cand]).square().sum(-1)  # [B, k]
            d, j = exact.min(1)
            i = cand.gather(1, j.unsqueeze(1)).squeeze(1) + start
            if best_d is None:
                best_d, best_i = d, i
            else:
                better = d < best_d
                best_d = torch.where(better, d, best_d)
                best_i = torch.where(better, i, best_i)
        return best_i

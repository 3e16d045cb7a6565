"""A low-rank linear bypass beside each block: `y = block(x) + (x @ down) @ up + bias`, as standard MatMuls.

Why: a pretrained MLP is mostly linear in variance (a linear least-squares map leaves 1-11% of MiniLM's
MLP output variance unexplained), and a LUT block fitted alone leaves 40-80%. A rank-r linear path takes
the linear part with `2 * D * r` multiplications per token (r = 32 at D = 384: 2.1% of the MLP's), the
block then fits what is left, and both train by gradient end to end. The multiplications are counted
with the model's other MatMuls (`costs.weight_macs` sees them as constant 2-D weights).

The fit is a weighted reduced-rank regression: the full least-squares map, projected onto the `r`
output directions that carry most of its (weighted) fitted values. The weights say how much each output
dimension matters downstream (see `distill.output_weights`); unweighted, the rank goes to the few
outlier dimensions of a transformer's residual stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from quweit.custom_ops import WeightlessBlockParams

#: Initializer name suffixes of a bypass, after the MLP's `<output>.quweit.` prefix.
BYPASS_NAMES = ("bypass_down", "bypass_up", "bypass_bias")
#: Substring that marks an initializer as part of a bypass (trained with the blocks by quweit-finetune).
BYPASS_MARK = ".quweit.bypass_"
RIDGE = 1e-4


@dataclasses.dataclass(frozen=True)
class LowRankBypass:
    """`(x @ down) @ up + bias`: down float32 `[D_in, r]`, up `[r, D_out]`, bias `[D_out]`."""

    down: np.ndarray
    up: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        r = self.down.shape[1]
        if self.up.shape[0] != r or self.bias.shape != (self.up.shape[1],):
            raise ValueError(f"bypass shapes do not chain: down {list(self.down.shape)}, up {list(self.up.shape)}, "
                             f"bias {list(self.bias.shape)}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    @property
    def macs(self) -> int:
        """Multiplications per token."""
        return int(self.down.size + self.up.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(BYPASS_NAMES, (self.down, self.up, self.bias)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.down) @ self.up + self.bias


@dataclasses.dataclass(frozen=True)
class Replacement:
    """What an MLP becomes: a block, and optionally a low-rank bypass beside it (outputs added)."""

    block: WeightlessBlockParams
    bypass: LowRankBypass | None = None


def as_replacement(value: WeightlessBlockParams | Replacement) -> Replacement:
    return value if isinstance(value, Replacement) else Replacement(value)


def fit_bypass(x: np.ndarray, y: np.ndarray, rank: int, weights: np.ndarray | None = None) -> LowRankBypass:
    """Rank-`rank` least squares `y ~ x @ down @ up + bias`, errors weighted per output by `weights [D_out]`.

    Reduced-rank regression: solve the full ridge map W, then keep the top right-singular directions P of
    the weighted fitted values; `down = W diag(w) P`, `up = P^T diag(1/w)` (exact for the weighted error).
    """
    if rank < 1:
        raise ValueError(f"bypass rank must be >= 1, got {rank}")
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.ones(y.shape[1]) if weights is None else np.maximum(np.asarray(weights, np.float64), 1e-12)
    rank = min(rank, x.shape[1], y.shape[1])
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, (y - y_mean) * w
    gram = xc.T @ xc
    gram += RIDGE * max(float(np.trace(gram)) / len(gram), 1e-12) * np.eye(len(gram))
    full = np.linalg.solve(gram, xc.T @ yc)  # [D_in, D_out], weighted outputs
    _, _, vt = np.linalg.svd(xc @ full, full_matrices=False)
    p = vt[:rank].T  # [D_out, r]
    down = full @ p
    up = p.T / w[None, :]
    bias = y_mean - x_mean @ down @ up
    return LowRankBypass(down.astype(np.float32), up.astype(np.float32), bias.astype(np.float32))

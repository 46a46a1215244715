"""Graph convolutional network (GCNN) of seed 000, as an exact dense computation on the pixel grid.

The pipeline of the paper: the frames of a (B, T, C, H, W) 10 m time series are stacked along the
spectral axis (T * C channels, T varies from box to box), adaptive max pooling over that axis keeps
``n_features`` (k = 80) channels per pixel, bicubic ×4 brings them to 2.5 m, and GCN layers

    H' = ReLU(Â H W + b),   Â = D^-1/2 (A + I) D^-1/2

with 64, 32, 16 and 8 units run on the graph of the 2.5 m pixels (8-connectivity plus self loops),
followed by a per-node linear output layer 8 -> 1 (logits; callers apply the sigmoid). At k = 80 the
model has 7,937 parameters, the paper's count.

Dense formulation: on the grid, the degree of a node (self loop included) is the number of in-grid
pixels of its 3x3 neighbourhood (9 inside, 6 on an edge, 4 at a corner) and Â Z = s * box3x3(s * Z)
with s = deg^-1/2 and box3x3 the zero-padded 3x3 window sum (:func:`grid_propagate`). No edge list
is needed. The per-node products H W are matmuls done *before* the aggregation (every layer reduces
the channels). The degree factorises into in-grid rows times in-grid columns, so Â is separable:
one position-dependent 3-tap filter per axis (:func:`axis_operator`). The first product also
commutes with the (linear, separable) bicubic upsampling, so :meth:`GCNN.forward` applies it at
10 m and fuses bicubic ×4 with the first aggregation into one 5-tap polyphase filter per axis.
:class:`GCNNGeometric` is the torch-geometric reference (``GCNConv`` on ``torch_geometric.utils.grid``)
with the same parameter names; the tests check that all of these agree.

Tiled inference: the output at a 2.5 m pixel depends on the features within 4 hops (4 GCN layers),
but a crop is a graph of its own: the nodes on a cut lose neighbours, so their degrees change, and
Â_ij = (d_i d_j)^-1/2 carries that one hop further. Cropping given 2.5 m features with a halo of
:attr:`GCNN.receptive_halo_2p5m` = 5 px (hops + 1) reproduces the interior exactly; 4 px does not.
Cropping the 10 m input adds the bicubic border: it spoils 6 rows at 2.5 m next to a cut, which the
4 layers carry 4 rows further, so 10 rows, i.e. :attr:`GCNN.input_halo_10m` = 3 px at 10 m, are
needed (``models.inference``'s ``ceil(5 / 4) + 2 = 4`` px is exact too). Without gradients,
:meth:`GCNN.forward` itself runs large inputs tile by tile with that halo: same results, bounded
memory, work that stays in cache.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (torch convention)

from .registry import register_model

#: Hidden GCN layer widths of the paper.
PAPER_HIDDEN = "64,32,16,8"


def parse_widths(widths: str) -> tuple[int, ...]:
    """``"64,32,16,8"`` -> ``(64, 32, 16, 8)``; ``ValueError`` unless all are positive ints."""
    try:
        values = tuple(int(v) for v in str(widths).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"layer widths must be comma-separated ints, got {widths!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"layer widths must be positive ints, got {widths!r}")
    return values


def stack_frames(x: Tensor) -> Tensor:
    """(B, T, C, H, W) -> (B, T * C, H, W): the frames stacked along the spectral axis."""
    if x.ndim != 5:
        raise ValueError(f"x must have shape (B, T, C, H, W), got {tuple(x.shape)}")
    B, T, C, H, W = x.shape
    if T * C == 0:
        raise ValueError(f"x has no channels to pool: shape {tuple(x.shape)}")
    return x.reshape(B, T * C, H, W)


def adaptive_max_pool_channels(x: Tensor, k: int) -> Tensor:
    """Adaptive max pooling over the channel axis: (B, L, H, W) -> (B, k, H, W).

    The windows of ``F.adaptive_max_pool1d``: output i is the max over channels
    ``floor(i L / k)`` to ``ceil((i + 1) L / k)`` (exclusive), so channels repeat when L < k.
    Runs on the (B, L, H, W) layout without transposing the input: one reduction when k divides
    L, else a running maximum over the window offsets (windows hold at most ``ceil(L / k) + 1``).
    """
    B, L, H, W = x.shape
    if L % k == 0:
        return x.view(B, k, L // k, H, W).amax(dim=2)
    i = torch.arange(k, device=x.device)
    starts, stops = (i * L) // k, -((-(i + 1) * L) // k)
    out = x.index_select(1, starts)
    for offset in range(1, int((stops - starts).max())):
        out = torch.maximum(out, x.index_select(1, torch.minimum(starts + offset, stops - 1)))
    return out


def upsample_bicubic(x: Tensor, scale: int) -> Tensor:
    """Bicubic ×``scale`` (``F.interpolate``, ``align_corners=False``) of a (B, C, H, W) tensor."""
    if scale == 1:
        return x
    H, W = x.shape[-2:]
    return F.interpolate(x, size=(scale * H, scale * W), mode="bicubic", align_corners=False)


def sum3(x: Tensor, dim: int) -> Tensor:
    """``x[i - 1] + x[i] + x[i + 1]`` along ``dim``, with zero padding."""
    out = x.clone()
    n = x.shape[dim]
    if n > 1:
        out.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1))
        out.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1))
    return out


def box3x3(x: Tensor) -> Tensor:
    """Sum over the 3x3 window of every pixel of (..., H, W), with zero padding (separable)."""
    return sum3(sum3(x, -2), -1)


def grid_norm(height: int, width: int) -> Tensor:
    """(H, W) float64 deg^-1/2 of the 8-connected grid with self loops (deg 9, 6 on edges, 4 at corners)."""
    return box3x3(torch.ones(height, width, dtype=torch.float64)).rsqrt()


def grid_propagate(z: Tensor) -> Tensor:
    """Â z = s * box3x3(s * z), s = deg^-1/2: the literal dense GCN aggregation on the last two axes."""
    s = grid_norm(z.shape[-2], z.shape[-1]).to(device=z.device, dtype=z.dtype)
    return s * box3x3(s * z)


def axis_operator(n: int, scale: int = 1) -> Tensor:
    """The (scale n, n) float64 matrix M U of one axis: bicubic ×scale, then the grid aggregation.

    The degree of pixel (i, j) factorises as r_i c_j (in-grid rows times in-grid columns of its 3x3
    window), so Â = (M_rows ⊗ M_cols) with M = diag(r^-1/2) tridiag(1, 1, 1) diag(r^-1/2), and the
    bicubic upsampling is separable as well: Â up(Z) = K_H Z K_W^T with K = M U. U is read off
    ``F.interpolate`` itself (identity input), so clamping at the borders is PyTorch's.
    """
    eye = torch.eye(n, dtype=torch.float64)
    if scale == 1:
        U = eye
    else:
        U = F.interpolate(eye.view(1, n, n, 1), size=(scale * n, 1), mode="bicubic", align_corners=False)
        U = U[0, :, :, 0].t()
    r = sum3(eye.new_ones(scale * n, 1), 0).rsqrt()  # (in-grid rows of the 3-window)^-1/2
    return r * sum3(r * U, 0)


@functools.lru_cache(maxsize=64)
def _axis_taps(
    n: int, scale: int, device: torch.device, dtype: torch.dtype
) -> tuple[tuple[tuple[int, Tensor], ...], ...]:
    """Per output phase p, the taps ``(d, w)`` of :func:`axis_operator`: out[s i + p] = Σ_d w[i] z[i + d].

    Cached per (n, scale, device, dtype); the weights are read-only.
    """
    K = axis_operator(n, scale).view(n, scale, n)  # K[i, p, j]: output row s i + p, input row j
    reach = min(n - 1, 3)  # bicubic reads i - 2 .. i + 2 (scale 4), the aggregation one more block
    taps: list[list[tuple[int, Tensor]]] = [[] for _ in range(scale)]
    covered = 0.0
    for d in range(-reach, reach + 1):
        w = torch.zeros(scale, n, dtype=torch.float64)
        diagonal = torch.diagonal(K, offset=d, dim1=0, dim2=2)  # (scale, n - |d|): K[i, p, i + d]
        w[:, max(0, -d) : n - max(0, d)] = diagonal
        covered += float(w.abs().sum())
        for p in range(scale):
            if d == 0 or bool(w[p].any()):
                taps[p].append((d, w[p].to(device=device, dtype=dtype)))
    if not math.isclose(covered, float(K.abs().sum()), rel_tol=1e-12):
        raise AssertionError(f"axis operator ({n}, x{scale}) reaches beyond ±{reach} rows")
    # d = 0 first: it covers every output row and initialises the sum.
    return tuple(tuple(sorted(phase, key=lambda t: t[0] != 0)) for phase in taps)


def _weight(w: Tensor, lo: int, size: int, dim: int) -> Tensor:
    """Tap weights of positions ``lo .. lo + size`` shaped to broadcast along ``dim`` (-2 or -1)."""
    w = w[lo : lo + size]
    return w[:, None] if dim == -2 else w


def _apply_axis(z: Tensor, scale: int, dim: int) -> Tensor:
    """K z along ``dim`` (-2 rows, -1 columns) of (B, C, H, W); K = :func:`axis_operator`."""
    n = z.shape[dim]
    out = z.new_empty((*z.shape[:dim], scale * n, *z.shape[dim:][1:]))
    phases = out.unflatten(dim, (n, scale))  # output position scale * i + p
    for p, taps in enumerate(_axis_taps(n, scale, z.device, z.dtype)):
        phase = phases.select(dim, p)
        torch.mul(z, _weight(taps[0][1], 0, n, dim), out=phase)  # d = 0: every position
        for d, w in taps[1:]:
            lo, size = max(0, -d), n - abs(d)
            phase.narrow(dim, lo, size).addcmul_(z.narrow(dim, lo + d, size), _weight(w, lo, size, dim))
    return out


def _apply_axis_transposed(g: Tensor, scale: int, dim: int) -> Tensor:
    """K^T g along ``dim``: the gradient of :func:`_apply_axis` (scale n positions back to n)."""
    n = g.shape[dim] // scale
    phases = g.unflatten(dim, (n, scale))
    out: Tensor | None = None
    for p, taps in enumerate(_axis_taps(n, scale, g.device, g.dtype)):
        g_p = phases.select(dim, p)
        for d, w in taps:
            lo, size = max(0, -d), n - abs(d)
            if out is None:  # the first tap has d = 0: every position
                out = torch.mul(g_p, _weight(w, 0, n, dim))
            else:
                out.narrow(dim, lo + d, size).addcmul_(g_p.narrow(dim, lo, size), _weight(w, lo, size, dim))
    if out is None:
        raise ValueError(f"an axis of {n} px has no taps")
    return out


class _AxisOperator(torch.autograd.Function):
    """:func:`_apply_axis` with its transpose as backward (in-place updates of views would make
    autograd copy whole tensors for every tap)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, scale: int, dim: int) -> Tensor:
        ctx.scale, ctx.dim = scale, dim
        return _apply_axis(z, scale, dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return _apply_axis_transposed(grad.contiguous(), ctx.scale, ctx.dim), None, None


def grid_upsample_propagate(z: Tensor, scale: int = 1, bias: Tensor | None = None) -> Tensor:
    """Â up(z) (+ bias): bicubic ×``scale`` of (B, C, H, W), then the grid aggregation, fused.

    Equal (to rounding) to ``grid_propagate(upsample_bicubic(z, scale))``, computed as the separable
    per-axis operators of :func:`axis_operator`: columns at 10 m first, then rows.
    """
    out = _AxisOperator.apply(_AxisOperator.apply(z, scale, -1), scale, -2)
    return out if bias is None else out.add_(bias[:, None, None])


def _pointwise(weight: Tensor, x: Tensor) -> Tensor:
    """Per-pixel linear map (1x1 conv without bias): (O, C) weight on (B, C, H, W) -> (B, O, H, W)."""
    B, C, H, W = x.shape
    return torch.bmm(weight.expand(B, -1, -1), x.reshape(B, C, H * W)).view(B, -1, H, W)


class GridGCNConv(nn.Module):
    """One GCN layer Â X W + b on the pixel grid of a (B, C, H, W) tensor (no activation).

    Parameter names and initialisation (Glorot weight, zero bias) are those of torch-geometric's
    ``GCNConv``: ``lin.weight`` (out, in) and ``bias`` (out).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.xavier_uniform_(self.lin.weight)

    def transform(self, x: Tensor) -> Tensor:
        """X W per pixel: (B, in, H, W) -> (B, out, H, W)."""
        return _pointwise(self.lin.weight, x)

    def propagate(self, z: Tensor, scale: int = 1) -> Tensor:
        """Â up(Z) + b for Z = X W (B, out, h, w): on the grid of ``z``, or of its bicubic ×``scale``."""
        return grid_upsample_propagate(z, scale, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.propagate(self.transform(x))


def bicubic_border_rows(scale: int) -> int:
    """2.5 m rows next to a cut of the 10 m input that bicubic ×``scale`` computes differently.

    Output row m (from the cut) reads input rows down to ``floor((m + 0.5) / scale - 0.5) - 1``,
    which lies outside the crop (and is clamped) while ``m < 1.5 * scale - 0.5``.
    """
    return math.ceil(1.5 * scale - 0.5)


class _GCNNBase(nn.Module):
    """Constructor arguments, features and bookkeeping shared by the dense and reference GCNNs."""

    #: Per-pixel features, a symmetric upsampler and graph convolutions on the 8-connected grid with
    #: symmetric normalisation: transposing or flipping the input does the same to the output, so
    #: test-time augmentation would only repeat the prediction (``models.inference``).
    dihedral_equivariant: ClassVar[bool] = True

    def __init__(self, n_features: int = 80, hidden: str = PAPER_HIDDEN, scale: int = 4) -> None:
        super().__init__()
        if int(n_features) < 1 or int(scale) < 1:
            raise ValueError(f"need n_features >= 1 and scale >= 1, got {n_features}, {scale}")
        self.n_features = int(n_features)
        self.hidden = parse_widths(hidden)
        self.scale = int(scale)
        self.config: dict[str, Any] = {
            "n_features": self.n_features,
            "hidden": ",".join(map(str, self.hidden)),
            "scale": self.scale,
        }

    def pool(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, k, H, W): stacked frames, adaptive max pooled to k channels."""
        return adaptive_max_pool_channels(stack_frames(x), self.n_features)

    def features(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) at 10 m -> (B, k, scale H, scale W) node features at 2.5 m."""
        return upsample_bicubic(self.pool(x), self.scale)

    @property
    def receptive_halo_2p5m(self) -> int:
        """Halo (2.5 m px) of the 2.5 m features that makes a crop exact: hops + 1 (degrees), 5."""
        return len(self.hidden) + 1

    @property
    def input_halo_10m(self) -> int:
        """Halo (10 m px) of the 10 m input that makes a crop exact: 3 at scale 4 with 4 layers.

        ``ceil(rows / scale)`` for the ``rows = max(bicubic rows + hops, hops + 1)`` 2.5 m rows
        next to a cut that differ (6 + 4 = 10 at scale 4). See the module docstring.
        """
        hops = len(self.hidden)
        return -(-max(bicubic_border_rows(self.scale) + hops, hops + 1) // self.scale)

    #: The halos above make tiled inference exact (not an approximation).
    halo_is_exact: ClassVar[bool] = True

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters (7,937 for the paper's model at k = 80)."""
        return sum(int(p.numel()) for p in self.parameters() if p.requires_grad)


@register_model("gcnn")
class GCNN(_GCNNBase):
    """The GCNN of seed 000 in its dense grid form: (B, T, C, H, W) 10 m -> (B, 1, 4H, 4W) logits.

    Args:
        n_features: k, the channels kept by the adaptive max pooling of the T * C stacked bands.
        hidden: widths of the GCN layers, comma-separated (paper: ``"64,32,16,8"``).
        scale: super-resolution factor (4: 10 m -> 2.5 m).

    ``forward`` accepts any T (and T * C < k) from call to call. With gradients disabled, inputs
    larger than ``inference_tile`` 10 m px run tile by tile with the exact halo (see the module
    docstring); set ``inference_tile = 0`` to turn that off.
    """

    name: ClassVar[str] = "gcnn"

    #: Side (10 m px) of the tiles of no-grad inference, which bound memory and keep the work in
    #: cache; 0 runs the input in one piece. Not a constructor argument: it changes no result.
    inference_tile: int = 64

    def __init__(self, n_features: int = 80, hidden: str = PAPER_HIDDEN, scale: int = 4) -> None:
        super().__init__(n_features, hidden, scale)
        widths = (self.n_features, *self.hidden)
        self.convs = nn.ModuleList(GridGCNConv(i, o) for i, o in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], 1)

    def gcn(self, features: Tensor) -> Tensor:
        """The graph part: (B, k, h, w) node features -> (B, 1, h, w) logits on their grid."""
        h = features
        for conv in self.convs:
            h = torch.relu_(conv(h))
        return _pointwise(self.head.weight, h) + self.head.bias.view(1, -1, 1, 1)

    def _forward(self, x: Tensor) -> Tensor:
        # gcn(features(x)), the first X W applied at 10 m (it commutes with the bicubic upsampling),
        # which is fused with the first aggregation.
        first, *rest = cast(list[GridGCNConv], list(self.convs))
        h = torch.relu_(first.propagate(first.transform(self.pool(x)), self.scale))
        for conv in rest:
            h = torch.relu_(conv(h))
        return _pointwise(self.head.weight, h) + self.head.bias.view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) float 10 m series -> (B, 1, scale H, scale W) logits at 2.5 m."""
        stack_frames(x)  # shape check
        tile, (H, W) = int(self.inference_tile), x.shape[-2:]
        if torch.is_grad_enabled() or tile <= 0 or max(H, W) <= tile:
            return self._forward(x)
        halo, s = self.input_halo_10m, self.scale
        out = x.new_empty(x.shape[0], 1, s * H, s * W)
        for r0 in range(0, H, tile):
            r1, a, b = min(H, r0 + tile), max(0, r0 - halo), min(H, r0 + tile + halo)
            for c0 in range(0, W, tile):
                c1, c, d = min(W, c0 + tile), max(0, c0 - halo), min(W, c0 + tile + halo)
                part = self._forward(x[..., a:b, c:d])
                rows, cols = slice(s * (r0 - a), s * (r1 - a)), slice(s * (c0 - c), s * (c1 - c))
                out[..., s * r0 : s * r1, s * c0 : s * c1] = part[..., rows, cols]
        return out


class GCNNGeometric(_GCNNBase):
    """Reference GCNN with torch-geometric ``GCNConv`` layers on the ``utils.grid`` edge list.

    Same constructor, parameter names and outputs as :class:`GCNN` (load one's ``state_dict`` into
    the other, or use :meth:`from_dense`), but it builds a graph of scale² H W nodes: for tests and
    comparisons only. torch-geometric is imported here, not by :class:`GCNN`.
    """

    name: ClassVar[str] = "gcnn-geometric"

    def __init__(self, n_features: int = 80, hidden: str = PAPER_HIDDEN, scale: int = 4) -> None:
        super().__init__(n_features, hidden, scale)
        from torch_geometric.nn import GCNConv

        widths = (self.n_features, *self.hidden)
        self.convs = nn.ModuleList(
            GCNConv(i, o, normalize=True, add_self_loops=True, bias=True)
            for i, o in itertools.pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], 1)

    @classmethod
    def from_dense(cls, model: GCNN) -> GCNNGeometric:
        """A reference model holding a copy of the weights of ``model``."""
        ref = cls(**model.config).to(next(model.parameters()).device)
        ref.load_state_dict(model.state_dict())
        return ref

    def gcn(self, features: Tensor) -> Tensor:
        """(B, k, h, w) node features -> (B, 1, h, w) logits, one graph per batch item."""
        from torch_geometric.utils import grid

        _, k, h, w = features.shape
        # utils.grid: row-major nodes, 8-connectivity, one self loop per node (GCNConv keeps it).
        edge_index, _ = grid(h, w, device=features.device)
        outputs = []
        for item in features:
            nodes = item.reshape(k, h * w).t()
            for conv in self.convs:
                nodes = torch.relu(conv(nodes, edge_index))
            outputs.append(self.head(nodes).t().reshape(1, h, w))
        return torch.stack(outputs)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, 1, scale H, scale W) logits, as :meth:`GCNN.forward`."""
        return self.gcn(self.features(x))

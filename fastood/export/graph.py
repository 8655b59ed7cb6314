"""The exported detector as one torch module: pixels in, ``(score, pred)`` out.

    pixels (B,3,H,W) f32 ─► image encoder ─► f (B,D) ─► head ─► score (B,) f32, pred (B,) int64

The head is the NegLabel / MCM score on the bank ``T`` (``[ID (K) | negatives in G
groups of m]``, unit-norm rows, baked into the graph as a constant):

    r_i      = scale / ||f_i||                          scale = 1/τ (row scale, fp32; f_i first divided
                                                        by max_j |f_ij| so ||f_i||² stays in fp32 range)
    L[i, j]  = r_i · (f_i · T_j)                        one MatMul + one Mul (B×N, fp32)
    LSE_s(i) = M_s(i) + log Σ_{j∈s} exp(L[i,j] − M_s(i)),  M_s(i) = max_{j∈s} L[i,j]
    NegLabel: score = mean_g sigmoid(LSE_id − LSE_g)     (G groups reshaped (B, G, m))
    MCM:      score = exp(M_id − LSE_id)  = max_k softmax_k(L[i, k])
    pred     = argmax_{k<K} L[i, k]   (first maximiser)

Every log-sum-exp subtracts its max explicitly (no ``ReduceLogSumExp``: some
runtimes implement it as ``log(sum(exp))``, which overflows at τ = 0.01), and the
score comes from LSE differences, never from ratios of exponentials. The head
always runs in fp32, also when the encoder runs in fp16.

``head="standard"`` writes these with standard ONNX ops (runs anywhere);
``head="fused"`` writes one node of the ``fastood`` custom domain (see
:mod:`fastood.export.onnx_export` and the TensorRT plugin) that computes the
same thing without materialising the B×N logits.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["StandardHead", "FusedHead", "DetectorGraph", "Fp32LayerNorm", "build_graph", "METHODS", "HEADS"]

METHODS = ("neglabel", "mcm")
HEADS = ("standard", "fused")


def _stable_lse(logits: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``(lse, max)`` along ``dim`` with the max subtracted before ``exp`` (fp32)."""
    mx = logits.amax(dim=dim, keepdim=True)
    lse = mx + torch.log(torch.exp(logits - mx).sum(dim=dim, keepdim=True))
    return lse.squeeze(dim), mx.squeeze(dim)


class StandardHead(nn.Module):
    """NegLabel / MCM score on a constant bank with standard ops (fp32 throughout).

    Args:
        bank: (N, D) unit-norm rows ``[ID | negatives]``; rows past ``K + G·m`` are dropped.
        num_id: K.
        groups: G (NegLabel); MCM uses only the ID rows.
        temperature: τ; logits are ``cos / τ``.
        method: ``"neglabel"`` or ``"mcm"``.
    """

    def __init__(self, bank: Tensor, num_id: int, groups: int, temperature: float, method: str) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        n = bank.shape[0]
        if not 1 <= num_id <= n:
            raise ValueError(f"num_id must be in [1, {n}], got {num_id}")
        if method == "neglabel":
            if not 1 <= groups <= n - num_id:
                raise ValueError(f"groups must be in [1, {n - num_id}] (the number of negatives), got {groups}")
            m = (n - num_id) // groups
            kept = num_id + groups * m
        else:
            groups, m, kept = 1, 0, num_id
        from fastood.ops._dispatch import check_temperature

        temperature = check_temperature("temperature", temperature)  # 1/τ finite in fp32, as the ops require
        self.method, self.num_id, self.groups, self.per_group = method, int(num_id), int(groups), int(m)
        self.temperature = float(temperature)
        self.register_buffer("bank", bank[:kept].detach().float().contiguous().clone())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        f = features.float()
        k = self.num_id
        # divide by the row's max-abs first: ||f||² then neither overflows nor underflows in fp32
        # (features of any magnitude give the cosines of f; an all-zero row stays NaN → refused by the runtime)
        f = f / f.abs().amax(dim=1, keepdim=True)
        row_scale = (1.0 / self.temperature) * torch.rsqrt((f * f).sum(dim=1, keepdim=True))  # (B, 1)
        logits = torch.matmul(f, self.bank.t()) * row_scale  # (B, N) fp32
        id_logits = logits[:, :k]
        lse_id, max_id = _stable_lse(id_logits, 1)
        pred = torch.argmax(id_logits, dim=1)
        if self.method == "mcm":
            return torch.exp(max_id - lse_id), pred
        neg = logits[:, k:].reshape(-1, self.groups, self.per_group)
        lse_g, _ = _stable_lse(neg, 2)  # (B, G)
        score = torch.sigmoid(lse_id.unsqueeze(1) - lse_g).mean(dim=1)
        return score, pred


class FusedHead(StandardHead):
    """Same math as :class:`StandardHead`, written as one ``fastood`` custom node on export.

    Eager execution calls the fused ops (``fastood.neglabel_score`` / ``mcm_score``),
    so a graph with this head is also a runnable torch reference. The ONNX
    exporter maps the call to the custom node (:mod:`fastood.export.onnx_export`).
    """

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        from fastood.export.onnx_export import fused_head_call

        return fused_head_call(features, self.bank, self.method, self.num_id, self.groups, self.temperature)


class Fp32LayerNorm(nn.Module):
    """LayerNorm computed in fp32 with fp32 parameters, output cast back to the input dtype.

    Used when the encoder is exported in fp16: the mean/variance of a ViT's
    residual stream overflow or lose precision in fp16 (TensorRT warns about it).
    """

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.normalized_shape = tuple(ln.normalized_shape)
        self.eps = float(ln.eps)
        self.weight = None if ln.weight is None else nn.Parameter(ln.weight.detach().float().clone(), requires_grad=False)
        self.bias = None if ln.bias is None else nn.Parameter(ln.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.nn.functional.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.to(x.dtype)


def _fp16_encoder(encoder: nn.Module) -> nn.Module:
    """A half-precision copy of ``encoder`` whose LayerNorms stay fp32."""
    enc = copy.deepcopy(encoder).half()

    def swap(mod: nn.Module) -> None:
        for name, child in mod.named_children():
            if isinstance(child, nn.LayerNorm):
                setattr(mod, name, Fp32LayerNorm(child))
            else:
                swap(child)

    if isinstance(enc, nn.LayerNorm):
        return Fp32LayerNorm(enc)
    swap(enc)
    return enc


class _EncodeImage(nn.Module):
    """``model.encode_image`` for models without a ``visual`` tower attribute."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)


class DetectorGraph(nn.Module):
    """``pixels (B,3,H,W) float32 → (score (B,) float32, pred (B,) int64)``.

    Args:
        encoder: maps preprocessed pixels to (B, D) image features (open_clip ``model.visual``).
        head: :class:`StandardHead` or :class:`FusedHead`.
        fp16: run ``encoder`` in half precision (input cast inside the graph, so the
            graph input stays float32); the head is fp32 regardless.
    """

    def __init__(self, encoder: nn.Module, head: StandardHead, *, fp16: bool = False) -> None:
        super().__init__()
        self.fp16 = bool(fp16)
        if fp16:
            encoder = _fp16_encoder(encoder)
        elif any(p.dtype != torch.float32 for p in encoder.parameters()):
            encoder = copy.deepcopy(encoder).float()  # e.g. a model loaded with precision="fp16": export fp32
        self.encoder = encoder
        self.head = head

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = pixels.half() if self.fp16 else pixels.float()
        features = self.encoder(x)
        if isinstance(features, (tuple, list)):  # towers configured with output_tokens
            features = features[0]
        return self.head(features)


def image_encoder(model: nn.Module) -> nn.Module:
    """The image tower of an open_clip model (``model.visual``), else a wrapper of ``encode_image``."""
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module):
        return visual
    if hasattr(model, "encode_image"):
        return _EncodeImage(model)
    raise TypeError(f"cannot find an image encoder on {type(model).__name__}: expected .visual or .encode_image")


def build_graph(
    model: nn.Module,
    bank: Tensor,
    *,
    method: str,
    num_id: int,
    groups: int,
    temperature: float,
    head: str = "standard",
    fp16: bool = False,
) -> DetectorGraph:
    """The exportable module for an open_clip ``model`` and a bank (CPU, eval mode)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    cls = FusedHead if head == "fused" else StandardHead
    h = cls(bank.detach().cpu(), num_id, groups, temperature, method)
    enc = image_encoder(model)
    device = next(iter(enc.parameters()), torch.empty(0)).device
    graph = DetectorGraph(enc, h.to(device), fp16=fp16).eval()
    return graph

"""Runtimes for exported detectors: the shared front end and the onnxruntime back end.

:class:`ExportedDetector` gives an exported model the detectors' scoring contract
(``score(images)``, ``predict(images)``, ``outlier_score``, ``calibrate``) with
no Python model code: images go through :func:`fastood.images.iter_image_batches`
with a preprocess rebuilt from the manifest (:func:`fastood.images.make_preprocess`),
and the back end runs ``pixels (B,3,H,W) f32 → score (B,) f32, pred (B,) int64``
in chunks of at most ``manifest["batch"]["max"]`` rows.

:class:`OrtDetector` runs the ONNX file with onnxruntime. The providers asked for
and the providers the session really uses can differ (onnxruntime drops a GPU
provider whose libraries fail to load); :attr:`OrtDetector.providers` holds
``session.get_providers()`` and asking for ``"cuda"`` explicitly raises when
CUDA is not among them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["ExportedDetector", "OrtDetector", "resolve_ort_providers"]


class ExportedDetector:
    """Scoring front end shared by the onnxruntime and TensorRT runtimes.

    Attributes (from the manifest): ``name`` (method), ``classes``, ``num_id``,
    ``groups``, ``temperature``, ``threshold`` (``is_ood = score < threshold``;
    settable, or set by :meth:`calibrate`), ``manifest``, ``model_path``,
    ``preprocess`` (PIL → tensor), ``batch_size``.
    """

    backend: str = "?"

    def __init__(self, manifest: dict[str, Any], model_path: Path, *, batch_size: int | None = None) -> None:
        from fastood.images import make_preprocess

        self.manifest = manifest
        self.model_path = Path(model_path)
        self.name: str = manifest["method"]
        self.classes: list[str] = list(manifest["classes"])
        self.num_id: int = int(manifest["num_id"])
        self.groups: int = int(manifest["groups"])
        self.temperature: float = float(manifest["temperature"])
        self.threshold: float | None = None if manifest["threshold"] is None else float(manifest["threshold"])
        pre = manifest["preprocess"]
        self.image_size: tuple[int, int] = (int(pre["image_size"][0]), int(pre["image_size"][1]))
        self.preprocess = make_preprocess(
            self.image_size, mean=pre["mean"], std=pre["std"], interpolation=pre["interpolation"],
            resize_mode=pre.get("resize_mode", "shortest"),
        )
        self.max_batch = int(manifest["batch"]["max"])
        if batch_size is None:
            batch_size = int(manifest["batch"]["opt"])
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = min(batch_size, self.max_batch)

    # ------------------------------------------------------------------ back end
    def _run(self, pixels: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``(score, pred)`` for preprocessed pixels (B, 3, H, W), chunked to the model's batch range.

        Non-finite pixels raise ``ValueError`` (as the torch detectors do for non-finite
        features), and so does a non-finite score: a NaN is never returned.
        """
        if not isinstance(pixels, Tensor):
            raise TypeError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
        if pixels.dim() != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != self.image_size:
            raise ValueError(
                f"pixels must be (B, 3, {self.image_size[0]}, {self.image_size[1]}) for this model, got {tuple(pixels.shape)}"
            )
        if pixels.shape[0] == 0:
            raise ValueError("pixels is an empty batch")
        if not pixels.dtype.is_floating_point:
            raise TypeError(f"pixels must be preprocessed floating point input, got {pixels.dtype}")
        finite = torch.isfinite(pixels.reshape(pixels.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):  # the torch detectors' contract: ValueError, never a NaN score
            raise ValueError(f"pixels has non-finite values (first in image {int(torch.nonzero(~finite)[0, 0])})")
        scores, preds = [], []
        for i in range(0, pixels.shape[0], self.max_batch):
            s, p = self._run(pixels[i : i + self.max_batch].float().contiguous())
            scores.append(s)
            preds.append(p)
        score = torch.cat(scores)
        bad = ~torch.isfinite(score)
        if bool(bad.any()):  # e.g. an fp16 encoder overflowing: say so instead of returning NaN
            raise ValueError(f"the exported model gave a non-finite score for image {int(torch.nonzero(bad)[0, 0])} "
                             "(finite input): its image features overflowed")
        return score, torch.cat(preds)

    # ------------------------------------------------------------------ contract
    def _iterate(self, images: Any, *, batch_size: int | None = None, **kw: Any):
        from fastood.detectors.base import check_array_input
        from fastood.images import iter_image_batches

        check_array_input(images)
        for batch in iter_image_batches(images, self.preprocess, batch_size=batch_size or self.batch_size, **kw):
            s, p = self.run(batch.pixels)
            yield s, p, batch.names

    def _collect(self, images: Any, **kw: Any) -> tuple[Tensor, Tensor, list[str]]:
        scores, preds, names = [], [], []
        for s, p, n in self._iterate(images, **kw):
            scores.append(s.cpu())
            preds.append(p.cpu())
            names.extend(n)
        if not scores:
            raise ValueError("no images to process: the input was empty"
                             + (" (every file was unreadable and skipped)" if kw.get("skipped") else ""))
        return torch.cat(scores).float(), torch.cat(preds).long(), names

    def score(self, images: Any, **kw: Any) -> Tensor:
        """(B,) float32 on the CPU, higher = more in-distribution.

        ``images``: anything :func:`fastood.images.iter_image_batches` accepts; keyword
        arguments (``batch_size``, ``on_error``, ``skipped``, ``progress``,
        ``num_workers``) go to it.
        """
        return self._collect(images, **kw)[0]

    def predict(self, images: Any, **kw: Any):
        """:class:`fastood.detectors.Prediction`: ID labels, scores, ``is_ood`` (with a threshold), names."""
        from fastood.detectors.base import Prediction

        scores, preds, names = self._collect(images, **kw)
        is_ood = None if self.threshold is None else scores < self.threshold
        return Prediction(labels=preds, scores=scores, is_ood=is_ood, names=names)

    def outlier_score(self, images: Any, **kw: Any) -> Tensor:
        """``-score`` (higher = more out-of-distribution)."""
        return -self.score(images, **kw)

    def calibrate(self, id_images_or_scores: Any, tpr: float = 0.95, **kw: Any) -> float:
        """Set ``threshold`` so that a fraction ≥ ``tpr`` of the ID scores is ≥ it.

        The ``⌈tpr·n⌉``-th largest ID score (:func:`fastood.detectors.threshold_at_tpr`),
        as the torch detectors do. Accepts a 1-D tensor / list of scores, or images.
        """
        from fastood.detectors.base import threshold_at_tpr

        x = id_images_or_scores
        if isinstance(x, (list, tuple)) and x and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
            x = torch.tensor(x, dtype=torch.float64)
        if isinstance(x, Tensor) and x.dim() == 1:
            scores = x if x.dtype.is_floating_point else x.double()
        else:
            scores = self.score(x, **kw)
        self.threshold = threshold_at_tpr(scores, tpr)
        return self.threshold

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method={self.name!r}, classes={self.num_id}, head={self.manifest['head']!r}, "
                f"precision={self.manifest['precision']!r}, backend={self.backend!r}, model={str(self.model_path)!r})")


# --------------------------------------------------------------------------- onnxruntime
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_ort_providers(provider: str, available: list[str]) -> list[str]:
    """onnxruntime provider list for ``provider`` (``"auto"``, ``"cpu"``, ``"cuda"`` or a provider name)."""
    if provider == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    name = _ALIASES.get(provider, provider)
    if name not in available:
        raise ValueError(
            f"onnxruntime provider {provider!r} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}); for CUDA install onnxruntime-gpu (fastood[onnx-gpu])"
        )
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


class OrtDetector(ExportedDetector):
    """An exported detector run by onnxruntime.

    Args:
        manifest, model_path: from :func:`fastood.export.load` (already verified).
        provider: ``"auto"`` (CUDA when onnxruntime has it, else CPU), ``"cpu"``,
            ``"cuda"``, or an onnxruntime provider name.
        threads: intra-op threads (onnxruntime's default when ``None``).
        batch_size: images per run (default: the manifest's optimal batch).
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        model_path: Path,
        *,
        provider: str = "auto",
        threads: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("onnxruntime is not installed: pip install 'fastood[onnx]' (or fastood[onnx-gpu])") from exc
        if manifest["head"] == "fused":
            raise ValueError(
                f"{str(model_path)!r} has the fused head (one fastood::SegmentLSEScore node) that only the TensorRT "
                "plugin implements: load it with provider='tensorrt', or export with head='standard' for onnxruntime"
            )
        super().__init__(manifest, model_path, batch_size=batch_size)
        requested = resolve_ort_providers(provider, ort.get_available_providers())
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=requested)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
            raise RuntimeError(f"onnxruntime cannot load {str(model_path)!r}: {exc}") from exc
        self.providers: list[str] = list(self.session.get_providers())
        if requested[0] != "CPUExecutionProvider" and requested[0] not in self.providers and provider != "auto":
            raise RuntimeError(
                f"onnxruntime did not enable {requested[0]} (the session runs on {self.providers}): "
                "check the CUDA / cuDNN libraries onnxruntime-gpu needs"
            )
        self.provider = self.providers[0]
        self.backend = f"onnxruntime:{self.provider}"
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        want_in, want_out = manifest["input"]["name"], list(manifest["outputs"])
        if names_in != [want_in] or sorted(names_out) != sorted(want_out):
            raise RuntimeError(
                f"{str(model_path)!r} has inputs {names_in} / outputs {names_out} but its manifest says "
                f"{[want_in]} / {want_out}: the model and the manifest do not belong together"
            )
        self._input, self._outputs = want_in, ["score", "pred"]

    def _run(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = pixels.detach().cpu().numpy()
        score, pred = self.session.run(self._outputs, {self._input: x})
        return torch.from_numpy(score), torch.from_numpy(pred)

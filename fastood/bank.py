"""TextBank: unit-norm label embeddings in the kernels' layout, with provenance and a disk cache.

Layout (what :func:`fastood.ops.neglabel_score` consumes)::

    rows [0, K)          ID label embeddings, in class order
    rows [K, K + G·m)    negatives, permuted, G contiguous groups of m
                         (the NegLabel rule drops the last M mod G mined negatives
                         *before* permuting)

A bank file is one ``.safetensors`` file: the ``embeddings`` tensor plus a JSON
metadata header (labels, layout, what produced it, and a sha256 over the
embedding bytes *and* the header: ``id_labels``, ``neg_labels``, ``groups``,
``meta`` — see :func:`bank_digest`). Writes are atomic (temp file +
``os.replace`` in the same directory); a load checks the header's shape and types,
verifies the checksum (an edited label, group count or metadata entry fails it,
like an edited embedding), shapes and unit norms, and — through
:func:`cached_bank` — that the metadata matches the request. Any failure is a
:class:`BankError`; the cache rebuilds such a file with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["TextBank", "BankError", "group_permutation", "cache_dir", "cached_bank", "request_key", "bank_digest"]

#: 2: the checksum covers the header (labels, groups, meta) as well as the embeddings
FORMAT_VERSION = 2
UNIT_NORM_TOL = 1e-3


class BankError(ValueError):
    """A bank file is corrupt, inconsistent, or does not match what was asked for."""


def _sha256_tensor(t: Tensor) -> str:
    t = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists, keys → strings, others → ``str``)."""
    return json.loads(json.dumps(obj, default=str))


def bank_digest(embeddings: Tensor, id_labels: Sequence[str], neg_labels: Sequence[str], groups: int,
                meta: dict[str, Any]) -> str:
    """The bank file's checksum: sha256 over the embedding bytes and the canonical JSON of the header.

    ``sha256("fastood.TextBank/2" ‖ sha256(embedding bytes) ‖ json(id_labels, neg_labels, groups, meta))``
    with sorted keys and compact separators, ``meta`` first put through a JSON round trip,
    so the digest written equals the digest recomputed from the file.
    """
    header = _canonical({"id_labels": list(id_labels), "neg_labels": list(neg_labels), "groups": groups, "meta": meta})
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    h = hashlib.sha256(f"fastood.TextBank/{FORMAT_VERSION}\0{_sha256_tensor(embeddings)}\0".encode())
    h.update(blob.encode())
    return h.hexdigest()


def _check_header(header: Any, where: str) -> dict[str, Any]:
    """The header's keys and types, as :meth:`TextBank.save` writes them; :class:`BankError` otherwise."""
    if not isinstance(header, dict):
        raise BankError(f"bank file {where} has malformed metadata: a {type(header).__name__}, not a JSON object")
    if header.get("format") != "fastood.TextBank":
        raise BankError(f"bank file {where} is not a fastood bank (format {header.get('format')!r})")
    if header.get("version") != FORMAT_VERSION:
        raise BankError(f"bank file {where} has version {header.get('version')!r}; this fastood reads version "
                        f"{FORMAT_VERSION} (whose checksum covers the labels and metadata too): rebuild the bank")
    kinds = {"id_labels": list, "neg_labels": list, "groups": int, "meta": dict, "sha256": str}
    for key, kind in kinds.items():
        if key not in header:
            raise BankError(f"bank file {where} has malformed metadata: the key {key!r} is missing")
        value = header[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BankError(f"bank file {where} has malformed metadata: {key!r} must be a {kind.__name__}, "
                            f"got {type(value).__name__}")
    for key in ("id_labels", "neg_labels"):
        bad = next((v for v in header[key] if not isinstance(v, str)), None)
        if bad is not None:
            raise BankError(f"bank file {where} has malformed metadata: {key!r} must hold strings, got {bad!r}")
    return header


def group_permutation(num: int, *, seed: int | None = 0, generator: torch.Generator | None = None) -> Tensor:
    """The seeded permutation of the kept negatives (``torch.randperm`` on a CPU generator).

    The NegLabel reference draws it with torch's CUDA generator; pass that
    permutation explicitly (``permutation=``) for bit-parity with it.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return torch.randperm(num, generator=generator)


@dataclass
class TextBank:
    """Unit-norm text embeddings ``[ID | negatives in G groups]`` and where they came from.

    Attributes:
        embeddings: (K + G·m, D) float32, rows unit-norm.
        id_labels: the K ID class names, in order.
        neg_labels: the G·m negative words, in layout order (after permutation).
        groups: G.
        meta: provenance (model name, text-weights hash, corpus / prompt hashes,
            mining parameters, seed, permutation hash, …); JSON-serialisable.
    """

    embeddings: Tensor
    id_labels: list[str]
    neg_labels: list[str]
    groups: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e = self.embeddings
        if not isinstance(e, Tensor) or e.dim() != 2 or not e.dtype.is_floating_point:
            raise BankError(f"embeddings must be a 2-D floating tensor, got {getattr(e, 'shape', type(e))}")
        self.embeddings = e = e.detach().float().contiguous()
        k, m = len(self.id_labels), len(self.neg_labels)
        if k < 1:
            raise BankError("a bank needs at least one ID label")
        if e.shape[0] != k + m:
            raise BankError(f"embeddings has {e.shape[0]} rows but there are {k} ID + {m} negative labels")
        if self.groups < 1 or (m and m % self.groups):
            raise BankError(f"groups={self.groups} must be >= 1 and divide the {m} negatives")
        if not torch.isfinite(e).all():
            raise BankError("embeddings contain non-finite values")
        norms = e.norm(dim=1)
        if (norms - 1).abs().max().item() > UNIT_NORM_TOL:
            bad = int((norms - 1).abs().argmax())
            raise BankError(f"embeddings must have unit-norm rows; row {bad} has norm {norms[bad].item():.4f}")

    # ------------------------------------------------------------------ layout
    @property
    def num_id(self) -> int:
        return len(self.id_labels)

    @property
    def num_neg(self) -> int:
        return len(self.neg_labels)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def id_embeddings(self) -> Tensor:
        return self.embeddings[: self.num_id]

    @property
    def offsets(self) -> list[int]:
        """Segment offsets ``[0, K, K+m, …, K+G·m]`` for :func:`fastood.ops.segment_lse`."""
        m = self.num_neg // self.groups if self.num_neg else 0
        return [0, self.num_id] + [self.num_id + (g + 1) * m for g in range(self.groups if m else 0)]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Tensor:
        """The embeddings on ``device`` (and ``dtype``) for scoring."""
        return self.embeddings.to(device=device, dtype=dtype or self.embeddings.dtype)

    @classmethod
    def from_mined(
        cls,
        id_emb: Tensor,
        id_labels: Sequence[str],
        neg_emb: Tensor,
        neg_labels: Sequence[str],
        *,
        groups: int = 100,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        permutation: Sequence[int] | Tensor | None = None,
        meta: dict[str, Any] | None = None,
    ) -> "TextBank":
        """Apply NegLabel's grouping rule to mined negatives (in mining order).

        Drops the last ``M mod G`` negatives, then permutes the rest with
        ``permutation`` if given (a permutation of ``range(G·m)``) or else a
        seeded one (``generator`` wins over ``seed``).
        """
        if neg_emb.shape[0] != len(neg_labels):
            raise BankError(f"neg_emb has {neg_emb.shape[0]} rows but {len(neg_labels)} labels were given")
        if not isinstance(groups, int) or groups < 1 or groups > max(1, len(neg_labels)):
            raise BankError(f"groups must be an int in [1, {len(neg_labels)}], got {groups}")
        kept = (len(neg_labels) // groups) * groups
        if permutation is None:
            perm = group_permutation(kept, seed=seed, generator=generator)
            how = {"permutation": "seeded", "seed": seed if generator is None else "generator"}
        else:
            perm = torch.as_tensor(permutation, dtype=torch.int64).flatten()
            if perm.numel() != kept or not torch.equal(perm.sort().values, torch.arange(kept)):
                raise BankError(f"permutation must be a permutation of range({kept}) (the kept negatives)")
            how = {"permutation": "explicit"}
        how["permutation_sha256"] = _sha256_tensor(perm)
        emb = torch.cat([id_emb.float(), neg_emb[:kept][perm].float()])
        labels = [neg_labels[i] for i in perm.tolist()]
        return cls(emb, list(id_labels), labels, groups=groups, meta={**(meta or {}), **how, "dropped": len(neg_labels) - kept})

    # --------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (``.safetensors``)."""
        from safetensors.torch import save_file

        path = Path(path).expanduser()
        header = {
            "format": "fastood.TextBank",
            "version": FORMAT_VERSION,
            "id_labels": self.id_labels,
            "neg_labels": self.neg_labels,
            "groups": self.groups,
            "meta": self.meta,
            "sha256": bank_digest(self.embeddings, self.id_labels, self.neg_labels, self.groups, self.meta),
        }
        from fastood._io import atomic_write  # the one atomic writer: temp + fsync + rename, umask permissions

        started = []

        def write(tmp: str) -> None:
            started.append(tmp)
            save_file({"embeddings": self.embeddings}, tmp, metadata={"fastood": json.dumps(header)})

        try:
            return atomic_write(path, write)
        except OSError as exc:
            if started:  # the folder was fine; the write itself failed (disk full, …): as raised
                raise
            raise BankError(f"cannot write the bank to {str(path.parent)!r}: {exc.strerror or exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "TextBank":
        """Read and verify a bank file (checksum, layout, unit norms). Raises :class:`BankError`."""
        from safetensors import safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"bank file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw = (f.metadata() or {}).get("fastood")
                emb = f.get_tensor("embeddings")
        except Exception as exc:  # safetensors raises its own error types on truncation/garbage
            raise BankError(f"bank file {str(path)!r} is corrupt or not a safetensors file: {exc}") from exc
        if raw is None:
            raise BankError(f"{str(path)!r} is a safetensors file but not a fastood bank (no 'fastood' metadata)")
        try:
            header = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BankError(f"bank file {str(path)!r} has corrupt metadata: {exc}") from exc
        header = _check_header(header, repr(str(path)))
        if bank_digest(emb, header["id_labels"], header["neg_labels"], header["groups"], header["meta"]) != header["sha256"]:
            raise BankError(f"bank file {str(path)!r} failed its checksum: the embeddings, labels, groups or "
                            "metadata were modified or corrupted")
        bank = cls(emb, header["id_labels"], header["neg_labels"], groups=header["groups"], meta=header["meta"])
        bank.embeddings = bank.embeddings.to(device)
        return bank


# ---------------------------------------------------------------------- cache
def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$FASTOOD_CACHE``, else ``~/.cache/fastood``."""
    if path is not None:
        return Path(path).expanduser()
    return Path(os.environ.get("FASTOOD_CACHE") or Path.home() / ".cache" / "fastood")


def request_key(request: dict[str, Any]) -> str:
    """A stable key for everything that determines a bank's contents."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_bank(
    request: dict[str, Any],
    build: Callable[[], TextBank],
    *,
    directory: str | os.PathLike | None = None,
    on_mismatch: str = "rebuild",
    device: str | torch.device = "cpu",
) -> TextBank:
    """Load the bank for ``request`` from the cache, or build and store it.

    ``request`` (JSON-serialisable) is stored in the bank's ``meta["request"]``
    and compared on load. A corrupt file, or one whose request differs, is
    rebuilt (``on_mismatch="rebuild"``, with a warning) or raises
    :class:`BankError` (``on_mismatch="error"``).
    """
    if on_mismatch not in ("rebuild", "error"):
        raise ValueError(f"on_mismatch must be 'rebuild' or 'error', got {on_mismatch!r}")
    request = json.loads(json.dumps(request, sort_keys=True, default=str))  # canonical, JSON-typed
    path = cache_dir(directory) / "banks" / f"{request_key(request)}.safetensors"
    if path.exists():
        try:
            bank = TextBank.load(path, device=device)
            if bank.meta.get("request") != request:
                raise BankError(f"cached bank {str(path)!r} was built for a different request")
            return bank
        except BankError as exc:
            if on_mismatch == "error":
                raise
            warnings.warn(f"{exc}; rebuilding it", stacklevel=2)
    bank = build()
    bank.meta = {**bank.meta, "request": request}
    bank.save(path)
    bank.embeddings = bank.embeddings.to(device)
    return bank

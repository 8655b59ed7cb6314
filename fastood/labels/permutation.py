"""Group permutations from files: bit-parity with another implementation's NegLabel groups.

NegLabel's grouping (shared/SPEC.md §1) drops the last ``M mod G`` mined negatives
and permutes the ``n_kept = G·⌊M/G⌋`` that remain before cutting them into G groups.
fastood's default draws that permutation as ``torch.randperm(n_kept)`` on a seed-0
*CPU* generator; the NegLabel reference draws it on CUDA
(``torch.randperm(n_kept, device="cuda")`` after seeding 0), which gives another
permutation. To reproduce its groups exactly, save the reference's permutation
(``torch.save(perm.cpu(), "perm.pt")``, ``np.save``, or one integer per line) and pass
it as ``permutation=`` to :class:`fastood.detectors.NegLabel` /
:func:`fastood.build_bank.build_bank`, or ``--permutation FILE`` to ``fastood mine`` /
``score`` / ``eval``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_permutation", "check_permutation"]

SUFFIXES = (".pt", ".pth", ".npy", ".txt")


def check_permutation(perm: object, n: int | None = None, *, what: str = "permutation") -> torch.Tensor:
    """``perm`` as a 1-D int64 CPU tensor, checked to be a permutation of ``range(len)`` (or ``range(n)``).

    Raises ``TypeError`` for non-integer values and ``ValueError`` for a wrong shape, a wrong
    length, repeated or out-of-range entries; messages say what was expected.
    """
    if isinstance(perm, torch.Tensor):
        t = perm.detach().cpu()
    else:
        arr = np.asarray(perm)
        if arr.dtype == object:
            raise TypeError(f"{what} must hold integers, got objects of type {type(arr.flat[0]).__name__}")
        t = torch.from_numpy(np.ascontiguousarray(arr)) if arr.size else torch.empty(0, dtype=torch.int64)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must hold integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{what} must be 1-D (one index per kept negative), got shape {tuple(t.shape)}")
    t = t.to(torch.int64)
    size = t.numel() if n is None else n
    if t.numel() != size:
        raise ValueError(f"{what} has {t.numel()} entries but must be a permutation of range({size}) "
                         "(one entry per kept negative)")
    if not torch.equal(torch.sort(t).values, torch.arange(size)):
        bad = "repeated" if torch.unique(t).numel() != t.numel() else "out-of-range"
        raise ValueError(f"{what} must be a permutation of range({size}) (each index once): it has {bad} entries")
    return t


def load_permutation(path: str | os.PathLike, n: int | None = None) -> torch.Tensor:
    """Read a permutation from ``.pt`` / ``.pth`` (``torch.load(weights_only=True)``: a tensor, a list
    of ints, or a dict with a ``"permutation"`` entry), ``.npy`` (``allow_pickle=False``) or ``.txt``
    (whitespace-separated integers), and check it with :func:`check_permutation`."""
    p = Path(path).expanduser()
    what = f"permutation file {str(p)!r}"
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{what}: expected a .pt/.pth (torch.save), .npy (numpy.save) or .txt (integers) file, "
                         f"got suffix {p.suffix!r}")
    if not p.is_file():
        raise FileNotFoundError(f"{what} does not exist")
    try:
        if suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                if "permutation" not in obj:
                    raise ValueError(f"the dict has no 'permutation' entry (keys: {sorted(map(str, obj))[:5]})")
                obj = obj["permutation"]
        elif suffix == ".npy":
            obj = np.load(p, allow_pickle=False)
        else:
            text = p.read_text().split()
            try:
                obj = np.array([int(tok) for tok in text], dtype=np.int64)
            except ValueError as exc:
                raise ValueError(f"expected whitespace-separated integers ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: {exc}") from None
    except pickle.UnpicklingError as exc:  # code in the pickle: refused, without torch's "weights_only=False" advice
        from fastood.models import pickle_refusal_reason

        raise ValueError(f"{what}: cannot be read: {pickle_refusal_reason(exc)}") from None
    except Exception as exc:  # corrupt file, …
        raise ValueError(f"{what}: cannot be read ({type(exc).__name__}: {exc})") from None
    return check_permutation(obj, n, what=what)

r"""WebDataset tar shards as an image source for ``fastood score`` and the detectors.

Filtering a web-scale collection means reading shards such as ``shards/{000000..000099}.tar``
(img2dataset's output). Read through the `webdataset <https://github.com/webdataset/webdataset>`_
package:

* **specs**: local paths, brace patterns (``{000000..000099}``, ``{a,b}``), several specs; each
  expanded with braceexpand; missing local shards are an error naming them.
* **samples**: a sample is the group of tar members sharing a key; its image is the first member
  whose extension is an image extension (``jpg jpeg png webp bmp gif tif tiff``, in that order);
  its **key** (``__key__``) is the row id (the ``path`` column of ``fastood score``'s output).
  Keys should be unique across shards (img2dataset's are).
* **corrupt samples** (undecodable image bytes, no image member) are reported and skipped like
  an unreadable file: ``(shard#key, reason)`` in ``skipped``; a shard that cannot be opened or read
  to the end is reported as ``(shard, reason)`` and, for ``fastood score``, left unfinished.
* **resumable per shard** (``fastood score``): a shard whose every sample was scored is recorded
  in ``OUT.shards.json`` and not opened again on a rerun; a shard interrupted half-way is read
  again and only its samples not yet in the output are scored.
* **ranks**: under torchrun, rank ``r`` of ``W`` takes whole shards ``r, r+W, r+2W, …`` of the
  expanded list (never part of a shard), so no two ranks decode the same tar.

Python::

    from fastood.shards import Shards
    scores = detector.score(Shards("shards/{000000..000009}.tar"), on_error="skip", skipped=bad)

``Shards`` plugs into :func:`fastood.images.iter_image_batches` (and so into every detector's
``score`` / ``predict`` / ``fit``): batches never mix shards and their ``names`` are the keys. A
shard spec string, or a list of them, given to those functions is read as ``Shards(spec)``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["Shards", "ShardBatch", "expand_shards", "is_shard_spec", "shards_for_rank", "iter_shard_samples",
           "iter_shard_batches", "score_shards"]

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_REMOTE = ("http://", "https://", "pipe:", "gs://", "s3://")


def _require_webdataset():
    try:
        import webdataset
    except ImportError as exc:
        raise ImportError("reading WebDataset shards needs the webdataset package: pip install webdataset") from exc
    return webdataset


def is_shard_spec(spec: Any) -> bool:
    """True for a string naming tar shards: ending in ``.tar`` / ``.tar.gz`` / ``.tgz`` (brace patterns allowed)."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).lower().endswith(SHARD_SUFFIXES)


def expand_shards(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Brace-expand ``specs`` into shard URLs (order kept, duplicates dropped).

    Raises ValueError for a spec that is not a tar shard, a malformed brace pattern, or local
    shards that do not exist (all of them named).
    """
    import braceexpand

    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    if not isinstance(specs, Sequence) or not specs:
        raise ValueError(f"shards must be a shard path / brace pattern or a non-empty list of them, got {specs!r}")
    out: list[str] = []
    seen: set[str] = set()
    missing: list[str] = []
    for spec in specs:
        if not is_shard_spec(spec):
            raise ValueError(f"{str(spec)!r} is not a WebDataset shard spec (expected a path or brace pattern ending "
                             f"in {', '.join(SHARD_SUFFIXES)})")
        try:
            urls = list(braceexpand.braceexpand(str(spec)))
        except Exception as exc:  # braceexpand raises its own UnbalancedBracesError
            raise ValueError(f"bad brace pattern {str(spec)!r}: {exc}") from None
        for url in urls:
            if url in seen:
                continue
            seen.add(url)
            if not url.startswith(_REMOTE) and not Path(url).is_file():
                missing.append(url)
            out.append(url)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} shard(s) not found: {shown}")
    return out


def shards_for_rank(shards: Sequence[str], rank: int, world: int) -> list[str]:
    """Rank ``rank``'s whole shards: ``shards[rank::world]``."""
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"need 0 <= rank < world, got rank={rank!r}, world={world!r}")
    return list(shards[rank::world])


def _keep_all(urls: Any) -> Any:
    return urls


def _decode(sample: dict) -> tuple[Any | None, str | None]:
    """(PIL RGB image, None) or (None, reason)."""
    from PIL import Image

    for ext in IMAGE_KEYS:
        data = sample.get(ext)
        if data is None:
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB"), None
        except Exception as exc:  # PIL raises many types for bad bytes
            return None, f"cannot decode {ext}: {type(exc).__name__}: {exc}"
    members = sorted(k for k in sample if not k.startswith("__"))
    return None, f"no image member (has {', '.join(members) or 'nothing'})"


def iter_shard_samples(shards: Sequence[str], *, on_error: str = "skip", skipped: list[tuple[str, str]] | None = None,
                       failed_shards: list[str] | None = None) -> Iterator[tuple[str, str, Any]]:
    """``(shard, key, PIL image)`` for every decodable sample of ``shards``, in order.

    ``on_error="skip"`` appends ``(shard#key, reason)`` to ``skipped`` for a corrupt sample and
    ``(shard, reason)`` for a shard that fails to open or read (its name also goes to
    ``failed_shards``); ``"raise"`` raises :class:`fastood.images.UnreadableImageError`.
    """
    wds = _require_webdataset()
    from fastood.images import UnreadableImageError

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    for shard in shards:
        errors: list[BaseException] = []

        def handler(exc: BaseException) -> bool:
            errors.append(exc)
            return False  # stop this shard: the rest of a broken tar cannot be trusted

        # fastood has already split the shards between ranks (whole shards): webdataset must not split again
        ds = wds.WebDataset(shard, shardshuffle=False, handler=handler, empty_check=False,
                            nodesplitter=_keep_all, workersplitter=_keep_all)
        for sample in ds:
            key = str(sample.get("__key__"))
            img, why = _decode(sample)
            if img is None:
                if on_error == "raise":
                    raise UnreadableImageError(f"{shard}#{key}", why or "unreadable")
                if skipped is not None:
                    skipped.append((f"{shard}#{key}", why or "unreadable"))
                continue
            yield shard, key, img
        if errors:
            reason = f"shard unreadable: {type(errors[0]).__name__}: {errors[0]}"
            if on_error == "raise":
                raise UnreadableImageError(shard, reason)
            if skipped is not None:
                skipped.append((shard, reason))
            if failed_shards is not None:
                failed_shards.append(shard)


@dataclass
class ShardBatch:
    """A batch of one shard: ``batch`` (pixels, names = keys) and whether it ends the shard."""

    shard: str
    batch: Any  # fastood.images.ImageBatch; may be empty when it only marks the end of a shard
    last: bool


def iter_shard_batches(shards: Sequence[str], preprocess: Callable[[Any], Tensor], *, batch_size: int = 64,
                       on_error: str = "skip", skipped: list[tuple[str, str]] | None = None,
                       failed_shards: list[str] | None = None, skip_keys: set[str] | None = None,
                       num_workers: int = 0) -> Iterator[ShardBatch]:
    """Preprocessed batches of ``shards``, never spanning two shards; the last of each has ``last=True``
    (an empty batch when the shard ended on a full one or held nothing scoreable).

    ``skip_keys``: keys already done (resuming a half-scored shard): not preprocessed again.
    ``num_workers`` > 0 preprocesses each batch in that many threads.
    """
    from fastood.images import ImageBatch

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if preprocess is None:
        raise ValueError("preprocess is required to turn decoded shard images into model input")
    pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    def make(items: list[tuple[str, Any]]) -> Any:
        if not items:
            return ImageBatch(torch.empty(0, 3, 1, 1), [], None)
        imgs = [im for _, im in items]
        pix = list(pool.map(preprocess, imgs)) if pool is not None else [preprocess(im) for im in imgs]
        return ImageBatch(torch.stack(pix).float(), [k for k, _ in items], None)

    try:
        for shard in shards:  # one shard at a time: a batch never spans two
            pending: list[tuple[str, Any]] = []
            for _, key, img in iter_shard_samples([shard], on_error=on_error, skipped=skipped,
                                                  failed_shards=failed_shards):
                if skip_keys is not None and key in skip_keys:
                    continue
                pending.append((key, img))
                if len(pending) == batch_size:
                    yield ShardBatch(shard, make(pending), False)
                    pending = []
            yield ShardBatch(shard, make(pending), True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


class Shards:
    """WebDataset shards as an image input for :func:`fastood.images.iter_image_batches` (and detectors).

    Args:
        specs: a shard path / brace pattern, or a list of them (see :func:`expand_shards`).
        rank, world: take only this rank's whole shards (default: all).
    """

    def __init__(self, specs: str | os.PathLike | Sequence[str | os.PathLike], *, rank: int = 0, world: int = 1):
        _require_webdataset()
        self.urls = shards_for_rank(expand_shards(specs), rank, world)

    def __repr__(self) -> str:
        return f"Shards({len(self.urls)} shard(s): {self.urls[0]} …)" if self.urls else "Shards(0 shards)"

    def __fastood_image_batches__(self, preprocess: Callable[[Any], Tensor], *, batch_size: int, on_error: str,
                                  skipped: list[tuple[str, str]] | None, progress: bool,
                                  num_workers: int) -> Iterator[Any]:
        """The hook :func:`fastood.images.iter_image_batches` calls: ImageBatches, names = sample keys."""
        from fastood.progress import progress as progress_bar

        bar = progress_bar(total=len(self.urls), desc="shards", unit="shard", disable=not progress, leave=False)
        try:
            for sb in iter_shard_batches(self.urls, preprocess, batch_size=batch_size, on_error=on_error,
                                         skipped=skipped, num_workers=num_workers):
                if len(sb.batch.names):
                    yield sb.batch
                if sb.last:
                    bar.update(1)
        finally:
            bar.close()


# ------------------------------------------------------------------------------ fastood score


def _done_shards_path(path: Path) -> Path:
    return path.with_name(path.name + ".shards.json")


def _read_done(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.get("done", {}).items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise SystemExit(f"fastood score: the shard record {str(path)!r} is unreadable ({exc}); pass --overwrite "
                         "to start again") from None


def score_shards(args: argparse.Namespace) -> int:
    """``fastood score SHARDS --out OUT``: score WebDataset shards (see the module docstring).

    Output rows are keyed by sample key; ``OUT.shards.json`` records the finished shards
    (``{"done": {shard: rows}}``) and a rerun skips them.
    """
    from fastood import cli
    from fastood import outputs as O

    out = Path(args.out)
    try:
        if O.output_format(out) == "parquet":
            O.require_pyarrow()
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"fastood score: --out {exc}")
    not_shards = [p for p in args.paths if not is_shard_spec(p)]
    if not_shards:
        raise SystemExit(f"fastood score: mix of WebDataset shards and other inputs ({not_shards[0]!r}); score "
                         "shards and image folders in separate runs")
    try:
        _require_webdataset()
        shards = expand_shards(args.paths)
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"fastood score: {exc}")
    cli._check_out_writable(out, "score")
    _, world, local_rank = cli._dist_env()
    device = args.device or cli._default_device(local_rank)
    dist = cli._Dist(device)
    rank = dist.rank
    try:
        meta_path = out.with_name(out.name + ".meta.json")
        rank_files = [O.rank_path(out, r) for r in range(world)] if world > 1 else []
        journal_file = rank_files[rank] if world > 1 else O.journal_path(out)
        record = _done_shards_path(out)
        partial = sorted({out, O.journal_path(out), *out.parent.glob(f"{out.stem}.rank*")})
        if args.overwrite and rank == 0:
            for f in {*partial, meta_path, record}:
                f.unlink(missing_ok=True)
        elif not args.overwrite:
            cli._check_resumable(out, meta_path, [p for p in partial if not p.name.endswith(".shards.json")])
        dist.barrier()
        det = cli._build_detector(args, classes=args.classes, device=device) if rank == 0 else None
        dist.barrier()
        if det is None:
            det = cli._build_detector(args, classes=args.classes, device=device)
        if getattr(det, "needs_fit", False):
            fit_skipped: list[tuple[str, str]] = []
            cli._fit_detector(det, args, fit_skipped)
        info = cli._run_info(args, det, args.classes)
        info["fit"] = args.fit
        info["input"] = "webdataset"
        cli._compare_run_info(meta_path, info)
        classes = getattr(det, "classes", None)
        columns = O.columns_for(getattr(det, "threshold", None) is not None)
        journal = cli._open_journal(journal_file, columns, meta_path, info, dist, rank)
        done = _read_done(record)
        for f in [journal_file, *rank_files]:
            done.update(_read_done(_done_shards_path(f)))
        mine = shards_for_rank(shards, rank, world)
        todo = [s for s in mine if s not in done]
        keys_done = journal.done()
        if out.exists() and out.resolve() != journal_file.resolve():
            keys_done |= {r["path"] for r in O.read_rows(out)}
        n_done = sum(dist.gather(len(mine) - len(todo)))
        if rank == 0:
            where = f" on {world} ranks (whole shards per rank)" if world > 1 else ""
            print(f"fastood score: {len(shards)} shard(s), {n_done} already finished, scoring "
                  f"{len(shards) - n_done}{where} with {info['method']} on {device}", file=sys.stderr)
        skipped: list[tuple[str, str]] = []
        failed: list[str] = []
        my_done: dict[str, int] = {}
        rows_in_shard: dict[str, int] = {}
        n_scored = 0
        t0 = time.perf_counter()
        from fastood.progress import progress as progress_bar

        bar = progress_bar(total=len(mine), initial=len(mine) - len(todo), desc="shards", unit="shard",
                           disable=args.quiet or rank != 0)
        my_record = _done_shards_path(journal_file)
        try:
            for sb in iter_shard_batches(todo, cli._preprocess_of(det), batch_size=args.batch_size, on_error="skip",
                                         skipped=skipped, failed_shards=failed, skip_keys=keys_done,
                                         num_workers=args.num_workers):
                batch = sb.batch
                if batch.names:
                    scores, preds, is_ood = cli._predict_batch(det, batch.pixels)
                    rows = []
                    for i, key in enumerate(batch.names):
                        p = int(preds[i]) if preds is not None else None
                        rows.append({"path": key, "score": float(scores[i]), "pred": p,
                                     "pred_label": classes[p] if classes is not None and p is not None
                                     and 0 <= p < len(classes) else None,
                                     "is_ood": bool(is_ood[i]) if is_ood is not None else None})
                    journal.append(rows)  # rows first, then the shard record: a crash between them re-reads the shard
                    n_scored += len(rows)
                    rows_in_shard[sb.shard] = rows_in_shard.get(sb.shard, 0) + len(rows)
                if sb.last:
                    if sb.shard not in failed:
                        my_done[sb.shard] = rows_in_shard.get(sb.shard, 0)
                        # the union: with a CSV/JSONL output this per-run record IS OUT.shards.json
                        O.write_json_atomic(my_record, {"done": {**done, **my_done}})
                    bar.update(1)
        finally:
            bar.close()
            journal.close()
        seconds = time.perf_counter() - t0
        all_skipped = [s for part in dist.gather(skipped) for s in part]
        all_done = {}
        for part in dist.gather(my_done):
            all_done.update(part)
        counts = dist.gather(n_scored)
        dist.barrier()
        if rank == 0:
            sources = rank_files if world > 1 else [journal_file]
            rows = O.finalize(out, sources, columns)
            done.update(all_done)
            O.write_json_atomic(record, {"done": done})
            for f in ([journal_file] if world == 1 and journal_file != out else []):
                f.unlink(missing_ok=True)
            for f in {journal_file, *rank_files} - {out}:  # per-run records, now merged into `record`
                _done_shards_path(f).unlink(missing_ok=True)
            cli._report_skipped(all_skipped)
            total = sum(counts)
            rate = f", {total / seconds:.1f} images/s" if total and seconds > 0 else ""
            n_failed = len(shards) - len(done)
            print(f"scored {total} new image(s) in {seconds:.1f} s{rate}; skipped {len(all_skipped)} unreadable "
                  f"sample(s)/shard(s); {len(done)}/{len(shards)} shard(s) finished"
                  + (f" ({n_failed} unfinished: rerun to retry)" if n_failed else "") + f"; wrote {out} "
                  f"({len(rows)} rows), {record}")
        dist.barrier()
    finally:
        dist.close()
    return 0

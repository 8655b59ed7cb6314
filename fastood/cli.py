"""The ``fastood`` command (also ``python -m fastood``).

Commands:

* ``fastood demo`` — the end-to-end job, offline: load a CLIP model (real weights from
  ``--pretrained`` / ``$FASTOOD_PRETRAINED``, else a small RANDOMLY initialised model),
  build the NegLabel bank, score the bundled sample images, print a table and the
  throughput. ``fastood demo --kernels`` (= ``fastood selfcheck``) is the kernel
  self-check on random embeddings.
* ``fastood score PATH...`` — score image files / directories into a CSV, JSON Lines or
  Parquet file; resumable; shards across ranks under ``torchrun``.
* ``fastood eval --id DIR --ood NAME=DIR ...`` — ID accuracy and FPR95 / AUROC / AUPR per
  OOD set, written as report.md, report.json and PNG plots.
* ``fastood mine`` — build and save a negative-label text bank.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch


#: largest |score − float64 score| the self-check accepts from a backend. Scores are means
#: of sigmoid(LSE_id − LSE_g) at τ = 0.01: LSE errors δ move a score by ≤ 2δ/4 = δ/2, and
#: fp32 accumulation keeps δ ≈ 100·√D·2⁻²⁴ ≈ 1.4e-4 at D = 512, so 1e-4 on the score has
#: margin while any wrong formula or bf16-accumulated GEMM (δ ~ 0.1) fails.
#: Measured: 1.0e-6 at D = 32, B = 64 (CPU backends).
SELFCHECK_BOUND = 1e-4


def _kernel_demo(args: argparse.Namespace) -> int:
    """Score random features against an ImageNet-1k + NegLabel-sized random bank with
    every available backend, check EACH against the float64 reference (max |error| ≤
    ``--bound``, default :data:`SELFCHECK_BOUND`), and print scores and throughput.

    Returns 0 when every backend that ran is within the bound, 1 otherwise (or when
    none ran)."""
    import fastood
    from fastood import reference as R

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    k, m, g, d, b = args.num_id, args.num_neg, args.groups, args.dim, args.batch
    print("fastood demo — kernel self-check on RANDOM embeddings (no model, no images)")
    print(f"bank: K={k} ID + {m} negatives, G={g} groups, D={d}; batch B={b}; device={device}")
    gen = torch.Generator().manual_seed(args.seed)
    bank = torch.nn.functional.normalize(torch.randn(k + m, d, generator=gen), dim=1)
    # half the images sit near an ID label (in-distribution), half near a negative
    anchors = torch.cat([bank[torch.randint(0, k, (b // 2,), generator=gen)], bank[torch.randint(k, k + m, (b - b // 2,), generator=gen)]])
    x = anchors + 0.03 * torch.randn(b, d, generator=gen)
    x, bank = x.to(device), bank.to(device)

    sample = torch.linspace(0, b - 1, min(b, 512)).long().to(device)  # ID-like and negative-like rows
    truth = R.neglabel_score(x[sample].double(), bank.double(), k, groups=g)
    bound = getattr(args, "bound", SELFCHECK_BOUND)
    print(f"each backend must be within {bound:.1e} of the float64 reference (max |score error|)")
    results = {}
    failed: list[str] = []
    for name, status in fastood.backends().items():
        if not status:
            print(f"  {name:<7} unavailable: {status.reason}")
            continue
        if device == "cpu" and name in ("triton", "cuda"):
            print(f"  {name:<7} skipped: CPU tensors (the Triton interpreter is for tests)")
            continue
        fn = lambda: fastood.neglabel_score(x, bank, k, groups=g, backend=name)  # noqa: E731
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.repeats
        err = (out[sample].double().cpu() - truth.cpu()).abs().max().item()
        results[name] = out
        within = err <= bound  # False for NaN too
        if not within:
            failed.append(name)
        # The cuda backend's kernels (fastood._C's path: sm90 AOT, portable AOT or CUDA C++).
        ran = ""
        if name == "cuda":
            from fastood.ops._cuda_segment_lse import last_path

            ran = f"  [{last_path()}]" if last_path() else ""
        print(f"  {name:<7} {dt * 1e3:8.2f} ms/batch  {b / dt:12,.0f} images/s  max |err| vs float64 = {err:.2e}"
              f"  {'ok' if within else f'FAIL (> {bound:.1e})'}{ran}")
    if not results:
        print("selfcheck FAILED: no backend could run")
        return 1
    first = next(iter(results.values()))
    spread = max((o - first).abs().max().item() for o in results.values())
    print(f"backends agree: {'yes' if spread < bound else 'NO'} (max spread {spread:.2e})")
    n_id = b // 2
    print(f"mean score: ID-like images {first[:n_id].mean().item():.4f}, negative-like images {first[n_id:].mean().item():.4f}")
    if failed:
        print(f"selfcheck FAILED: {', '.join(failed)} beyond {bound:.1e} of float64")
        return 1
    print(f"selfcheck passed: {len(results)} backend(s) within {bound:.1e} of float64")
    return 0


def _read_corpus_file(path: str):
    """A user corpus: one ``word<TAB>n|a`` per line (POS defaults to ``n``); '#' comments."""
    import numpy as np

    from fastood.labels import Corpus

    words, pos = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, _, p = line.partition("\t")
            p = p.strip() or "n"
            if p not in ("n", "a"):
                raise SystemExit(f"{path}:{lineno}: POS must be 'n' or 'a', got {p!r}")
            words.append(word.strip())
            pos.append(p)
    if not words:
        raise SystemExit(f"--corpus {path}: no words in the file")
    return Corpus(words=words, pos=np.array(pos), lexnames=np.array(["user"] * len(words)), name=path)


def _mine(args: argparse.Namespace) -> int:
    """Build a text bank (encode, mine, group) and write it as one .safetensors file."""
    import json
    import os

    from fastood.build_bank import build_bank
    from fastood.labels import load_corpus
    from fastood.models import load_clip

    pretrained = None if args.pretrained == "none" else args.pretrained
    if pretrained is None:
        print("WARNING: --pretrained none: the model has RANDOM weights; the bank is only good for testing",
              file=sys.stderr)
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--model-kwargs is not valid JSON: {exc}")
    clip = load_clip(args.model, pretrained if pretrained is not None else "", device=args.device, **kwargs)
    if pretrained is None:
        clip.pretrained = "none (random init)"
    corpus = None
    if args.corpus:
        corpus = _read_corpus_file(args.corpus) if os.path.isfile(args.corpus) else load_corpus(args.corpus)
    prototypes = None
    if args.method == "interneg":
        if not args.prototypes:
            raise SystemExit("--method interneg needs --prototypes FILE.safetensors (a 'prototypes' K×D tensor, "
                             "see fastood.labels.image_prototypes)")
        from safetensors.torch import load_file

        try:
            prototypes = load_file(args.prototypes)["prototypes"]
        except Exception as exc:  # missing key, corrupt file
            raise SystemExit(f"--prototypes {args.prototypes}: cannot read a 'prototypes' tensor ({exc})")
    from fastood.bank import BankError

    try:
        bank = build_bank(clip, args.classes, method=args.method, prototypes=prototypes, corpus=corpus,
                          percentile=args.percentile, ratio=args.ratio, num_negatives=args.num_negatives,
                          groups=args.groups, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                          permutation=_permutation_arg(args.permutation) if args.permutation else None,
                          mining_precision=args.mining_precision)
    except BankError as exc:  # e.g. a --permutation of the wrong length for the kept negatives
        raise SystemExit(f"fastood mine: {exc}")
    path = bank.save(args.out)
    print(f"wrote {path}: {bank.num_id} ID labels, {bank.num_neg} negatives in {bank.groups} groups "
          f"(method {args.method}, model {args.model}, mined {bank.meta['mining']['selected']} "
          f"of {bank.meta['mining']['candidates']} candidates)")
    return 0


# ============================================================================ shared options

def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_model_args(p: argparse.ArgumentParser, *, classes_default: str | None = "imagenet1k",
                    method_default: str = "neglabel") -> None:
    from fastood.models import DEFAULT_MODEL

    g = p.add_argument_group("detector")
    g.add_argument("--method", default=method_default,
                   help="detector: neglabel (default), mcm, knn, mahalanobis, rmd, msp/plp, interneg")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"open_clip architecture (default {DEFAULT_MODEL})")
    g.add_argument("--pretrained", default=None,
                   help="hub tag (needs network), local checkpoint file or open_clip directory; default "
                        "$FASTOOD_PRETRAINED, else 'openai'; 'none' = RANDOM weights (testing only)")
    g.add_argument("--model-kwargs", default=None, help="JSON of open_clip config overrides (embed_dim, vision_cfg, text_cfg)")
    g.add_argument("--interpolation", default=None, choices=["bicubic", "bilinear"],
                   help="image resize interpolation (bilinear = the NegLabel reference; open_clip default bicubic)")
    g.add_argument("--classes", default=classes_default,
                   help="ID class names: 'imagenet1k' or a file with one name per line" +
                        ("" if classes_default else " (default: the --id folder names)"))
    g.add_argument("--corpus", default=None,
                   help="negative-label candidates: a corpus preset (neglabel, csp, interneg) or a file of "
                        "'word<TAB>n|a' lines (default: the method's WordNet preset)")
    g.add_argument("--max-candidates", type=int, default=None,
                   help="use an evenly spaced subset of at most this many corpus words (faster bank build)")
    g.add_argument("--threshold", type=float, default=None, help="score threshold: is_ood = score < threshold")
    g.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra detector option (VALUE parsed as JSON, else a string), e.g. -o groups=100 "
                        "-o temperature=0.01; repeatable")
    g.add_argument("--cache", default=None, help="text-bank cache directory (default $FASTOOD_CACHE or ~/.cache/fastood)")
    g.add_argument("--permutation", default=None, metavar="FILE",
                   help="group permutation of the kept negatives for a built bank (neglabel, interneg): .pt "
                        "(torch.save), .npy or .txt of ints, a permutation of range(n_kept); e.g. the NegLabel "
                        "reference's CUDA draw (default: torch.randperm on a seed-0 CPU generator)")
    g.add_argument("--seed", type=int, default=0, help="seed of random initialisation with --pretrained none")
    r = p.add_argument_group("run")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when available)")
    r.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    r.add_argument("--num-workers", type=int, default=0, help="image decoding threads (default 0: decode in the main thread)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")


def _load_corpus_arg(spec: str | None, max_candidates: int | None, method: str, classes: Any):
    """The --corpus / --max-candidates corpus (None = the detector's default)."""
    if spec is None and max_candidates is None:
        return None
    import numpy as np

    from fastood.labels import load_corpus
    from fastood.labels.prompts import load_classnames

    if spec is not None and os.path.isfile(spec):
        corpus = _read_corpus_file(spec)
    else:
        preset = spec or ("interneg" if method == "interneg" else "csp" if method == "csp" else "neglabel")
        try:
            corpus = (load_corpus(preset, remove=load_classnames(classes)) if preset == "interneg"
                      else load_corpus(preset))
        except ValueError as exc:
            raise SystemExit(f"--corpus {spec}: {exc}")
    if max_candidates is not None:
        if max_candidates < 1:
            raise SystemExit(f"--max-candidates must be >= 1, got {max_candidates}")
        if max_candidates < len(corpus):
            keep = np.zeros(len(corpus), dtype=bool)
            keep[np.unique(np.linspace(0, len(corpus) - 1, max_candidates).round().astype(np.int64))] = True
            corpus = corpus.filter(keep)
    return corpus


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--option {item!r}: expected KEY=VALUE")
        opts[key.strip().replace("-", "_")] = _json_or_str(value)
    if args.threshold is not None:
        opts["threshold"] = args.threshold
    if args.cache is not None:
        opts["cache"] = args.cache
    if getattr(args, "permutation", None):
        opts["permutation"] = args.permutation  # the path; _build_detector loads it
    opts["batch_size"] = args.batch_size
    return opts


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if not args.model_kwargs:
        return {}
    try:
        kw = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--model-kwargs is not valid JSON: {exc}")
    if not isinstance(kw, dict):
        raise SystemExit("--model-kwargs must be a JSON object")
    return kw


def _build_detector(args: argparse.Namespace, *, classes: Any, device: str | None, clip=None):
    """fastood.load from the shared command-line options (SystemExit with a message on bad input)."""
    from fastood.api import is_random, load

    opts = _method_options(args)
    corpus = _load_corpus_arg(args.corpus, args.max_candidates, args.method.lower(), classes)
    if corpus is not None:
        opts["corpus"] = corpus
    from fastood.detectors import DETECTORS

    cls = DETECTORS.get(args.method.lower())
    params = _signature_params(cls) if cls is not None else set()
    if "permutation" in opts:
        if cls is not None and "permutation" not in params:
            raise SystemExit(f"--permutation: the {args.method!r} detector has no negative-label groups "
                             "(it applies to neglabel and interneg)")
        if isinstance(opts["permutation"], str):  # --permutation FILE (or -o permutation=FILE)
            opts["permutation"] = _permutation_arg(opts["permutation"])
    if "progress" not in opts and "progress" in params:
        opts["progress"] = not args.quiet  # bank building progress bars
    if "cache" in opts and cls is not None and "cache" not in params:
        del opts["cache"]  # --cache only concerns the text-bank detectors
    pretrained = args.pretrained
    if clip is None and is_random(pretrained):
        print(f"WARNING: --pretrained {pretrained}: {args.model} has RANDOM WEIGHTS; scores are meaningless",
              file=sys.stderr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM WEIGHTS.*")
        try:
            return load(args.method, model=args.model, pretrained=pretrained, classes=classes, device=device,
                        model_kwargs=_model_kwargs(args), interpolation=args.interpolation, seed=args.seed,
                        clip=clip, **opts)
        except (ValueError, TypeError, FileNotFoundError, PermissionError) as exc:
            raise SystemExit(f"fastood: cannot build the {args.method!r} detector: {exc}")


def _permutation_arg(path: str):
    """--permutation FILE as an int64 tensor (SystemExit with the loader's message on bad input)."""
    from fastood.labels import load_permutation

    try:
        return load_permutation(path)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise SystemExit(f"--permutation: {exc}")


def _signature_params(cls: type) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return set()


def _tensor_sha256(t: torch.Tensor) -> str:
    import hashlib

    t = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()


def _run_info(args: argparse.Namespace, det: Any, classes: Any) -> dict[str, Any]:
    """What produced a set of scores (written next to outputs, compared on resume)."""
    from fastood.api import RANDOM_TAG

    clip = getattr(det, "clip", None)
    pretrained = getattr(clip, "pretrained", args.pretrained)
    names = getattr(det, "classes", None)
    bank = getattr(det, "bank", None)
    return {
        "method": getattr(det, "name", args.method),
        "model": getattr(clip, "name", args.model),
        "pretrained": pretrained,
        "random_weights": pretrained == RANDOM_TAG,
        "model_kwargs": _model_kwargs(args),
        "interpolation": args.interpolation,
        "classes": classes if isinstance(classes, str) else list(classes) if classes is not None else None,
        "num_classes": len(names) if names is not None else None,
        "negatives": int(bank.num_neg) if bank is not None and hasattr(bank, "num_neg") else None,
        "bank_sha256": _tensor_sha256(bank.embeddings) if bank is not None and hasattr(bank, "embeddings") else None,
        "corpus": args.corpus,
        "max_candidates": args.max_candidates,
        "options": {k: v for k, v in _method_options(args).items() if k not in ("batch_size", "cache")},
        "threshold": getattr(det, "threshold", None),
    }


def _preprocess_of(det: Any):
    pre = getattr(det, "preprocess", None)
    if pre is None and getattr(det, "clip", None) is not None:
        pre = det.clip.preprocess
    return pre


def _predict_batch(det: Any, pixels: torch.Tensor):
    """Encode one preprocessed batch and score it: (scores, preds or None, is_ood or None) on the CPU."""
    with torch.no_grad():
        feats = det.encode_images(pixels.to(det.device, non_blocking=True))
    pred = det.predict_features(feats)
    scores = pred.scores.detach().float().cpu()
    labels = pred.labels.detach().cpu() if pred.labels is not None else None
    is_ood = pred.is_ood.detach().cpu() if pred.is_ood is not None else None
    return scores, labels, is_ood


def _bar(total: int, desc: str, quiet: bool, initial: int = 0):
    from fastood.progress import progress as progress_bar  # a tqdm bar on a terminal, plain lines in a log

    return progress_bar(total=total, initial=initial, desc=desc, unit="img", disable=quiet, dynamic_ncols=True)


def _report_skipped(skipped: list[tuple[str, str]], *, limit: int = 20) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
    for path, reason in skipped[:limit]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  … and {len(skipped) - limit} more", file=sys.stderr)


def _default_device(local_rank: int = 0) -> str:
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


# ============================================================================ fastood score

def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


class _Dist:
    """The process group of a torchrun launch (gloo on CPU, NCCL on CUDA); a no-op for 1 process."""

    def __init__(self, device: str) -> None:
        self.rank, self.world, self.local_rank = _dist_env()
        self.active = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if device.startswith("cuda") else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(torch.device(device))
                dist.init_process_group(backend=backend)
                self.active = True
            self.dist = dist

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active:
            self.dist.destroy_process_group()


def _list_files(paths: list[str], skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Sorted image files under ``paths``, one per image (two spellings of one file count once:
    the first in sorted order is kept); what the listing left out (special files, broken
    links, directory links) is appended to ``skipped``."""
    from fastood.images import scan_image_files
    from fastood.outputs import path_key

    try:
        files, bad = scan_image_files(paths)
    except (FileNotFoundError, TypeError) as exc:
        raise SystemExit(f"fastood: {exc}")
    if skipped is not None:
        skipped.extend(bad)
    out, seen = [], set()
    for f in sorted({str(f) for f in files}):
        k = path_key(f)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def _check_out_writable(out: Path, command: str, *, directory: bool = False) -> None:
    """Exit 2 with one line naming ``--out`` and the reason when it cannot be written.

    Run before the model and the bank are built, so a typo costs nothing: the folder is
    created if missing and a temporary file is created in it and removed again.
    """
    import tempfile

    folder = out if directory else out.parent
    problem = None
    if not directory and out.is_dir():
        problem = "it is a directory"
    elif directory and out.exists() and not out.is_dir():
        problem = "it exists and is not a directory"
    elif not directory and out.parent.exists() and not out.parent.is_dir():
        problem = f"{str(out.parent)!r} is not a directory"
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".fastood-write-check.", dir=folder)
            os.close(fd)
            os.unlink(tmp)
            if not directory and out.exists() and not os.access(out, os.W_OK):
                problem = "the existing file is not writable"
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem:
        print(f"fastood {command}: cannot write --out {str(out)!r}: {problem}", file=sys.stderr)
        raise SystemExit(2)


def _read_meta(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the run info in ``path``, "") or (None, why it could not be read)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(meta, dict) or "method" not in meta:
        return None, "is not a fastood run record"
    return meta, ""


def _check_resumable(out: Path, meta_path: Path, partial: list[Path]) -> None:
    """SystemExit unless the rows already under ``out`` can be resumed: they need a readable
    ``OUT.meta.json`` (else nothing says which settings made them, or that fastood did: a
    foreign file with the right header is not merged) and readable files."""
    from fastood import outputs as O

    existing = [f for f in partial if f.is_file() and f.stat().st_size > 0]
    if not existing:
        return
    meta, why = _read_meta(meta_path)
    if meta is None:
        raise SystemExit(f"fastood score: {str(existing[0])!r} holds rows but its run record {str(meta_path)!r} "
                         f"{why}: nothing says which settings made them. Pass --overwrite to start again, "
                         "or choose another --out.")
    for f in existing:
        try:
            if f == out:
                O.check_existing_output(f)
            else:
                O._read_text_rows(f, O.output_format(f), None)
        except ValueError as exc:
            raise SystemExit(f"fastood score: {exc}")


def _open_journal(journal_file: Path, columns: Any, meta_path: Path, info: dict[str, Any], dist: Any,
                  rank: int) -> Any:
    """Open (and check) this rank's row journal, then write the run record: the journal is
    opened first so that a rejected output file never gets a ``.meta.json`` beside it."""
    from fastood import outputs as O

    try:
        journal = O.RowJournal(journal_file, columns)
    except ValueError as exc:
        raise SystemExit(f"fastood score: {exc}")
    dist.barrier()
    if rank == 0:
        O.write_json_atomic(meta_path, info)
    return journal


def _compare_run_info(path: Path, info: dict[str, Any]) -> None:
    """SystemExit when an earlier run wrote ``path`` with different settings (or it is unreadable)."""
    if not path.exists():
        return
    old, why = _read_meta(path)
    if old is None:
        raise SystemExit(f"fastood score: the run record {str(path)!r} {why}. Pass --overwrite to start again, "
                         "or choose another --out.")
    new = json.loads(json.dumps(info, default=str))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if keys:
        diff = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
        raise SystemExit(f"fastood score: the existing output was made with other settings ({diff}). "
                         "Pass --overwrite to start again, or choose another --out.")


def _score(args: argparse.Namespace) -> int:
    from fastood import outputs as O
    from fastood.images import iter_image_batches
    from fastood.shards import is_shard_spec

    if any(is_shard_spec(p) for p in args.paths):  # WebDataset tars: resumable per shard, whole shards per rank
        from fastood.shards import score_shards

        return score_shards(args)

    out = Path(args.out)
    try:
        fmt = O.output_format(out)
        if fmt == "parquet":
            O.require_pyarrow()
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"fastood score: --out {exc}")
    _check_out_writable(out, "score")
    _, world, local_rank = _dist_env()
    device = args.device or _default_device(local_rank)
    if world > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
    dist = _Dist(device)
    rank = dist.rank
    try:
        list_skipped: list[tuple[str, str]] = []
        files = _list_files(args.paths, list_skipped)
        if not files:
            _report_skipped(list_skipped)
            raise SystemExit(f"fastood score: no image files under {' '.join(args.paths)}")
        meta_path = out.with_name(out.name + ".meta.json")
        rank_files = [O.rank_path(out, r) for r in range(world)] if world > 1 else []
        journal_file = rank_files[rank] if world > 1 else O.journal_path(out)
        partial = sorted({out, O.journal_path(out), *out.parent.glob(f"{out.stem}.rank*")})
        if args.overwrite and rank == 0:
            for f in {*partial, meta_path}:
                f.unlink(missing_ok=True)
        elif not args.overwrite:
            _check_resumable(out, meta_path, partial)
        dist.barrier()
        # rank 0 first: it builds (and caches) the text bank that the other ranks then load
        det = _build_detector(args, classes=args.classes, device=device) if rank == 0 else None
        dist.barrier()
        if det is None:
            det = _build_detector(args, classes=args.classes, device=device)
        fit_folders = None
        if getattr(det, "needs_fit", False):
            fit_skipped: list[tuple[str, str]] = []
            fit_folders = _fit_detector(det, args, fit_skipped)
            if rank == 0:
                _report_skipped(fit_skipped)
        info = _run_info(args, det, args.classes)
        info["fit"] = args.fit
        _compare_run_info(meta_path, info)
        classes = getattr(det, "classes", None) or fit_folders  # fitted detectors predict --fit folder indices
        threshold = getattr(det, "threshold", None)
        columns = O.columns_for(threshold is not None)
        journal = _open_journal(journal_file, columns, meta_path, info, dist, rank)
        if journal.dropped_tail:
            print(f"rank {rank}: dropped a truncated last record of {journal_file}", file=sys.stderr)
        # resume by image identity (resolved path), so another spelling of a path is the same row
        done = {O.path_key(p) for p in journal.done()}
        if out.exists() and out.resolve() != journal_file.resolve():
            done |= {O.path_key(r["path"]) for r in O.read_rows(out)}
        shard = files[rank::world]
        # one realpath per image (a syscall per path component): reused for the work list and the rows
        key_of = {f: O.path_key(f) for f in shard}
        todo = [f for f in shard if key_of[f] not in done]
        # Score in the uninterrupted run's batches: the shard cut into fixed batch_size chunks,
        # a chunk with any row left re-encoded whole (only its missing rows written). The image
        # tower's numerics depend on the batch it runs in, so this is what makes a resumed file
        # byte-identical to an uninterrupted one. Flattening keeps the chunk boundaries: every
        # chunk but the shard's last is full.
        bs = args.batch_size
        work = [f for i in range(0, len(shard), bs) for f in shard[i : i + bs]
                if any(key_of[g] not in done for g in shard[i : i + bs])] if todo else []
        n_done = sum(dist.gather(len(shard) - len(todo)))
        if rank == 0:
            where = f" on {world} ranks (rank 0's progress shown)" if world > 1 else ""
            print(f"fastood score: {len(files)} images, {n_done} already in the output, scoring "
                  f"{len(files) - n_done}{where} with {info['method']} on {device}", file=sys.stderr)
        skipped: list[tuple[str, str]] = []
        n_scored = 0
        t0 = time.perf_counter()
        bar = _bar(len(shard), "scoring", args.quiet or rank != 0, initial=len(shard) - len(todo))
        try:
            if todo:
                pre = _preprocess_of(det)
                seen_skipped = 0
                for batch in iter_image_batches(work, pre, batch_size=bs, on_error="skip",
                                                skipped=skipped, num_workers=args.num_workers):
                    scores, preds, is_ood = _predict_batch(det, batch.pixels)
                    rows = []
                    for i, name in enumerate(batch.names):
                        if (key_of[name] if name in key_of else O.path_key(name)) in done:
                            continue  # already in the output: encoded again only to keep the batch
                        p = int(preds[i]) if preds is not None else None
                        rows.append({
                            "path": name,
                            "score": float(scores[i]),
                            "pred": p,
                            "pred_label": classes[p] if classes is not None and p is not None and 0 <= p < len(classes) else None,
                            "is_ood": bool(is_ood[i]) if is_ood is not None else None,
                        })
                    journal.append(rows)
                    n_scored += len(rows)
                    bar.update(len(rows) + len(skipped) - seen_skipped)
                    seen_skipped = len(skipped)
                bar.update(len(skipped) - seen_skipped)
        finally:
            bar.close()
            journal.close()
        seconds = time.perf_counter() - t0
        all_skipped = list_skipped + [s for part in dist.gather(skipped) for s in part]
        counts = dist.gather(n_scored)
        dist.barrier()
        if rank == 0:
            sources = rank_files if world > 1 else [journal_file]
            rows = O.finalize(out, sources, columns, order=files, key=O.path_key)
            if world == 1 and journal_file != out:
                journal_file.unlink(missing_ok=True)
            _report_skipped(all_skipped)
            total = sum(counts)
            rate = f", {total / seconds:.1f} images/s" if total and seconds > 0 else ""
            print(f"scored {total} new image(s) in {seconds:.1f} s{rate}; skipped {len(all_skipped)} unreadable; "
                  f"wrote {out} ({len(rows)} rows)")
            if world > 1:
                print(f"per-rank files kept: {', '.join(str(f) for f in rank_files)}", file=sys.stderr)
        dist.barrier()
    finally:
        dist.close()
    return 0


# ============================================================================ fastood eval

def _norm_name(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _image_folder(root: str, what: str, skipped: list[tuple[str, str]] | None = None
                  ) -> tuple[list[str], list[str], list[int]]:
    """(class folder names, files, folder index of each file) of an ImageFolder-style directory;
    what the listing left out goes to ``skipped``."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise SystemExit(f"fastood eval: {what} {root!r} is not a directory")
    folders = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise SystemExit(f"fastood eval: {what} {root!r} must be an ImageFolder: one subfolder of images per class")
    files, labels = [], []
    empty = []
    for i, name in enumerate(folders):
        n0 = len(files)
        for f in _list_files([str(path / name)], skipped):
            files.append(f)
            labels.append(i)
        if len(files) == n0:
            empty.append(name)
    if not files:
        raise SystemExit(f"fastood eval: no image files under {what} {root!r}")
    if empty:  # the folder still defines a class (its index), but no image evaluates it
        shown = ", ".join(repr(e) for e in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"fastood eval: warning: {what} class folder(s) with no images: {shown}", file=sys.stderr)
    return folders, files, labels


def _parse_ood(specs: list[str]) -> dict[str, str]:
    sets: dict[str, str] = {}
    for spec in specs:
        name, sep, d = spec.partition("=")
        if not sep:
            name, d = Path(spec.rstrip("/")).name, spec
        name = name.strip()
        if not name or not d:
            raise SystemExit(f"--ood {spec!r}: expected NAME=DIR")
        if name in sets:
            raise SystemExit(f"--ood: the name {name!r} is given twice")
        if not Path(d).expanduser().is_dir():
            raise SystemExit(f"--ood {spec!r}: {d!r} is not a directory")
        sets[name] = d
    return sets


def _score_files(det: Any, files: list[str], args: argparse.Namespace, desc: str,
                 skipped: list[tuple[str, str]]) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """Score ``files`` (unreadable ones skipped into ``skipped``): names, scores, preds."""
    from fastood.images import iter_image_batches

    names, scores, preds = [], [], []
    bar = _bar(len(files), desc, args.quiet)
    before = len(skipped)
    try:
        for batch in iter_image_batches(files, _preprocess_of(det), batch_size=args.batch_size, on_error="skip",
                                        skipped=skipped, num_workers=args.num_workers):
            s, p, _ = _predict_batch(det, batch.pixels)
            names += batch.names
            scores.append(s)
            preds.append(p)
            bar.update(len(batch.names) + len(skipped) - before)
            before = len(skipped)
        bar.update(len(skipped) - before)
    finally:
        bar.close()
    if not names:
        raise SystemExit(f"fastood eval: no readable images in {desc}")
    pred = torch.cat(preds) if all(p is not None for p in preds) else None
    return names, torch.cat(scores), pred


def _fit_detector(det: Any, args: argparse.Namespace, skipped: list[tuple[str, str]]) -> list[str]:
    """Fit a needs_fit detector on the --fit ImageFolder; returns its class folder names."""
    from fastood.images import iter_image_batches

    if not args.fit:
        raise SystemExit(f"fastood {args.command}: method {args.method!r} is fitted on ID training images: "
                         "pass --fit DIR (an ImageFolder of training images)")
    folders, files, labels = _image_folder(args.fit, "--fit", skipped)
    label_of = dict(zip(files, labels))
    feats, labs = [], []
    bar = _bar(len(files), "fit features", args.quiet)
    try:
        for batch in iter_image_batches(files, _preprocess_of(det), batch_size=args.batch_size, on_error="skip",
                                        skipped=skipped, num_workers=args.num_workers):
            with torch.no_grad():
                feats.append(det.encode_images(batch.pixels.to(det.device)).float().cpu())
            labs += [label_of[n] for n in batch.names]
            bar.update(len(batch.names))
    finally:
        bar.close()
    if not feats:
        raise SystemExit("fastood eval: no readable images under --fit")
    det.fit_features(torch.cat(feats), torch.tensor(labs, dtype=torch.int64))
    return folders


def _eval(args: argparse.Namespace) -> int:
    from fastood.metrics import CONVENTIONS, evaluate_many
    from fastood.outputs import write_rows
    from fastood.report import write_report

    if getattr(args, "benchmark", None) and getattr(args, "attack", None):
        raise SystemExit("fastood eval: --attack works with --id / --ood, not with --benchmark")
    if getattr(args, "benchmark", None):  # a paper's protocol: fastood.benchmarks finds the sets
        from fastood.benchmarks import run_eval

        return run_eval(args)
    if args.id is None or not args.ood:
        raise SystemExit("fastood eval: --id DIR and at least one --ood are required (or --benchmark NAME "
                         "--data-root DIR)")
    args.convention = args.convention or "neglabel"

    if args.convention not in CONVENTIONS:
        raise SystemExit(f"--convention must be one of {CONVENTIONS}")
    if getattr(args, "attack", None):
        from fastood.attacks import parse_eps_list

        try:
            args.eps_list = parse_eps_list(args.eps, "--eps")
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"fastood eval: {exc}")
        if args.steps < 1:
            raise SystemExit(f"fastood eval: --steps must be >= 1, got {args.steps}")
        if args.attack == "feature" and args.attack_norm != "linf":
            raise SystemExit("fastood eval: --attack feature is defined in the L∞ ball (--attack-norm linf)")
        if args.save_adv:  # checked before hours of attacks, not after
            try:
                Path(args.save_adv).mkdir(parents=True, exist_ok=True)
                if not os.access(args.save_adv, os.W_OK):
                    raise PermissionError("not writable")
            except OSError as exc:
                raise SystemExit(f"fastood eval: cannot write --save-adv {args.save_adv!r}: {exc.strerror or exc}")
    out = Path(args.out)
    _check_out_writable(out, "eval", directory=True)
    list_skipped: list[tuple[str, str]] = []
    folders, id_files, id_folder_idx = _image_folder(args.id, "--id", list_skipped)
    ood_dirs = _parse_ood(args.ood)
    ood_files = {name: _list_files([d], list_skipped) for name, d in ood_dirs.items()}
    for name, fs in ood_files.items():
        if not fs:
            raise SystemExit(f"fastood eval: no image files in OOD set {name!r} ({ood_dirs[name]})")
    classes = args.classes if args.classes is not None else [f.replace("_", " ") for f in folders]
    device = args.device or _default_device()
    det = _build_detector(args, classes=classes, device=device)
    skipped: list[tuple[str, str]] = list_skipped
    det_classes = getattr(det, "classes", None)
    if getattr(det, "needs_fit", False):
        fit_folders = _fit_detector(det, args, skipped)
        if det_classes is None:
            det_classes = fit_folders

    # ID labels -> detector class indices
    mapping, label_map = "none", None
    if det_classes is not None:
        index = {}
        for i, c in enumerate(det_classes):
            index.setdefault(_norm_name(c), i)
        if all(_norm_name(f) in index for f in folders):
            mapping, label_map = "by folder name", [index[_norm_name(f)] for f in folders]
        elif len(folders) <= len(det_classes):
            mapping, label_map = "by sorted folder index (folder names do not match the class names)", list(range(len(folders)))
            print(f"WARNING: the --id folder names do not all match the detector's {len(det_classes)} class names; "
                  "mapping the i-th folder (sorted by name) to class i. Check that this is the class order "
                  "(e.g. ImageNet wnid folders with --classes imagenet1k).", file=sys.stderr)
        else:
            print(f"WARNING: {len(folders)} --id folders but the detector has {len(det_classes)} classes and the "
                  "names do not match: ID accuracy is not computed", file=sys.stderr)

    if hasattr(det, "reset"):
        det.reset()
    t0 = time.perf_counter()
    id_names, id_scores, id_pred = _score_files(det, id_files, args, "ID", skipped)
    ood_scores: dict[str, torch.Tensor] = {}
    ood_names: dict[str, list[str]] = {}
    ood_preds: dict[str, torch.Tensor | None] = {}
    for name, fs in ood_files.items():
        ood_names[name], ood_scores[name], ood_preds[name] = _score_files(det, fs, args, f"OOD {name}", skipped)
    seconds = time.perf_counter() - t0
    n_images = len(id_names) + sum(len(v) for v in ood_names.values())

    folder_of = dict(zip(id_files, id_folder_idx))
    accuracy = None
    if label_map is not None and id_pred is not None:
        truth = torch.tensor([label_map[folder_of[n]] for n in id_names])
        accuracy = float((id_pred == truth).double().mean())
    metrics = evaluate_many(id_scores, {k: v for k, v in ood_scores.items()}, convention=args.convention,
                            tpr=args.tpr, aupr_method=args.aupr)
    threshold = None
    if hasattr(det, "calibrate"):
        try:
            threshold = float(det.calibrate(id_scores, tpr=args.tpr))
        except (TypeError, ValueError):
            threshold = None
    robust = None
    if getattr(args, "attack", None):
        from fastood.robust import robust_evaluate

        try:
            robust = robust_evaluate(det, id_names, ood_names, attack=args.attack, eps=args.eps_list, steps=args.steps,
                                     target=args.attack_target or ("both" if args.attack == "pgd" else "id"),
                                     norm=args.attack_norm, seed=args.seed, convention=args.convention, tpr=args.tpr,
                                     aupr_method=args.aupr, batch_size=args.batch_size, save_adv=args.save_adv,
                                     progress=not args.quiet)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"fastood eval --attack {args.attack}: {exc}")
    info = _run_info(args, det, classes)
    info.update(device=device, calibrated_threshold=threshold)
    id_info = {"dir": args.id, "num_images": len(id_names), "num_classes": len(folders), "folders": folders,
               "label_mapping": mapping, "accuracy": accuracy}
    written = write_report(out, id_scores=id_scores.numpy(), ood_scores={k: v.numpy() for k, v in ood_scores.items()},
                           metrics=metrics, id_info=id_info, run_info=info, skipped=skipped,
                           timing={"images": n_images, "seconds": seconds,
                                   "images_per_s": n_images / seconds if seconds > 0 else None},
                           threshold=threshold, plots=not args.no_plots, robust=robust)
    # every score, for your own analysis
    rows = []

    def add(set_name: str, names: list[str], scores: torch.Tensor, preds: torch.Tensor | None, labels=None):
        for i, n in enumerate(names):
            p = int(preds[i]) if preds is not None else None
            rows.append({"set": set_name, "path": n, "label": labels[i] if labels else None,
                         "score": float(scores[i]), "pred": p,
                         "pred_label": det_classes[p] if det_classes is not None and p is not None and 0 <= p < len(det_classes) else None})

    add("id", id_names, id_scores, id_pred,
        [label_map[folder_of[n]] for n in id_names] if label_map is not None else [folders[folder_of[n]] for n in id_names])
    for name in ood_scores:
        add(name, ood_names[name], ood_scores[name], ood_preds[name])
    write_rows(out / "scores.csv", rows, ("set", "path", "label", "score", "pred", "pred_label"))

    _report_skipped(skipped)
    a = metrics["average"]
    print(f"ID: {len(id_names)} images, {len(folders)} classes, accuracy "
          f"{'n/a' if accuracy is None else f'{100 * accuracy:.2f} %'} (labels mapped {mapping})")
    print(f"FPR{round(100 * args.tpr)} convention: {args.convention}")
    print(f"{'OOD set':<20} {'images':>7} {'FPR95':>7} {'AUROC':>7} {'AUPR-In':>8} {'AUPR-Out':>8}")
    for name, r in metrics["per_set"].items():
        print(f"{name:<20} {r['num_ood']:>7} {100 * r['fpr95']:>7.2f} {100 * r['auroc']:>7.2f} "
              f"{100 * r['aupr_in']:>8.2f} {100 * r['aupr_out']:>8.2f}")
    print(f"{'average':<20} {a['num_ood']:>7} {100 * a['fpr95']:>7.2f} {100 * a['auroc']:>7.2f} "
          f"{100 * a['aupr_in']:>8.2f} {100 * a['aupr_out']:>8.2f}")
    if robust is not None:
        print(f"attack {robust['attack']} ({robust['norm']}, {robust['steps']} steps, target {robust['target']}): "
              "average over OOD sets")
        print(f"{'eps':<8} {'FPR95':>7} {'AUROC':>7} {'success OOD->ID':>16} {'success ID->OOD':>16}")
        rows_ = [("clean", robust["clean"]["average"], {})] + [
            (r["eps_label"], r["metrics"]["average"], r["success_rate"]) for r in robust["per_eps"]]
        for lab, m, sr in rows_:
            o2i, i2o = sr.get("ood_to_id"), sr.get("id_to_ood")
            print(f"{lab:<8} {100 * m['fpr95']:>7.2f} {100 * m['auroc']:>7.2f} "
                  f"{'-' if o2i is None else f'{100 * o2i:.2f}':>16} {'-' if i2o is None else f'{100 * i2o:.2f}':>16}")
    if info.get("random_weights"):
        print("RANDOM WEIGHTS: these numbers are meaningless.")
    print(f"skipped {len(skipped)} unreadable file(s); wrote {', '.join(str(p) for p in written.values())}, "
          f"{out / 'scores.csv'}")
    return 0


# ============================================================================ fastood demo

SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"
DEMO_THRESHOLD = 0.5


def _demo(args: argparse.Namespace) -> int:
    """The end-to-end job on the bundled sample images (see the module docstring)."""
    if args.kernels:
        return _kernel_demo(args)
    from fastood.api import TINY_MODEL, TINY_MODEL_KWARGS, is_random, load_model
    from fastood.build_bank import bank_for
    from fastood.images import iter_image_batches
    from fastood.labels.prompts import load_classnames
    from fastood.models import DEFAULT_MODEL

    pretrained = args.pretrained or os.environ.get("FASTOOD_PRETRAINED") or None
    random_weights = pretrained is None or is_random(pretrained)
    device = args.device or _default_device()
    paths = args.images or [str(SAMPLES_DIR)]
    files = _list_files(paths)
    if not files:
        raise SystemExit(f"fastood demo: no images under {' '.join(paths)}")
    bar = "=" * 78
    print(bar)
    if random_weights:
        model = args.model or TINY_MODEL
        kwargs = _model_kwargs(args) if args.model_kwargs else (TINY_MODEL_KWARGS if args.model is None else {})
        print("RANDOM WEIGHTS: scores are meaningless.")
        print("No checkpoint given (--pretrained / $FASTOOD_PRETRAINED), so this demo runs a small randomly")
        print(f"initialised open_clip model ({model}{', tiny config' if kwargs is TINY_MODEL_KWARGS else ''}) to show the")
        print("whole pipeline offline. For real scores: fastood demo --pretrained /path/to/open_clip_model.safetensors")
    else:
        model = args.model or DEFAULT_MODEL
        kwargs = _model_kwargs(args)
        print(f"fastood demo: {model} with weights {pretrained}")
    print(bar)

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM WEIGHTS.*")
        warnings.filterwarnings("ignore", message="No pretrained weights loaded.*")
        try:
            clip = load_model(model, "none" if random_weights else pretrained, device=device, model_kwargs=kwargs,
                              interpolation=args.interpolation, seed=args.seed)
        except (RuntimeError, FileNotFoundError, PermissionError, ValueError) as exc:
            raise SystemExit(f"fastood demo: cannot load the model: {exc}")
    n_params = sum(p.numel() for p in clip.model.parameters())
    print(f"model: {model} ({n_params / 1e6:.1f} M parameters) on {device}, loaded in {time.perf_counter() - t:.1f} s")

    classes = load_classnames(args.classes)
    corpus = _load_corpus_arg(args.corpus, args.max_candidates, "neglabel", classes)
    from fastood.labels import load_corpus

    full = corpus if corpus is not None else load_corpus("neglabel")
    groups = args.groups
    expected = int(0.15 * full.num_nouns) + int(0.15 * full.num_adjectives)  # NegMining keeps 15 % per POS
    if groups > expected:
        groups = max(1, expected)
        print(f"note: only ~{expected} negatives will be mined from {len(full)} candidates: using G={groups} groups")
    print(f"NegLabel bank: {len(classes)} ID classes ({args.classes}), {len(full):,} candidate words"
          f"{' (subset: --max-candidates)' if args.max_candidates else ''}, G={groups} groups")
    from fastood.bank import cache_dir

    banks_dir = cache_dir(args.cache) / "banks"
    before = set(banks_dir.glob("*.safetensors")) if banks_dir.is_dir() else set()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="duplicate class names")  # CLIP's ImageNet list has 2, by design
        bank = bank_for(clip, classes, method="neglabel", cache=args.cache, corpus=corpus, groups=groups,
                        progress=not args.quiet)
    bank_s = time.perf_counter() - t
    built = bool(set(banks_dir.glob("*.safetensors")) - before)
    print(f"  {bank.num_neg:,} negatives (+{bank.num_id} ID labels) "
          f"{'encoded, mined and cached' if built else 'loaded from the cache'} in {bank_s:.1f} s "
          f"({banks_dir})")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM WEIGHTS.*")
        warnings.filterwarnings("ignore", message="duplicate class names")
        from fastood.api import load

        det = load("neglabel", clip=clip, classes=classes, device=device, bank=bank,
                   threshold=args.threshold, batch_size=args.batch_size)
    def run(skipped: list[tuple[str, str]]):
        """decode + preprocess + encode + fused head over every file."""
        names, scores, preds, feats = [], [], [], []
        for batch in iter_image_batches(files, _preprocess_of(det), batch_size=args.batch_size, on_error="skip",
                                        skipped=skipped):
            with torch.no_grad():
                f = det.encode_images(batch.pixels.to(det.device))
            p = det.predict_features(f)
            names += batch.names
            scores.append(p.scores.float().cpu())
            preds.append(p.labels.cpu())
            feats.append(f)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return names, scores, preds, feats

    skipped: list[tuple[str, str]] = []
    names, scores, preds, feats = run(skipped)  # also the warm-up of the timed pass below
    if not names:
        raise SystemExit("fastood demo: no readable images")
    t = time.perf_counter()
    run([])
    e2e_s = time.perf_counter() - t
    scores_t, preds_t, feats_t = torch.cat(scores), torch.cat(preds), torch.cat(feats)
    # the head alone on the features (best of repeats: the least disturbed by other work on the machine)
    times = []
    for _ in range(21):
        t = time.perf_counter()
        det.score_features(feats_t)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    head_s = min(times)

    root = Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else None
    print()
    w = max(len(os.path.relpath(n, root) if root else n) for n in names)
    w = min(max(w, 4), 48)
    print(f"{'file':<{w}}  {'score':>8}  {'predicted class':<28}  {'ID/OOD':<6}")
    print(f"{'-' * w}  {'-' * 8}  {'-' * 28}  {'-' * 6}")
    for n, s, p in zip(names, scores_t.tolist(), preds_t.tolist()):
        label = det.classes[p] if 0 <= p < len(det.classes) else str(p)
        verdict = "ID" if s >= det.threshold else "OOD"
        shown = os.path.relpath(n, root) if root else n
        print(f"{shown[-w:]:<{w}}  {s:8.4g}  {label[:28]:<28}  {verdict:<6}")
    _report_skipped(skipped)
    print()
    n = len(names)
    print(f"scored {n} images in {e2e_s:.3f} s: {n / e2e_s:,.1f} images/s end to end "
          f"(decode + preprocess + encode + score, batch {args.batch_size}, {device})")
    print(f"NegLabel head alone (best of 21): {head_s * 1e3:.3f} ms per {n} feature rows ({n / head_s:,.0f} rows/s) "
          f"against {bank.num_id + bank.num_neg:,} labels in {bank.groups} groups")
    print(f"ID/OOD: score >= {det.threshold} is ID (--threshold; calibrate on your own ID images with "
          "det.calibrate(...) or read it from `fastood eval`)")
    if random_weights:
        print("RANDOM WEIGHTS: scores are meaningless (no checkpoint given).")
    return 0


def _selfcheck(args: argparse.Namespace) -> int:
    return _kernel_demo(args)


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    k = p.add_argument_group("kernel self-check (--kernels / selfcheck)")
    k.add_argument("--num-id", type=int, default=1000)
    k.add_argument("--num-neg", type=int, default=10499, help="10,499 = NegLabel's ImageNet-1k negatives (10,400 kept at G=100)")
    k.add_argument("--dim", type=int, default=512)
    k.add_argument("--batch", type=int, default=4096)
    k.add_argument("--repeats", type=int, default=3)
    k.add_argument("--bound", type=float, default=SELFCHECK_BOUND,
                   help=f"max |score − float64 score| accepted per backend (default {SELFCHECK_BOUND:g}); past it: exit 1")


# Subcommands that are whole programs of their own: `fastood export ...` = `python -m fastood.export ...`.
FORWARDED = {
    "export": ("fastood.export.__main__", "ONNX / TensorRT export of a detector (= python -m fastood.export)"),
    "train": ("fastood.train.__main__", "CMA fine-tuning of an open_clip model (= python -m fastood.train)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:
        import importlib

        return importlib.import_module(FORWARDED[argv[0]][0]).main(argv[1:])
    p = argparse.ArgumentParser(prog="fastood", description="fused-kernel OOD detection for CLIP-like models")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in FORWARDED.items():
        sub.add_parser(name, help=help_text + "; `fastood %s -h` lists its flags" % name, add_help=False)

    demo = sub.add_parser("demo", help="the end-to-end job on the bundled sample images (offline); "
                                       "--kernels: the kernel self-check",
                          description="Load a CLIP model (real weights from --pretrained / $FASTOOD_PRETRAINED, "
                                      "else a small RANDOMLY initialised model), build the NegLabel bank, score the "
                                      "bundled sample images, print a table and the throughput.")
    demo.add_argument("images", nargs="*", help="images or directories to score instead of the bundled samples")
    demo.add_argument("--kernels", action="store_true",
                      help="run the kernel self-check instead (every backend vs float64 on random embeddings)")
    demo.add_argument("--model", default=None,
                      help="open_clip architecture (default: ViT-B-16-quickgelu with weights, the tiny config without)")
    demo.add_argument("--pretrained", default=None,
                      help="checkpoint file / open_clip directory / hub tag (default $FASTOOD_PRETRAINED; "
                           "without one: random weights)")
    demo.add_argument("--model-kwargs", default=None, help="JSON of open_clip config overrides")
    demo.add_argument("--interpolation", default=None, choices=["bicubic", "bilinear"])
    demo.add_argument("--classes", default="imagenet1k", help="ID class names (default imagenet1k)")
    demo.add_argument("--corpus", default=None, help="corpus preset or 'word<TAB>n|a' file (default: neglabel WordNet)")
    demo.add_argument("--max-candidates", type=int, default=None, help="evenly spaced corpus subset of this size")
    demo.add_argument("--groups", type=int, default=100, help="NegLabel groups G (default 100)")
    demo.add_argument("--threshold", type=float, default=DEMO_THRESHOLD,
                      help=f"ID if score >= threshold (default {DEMO_THRESHOLD})")
    demo.add_argument("--cache", default=None, help="text-bank cache directory")
    demo.add_argument("--device", default=None)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_kernel_args(demo)
    demo.set_defaults(func=_demo)

    selfcheck = sub.add_parser("selfcheck", help="kernel self-check: every backend vs float64 on random embeddings")
    selfcheck.add_argument("--device", choices=["cpu", "cuda"], default=None)
    selfcheck.add_argument("--groups", type=int, default=100)
    selfcheck.add_argument("--seed", type=int, default=0)
    _add_kernel_args(selfcheck)
    selfcheck.set_defaults(func=_selfcheck)

    score = sub.add_parser("score", help="score images into a .csv / .jsonl / .parquet file (resumable, torchrun-aware)",
                           description="Score image files and directories. Resumable: rows are flushed per batch and "
                                       "a rerun skips images already in the output. Under torchrun each rank scores "
                                       "files r::world of the sorted list into OUT.rank{r}.SUFFIX; rank 0 merges.")
    score.add_argument("paths", nargs="+", help="image files and/or directories (searched recursively), or "
                                                "WebDataset shards: 'shards/{000000..000099}.tar' (see fastood.shards)")
    score.add_argument("--out", required=True, help="output file: .csv, .jsonl or .parquet (needs pyarrow)")
    score.add_argument("--overwrite", action="store_true", help="start again instead of resuming an existing output")
    score.add_argument("--fit", default=None, help="ImageFolder of ID training images for the fitted methods "
                                                   "(knn, mahalanobis, rmd, plp)")
    _add_model_args(score)
    score.set_defaults(func=_score)

    ev = sub.add_parser("eval", help="OOD metrics + ID accuracy on an ImageFolder and OOD sets; writes a report",
                        description="ID: an ImageFolder (one subfolder per class). Class names default to the folder "
                                    "names ('_' -> ' '); with --classes, folders map to classes by name when all "
                                    "match, else by sorted index (with a warning).")
    ev.add_argument("--id", default=None, help="ID images: an ImageFolder directory (required without --benchmark)")
    ev.add_argument("--ood", default=None, action="append", metavar="NAME=DIR",
                    help="an OOD set (repeatable); DIR alone names the set after the directory")
    ev.add_argument("--out", required=True, help="report directory (report.md, report.json, roc.png, hist.png, scores.csv)")
    ev.add_argument("--fit", default=None, help="ImageFolder of ID training images (knn, mahalanobis, rmd, plp)")
    ev.add_argument("--convention", default=None, help="FPR95 convention: neglabel (default), interp, openood "
                                                       "(with --benchmark: the compared paper's)")
    ev.add_argument("--tpr", type=float, default=0.95, help="TPR level of the FPR metric (default 0.95)")
    ev.add_argument("--aupr", default="ap", choices=["ap", "trapezoid"], help="AUPR integration (default ap)")
    ev.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    adv = ev.add_argument_group("adversarial robustness (fastood.robust)")
    adv.add_argument("--attack", default=None, choices=["pgd", "feature"],
                     help="also evaluate on attacked images: pgd (end-to-end on the detector's score) or feature "
                          "(feature-based manipulation toward paired images); adds the robust table and robust.png")
    adv.add_argument("--eps", default="1/255,2/255,4/255,8/255",
                     help="attack radii in [0, 1] pixel scale, comma-separated, fractions allowed "
                          "(default 1/255,2/255,4/255,8/255)")
    adv.add_argument("--steps", type=int, default=10, help="attack steps (default 10; step size 2.5·eps/steps)")
    adv.add_argument("--attack-target", default=None, choices=["id", "ood", "both"],
                     help="id: OOD images made to look ID; ood: ID images made to look OOD; both "
                          "(default: both for pgd, id for feature)")
    adv.add_argument("--attack-norm", default="linf", choices=["linf", "l2"], help="PGD ball (default linf)")
    adv.add_argument("--save-adv", default=None, metavar="DIR",
                     help="write the adversarial images as PNG under DIR/eps_<k>-255/<id|set>/")
    _add_model_args(ev, classes_default=None)
    from fastood.benchmarks import add_cli_args as _add_benchmark_args  # --benchmark / --data-root / --published

    _add_benchmark_args(ev)
    ev.set_defaults(func=_eval)

    mine = sub.add_parser("mine", help="build a negative-label text bank and save it (.safetensors)")
    mine.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip architecture")
    mine.add_argument("--pretrained", default=None,
                      help="hub tag, local checkpoint file or open_clip directory ($FASTOOD_PRETRAINED, else 'openai'); "
                           "'none' = random weights (testing only)")
    mine.add_argument("--model-kwargs", default=None, help="JSON of open_clip overrides (e.g. embed_dim, text_cfg)")
    mine.add_argument("--classes", default="imagenet1k", help="'imagenet1k' or a file with one class name per line")
    mine.add_argument("--method", default="neglabel", choices=["neglabel", "interneg", "csp"])
    mine.add_argument("--corpus", default=None, help="corpus preset name, or a file of 'word<TAB>n|a' lines")
    mine.add_argument("--prototypes", default=None, help="interneg: safetensors file with a K×D 'prototypes' tensor")
    mine.add_argument("--percentile", type=float, default=0.95)
    mine.add_argument("--ratio", type=float, default=0.15)
    mine.add_argument("--num-negatives", type=int, default=2000, help="interneg: M")
    mine.add_argument("--groups", type=int, default=None,
                      help="G (default 100; 1 for interneg: its scorer regroups into G=5 at test time)")
    mine.add_argument("--seed", type=int, default=0, help="seed of the grouping permutation")
    mine.add_argument("--permutation", default=None, metavar="FILE",
                      help="explicit grouping permutation (.pt / .npy / .txt of ints, a permutation of range(n_kept)), "
                           "e.g. the NegLabel reference's CUDA draw; overrides --seed")
    mine.add_argument("--mining-precision", default="float64", choices=["float64", "float32"],
                      help="NegMining ranking: float64 (default) or float32 (the NegLabel reference's CPU ranking)")
    mine.add_argument("--batch-size", type=int, default=1024)
    mine.add_argument("--device", default=None)
    mine.add_argument("--quiet", action="store_true", help="no progress bars")
    mine.add_argument("--out", required=True, help="output bank file (.safetensors)")
    mine.set_defaults(func=_mine)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``fastood`` command (also ``python -m fastood``)."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _kernel_demo(args: argparse.Namespace) -> int:
    """Score random features against an ImageNet-1k + NegLabel-sized random bank with
    every available backend, check the backends agree with the float64 reference,
    and print scores and throughput."""
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
    results = {}
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
        err = (out[sample].double() - truth).abs().max().item()
        results[name] = out
        print(f"  {name:<7} {dt * 1e3:8.2f} ms/batch  {b / dt:12,.0f} images/s  max |err| vs float64 = {err:.2e}")
    first = next(iter(results.values()))
    spread = max((o - first).abs().max().item() for o in results.values())
    ok = spread < 1e-4
    print(f"backends agree: {'yes' if ok else 'NO'} (max spread {spread:.2e})")
    n_id = b // 2
    print(f"mean score: ID-like images {first[:n_id].mean().item():.4f}, negative-like images {first[n_id:].mean().item():.4f}")
    return 0 if ok else 1


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
    bank = build_bank(clip, args.classes, method=args.method, prototypes=prototypes, corpus=corpus,
                      percentile=args.percentile, ratio=args.ratio, num_negatives=args.num_negatives,
                      groups=args.groups, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    path = bank.save(args.out)
    print(f"wrote {path}: {bank.num_id} ID labels, {bank.num_neg} negatives in {bank.groups} groups "
          f"(method {args.method}, model {args.model}, mined {bank.meta['mining']['selected']} "
          f"of {bank.meta['mining']['candidates']} candidates)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastood", description="fused-kernel OOD detection for CLIP-like models")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="offline self-check: score with every backend, check agreement, print throughput")
    demo.add_argument("--device", choices=["cpu", "cuda"], default=None)
    demo.add_argument("--num-id", type=int, default=1000)
    demo.add_argument("--num-neg", type=int, default=10499, help="10,499 = NegLabel's ImageNet-1k negatives (10,400 kept at G=100)")
    demo.add_argument("--groups", type=int, default=100)
    demo.add_argument("--dim", type=int, default=512)
    demo.add_argument("--batch", type=int, default=4096)
    demo.add_argument("--repeats", type=int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_kernel_demo)

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
    mine.add_argument("--groups", type=int, default=None, help="G (default 100; 5 for interneg)")
    mine.add_argument("--seed", type=int, default=0, help="seed of the grouping permutation")
    mine.add_argument("--batch-size", type=int, default=1024)
    mine.add_argument("--device", default=None)
    mine.add_argument("--quiet", action="store_true", help="no progress bars")
    mine.add_argument("--out", required=True, help="output bank file (.safetensors)")
    mine.set_defaults(func=_mine)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Bank-building benchmark: ImageNet-1k NegLabel bank (encode ~71,000 prompts + mine).

Times each stage — corpus load, tokenising + encoding the ID and candidate prompts,
NegMining, grouping — with a tiny random open_clip text tower on CPU, or with a
ViT-B/16-sized random text tower (width 512, 12 layers) on GPU. Mining should be
a small fraction (< 5 %) of the total next to encoding.

Then compares the text encoding of all prompts three ways, in interleaved rounds
(minimum and median reported; the machine may be shared):
- full context: tokenise and ``model.encode_text`` on the 77-token sequences,
  1024 prompts a batch (what ``encode_texts`` did before the cut);
- cut: :func:`fastood.models.encode_texts` (sorted by EOT position, each batch
  cut after its longest EOT);
- the tokenizer alone (the floor of both).
The largest difference between the two unit-norm embedding sets is recorded. For a
ViT-B/16-sized tower on CPU the full context over all prompts would take ~40 min, so
that comparison runs on 1,000 evenly spaced prompts (``compare_prompts`` in the JSON;
the file says so) instead of being skipped — it used to be skipped and the JSON then
recorded ``max_abs_diff_cut_vs_full: NaN`` with no speed-up at all.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from bench.common import provenance, sync, write_results

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@torch.no_grad()
def _encode_full_context(clip, texts: list[str], device: str, batch_size: int = 1024) -> torch.Tensor:
    """The pre-cut ``encode_texts``: every prompt through all 77 positions."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids = clip.tokenizer(texts[i : i + batch_size]).to(device)
        with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            emb = clip.model.encode_text(ids)
        out.append(torch.nn.functional.normalize(emb.float(), dim=1).cpu())
    return torch.cat(out)


def run(device: str, size: str, *, rounds: int = 3, quick: bool = False, compare: bool = True,
        compare_subset: int | None = None) -> tuple[dict, list[dict], str]:
    from fastood.bank import TextBank
    from fastood.labels import imagenet1k_classnames, load_corpus, mine_neglabel
    from fastood.models import encode_texts, load_clip

    kwargs = TINY if size == "tiny" else {}
    torch.manual_seed(0)
    clip = load_clip("ViT-B-32" if size == "tiny" else "ViT-B-16-quickgelu", pretrained="", device=device, **kwargs)
    names = imagenet1k_classnames()
    meta = provenance(device)  # before measuring: its load_1min_before is the load at the start
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    stages: dict[str, float] = {}
    t = time.perf_counter()
    corpus = load_corpus("neglabel")
    stages["corpus"] = time.perf_counter() - t
    if quick:
        corpus = corpus.filter(torch.arange(len(corpus)).numpy() % 20 == 0)
    t = time.perf_counter()
    id_emb = encode_texts(clip.model, clip.tokenizer, [f"the nice {c}" for c in names], progress=False)
    prompts = [("This is a {} photo" if p == "a" else "the nice {}").format(w) for w, p in zip(corpus.words, corpus.pos)]
    cand = encode_texts(clip.model, clip.tokenizer, prompts, progress=False)
    stages["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    sel = mine_neglabel(id_emb.to(device), cand.to(device), corpus.pos)
    stages["mine"] = time.perf_counter() - t
    t = time.perf_counter()
    TextBank.from_mined(id_emb, names, cand[sel.cpu()], [corpus.words[i] for i in sel.tolist()], groups=100)
    stages["group"] = time.perf_counter() - t
    total = sum(stages.values())
    rows = [{"stage": k, "seconds": v, "fraction": v / total} for k, v in stages.items()]
    rows.append({"stage": "total", "seconds": total, "fraction": 1.0, "prompts": len(prompts) + len(names),
                 "selected": int(sel.numel())})

    # text encoding: full context vs cut vs tokenizer alone, interleaved rounds
    # (on `compare_subset` evenly spaced prompts when given: a ViT-B/16-sized tower on CPU)
    rounds = rounds if compare else 0
    all_prompts = [f"the nice {c}" for c in names] + prompts
    n_all = len(all_prompts)
    if compare_subset is not None and compare_subset < n_all:
        pick = torch.linspace(0, n_all - 1, compare_subset).round().long().unique().tolist()
        all_prompts = [all_prompts[i] for i in pick]
    eot = clip.tokenizer(all_prompts).argmax(dim=1) + 1
    candidates = {
        "full context (model.encode_text, 77 tokens)": lambda: _encode_full_context(clip, all_prompts, device),
        "cut at EOT (fastood.models.encode_texts)": lambda: encode_texts(clip.model, clip.tokenizer, all_prompts,
                                                                         progress=False),
        "tokenizer alone": lambda: clip.tokenizer(all_prompts),
    }
    times: dict[str, list[float]] = {k: [] for k in candidates}
    results = {}
    for r in range(rounds):
        for k in list(candidates) if r % 2 == 0 else list(candidates)[::-1]:
            sync(device)
            t = time.perf_counter()
            results[k] = candidates[k]()
            sync(device)
            times[k].append(time.perf_counter() - t)
    keys = list(candidates) if compare else []
    max_diff = float((results[keys[0]] - results[keys[1]]).abs().max()) if compare else None
    base = min(times[keys[0]]) if compare else None
    for k in keys:
        rows.append({"stage": f"text encoding: {k}", "seconds": min(times[k]), "median_seconds": statistics.median(times[k]),
                     "speedup_vs_full": base / min(times[k]), "rounds": rounds})

    meta["model"] = f"{size} random text tower"
    meta["threads"] = torch.get_num_threads()
    meta["eot_length"] = {"mean": float(eot.float().mean()), "max": int(eot.max())}
    meta["max_abs_diff_cut_vs_full"] = max_diff  # None (JSON null) when not compared, never NaN
    meta["compare_prompts"] = len(all_prompts) if compare else 0
    meta["compare_prompts_of"] = n_all
    if load_start is not None:
        meta["load_average_1min"] = f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end ({os.cpu_count()} CPUs)"
    md = [f"# Bank-building benchmark ({meta['model']})", "",
          f"- device: {meta['device']} ({meta['threads']} torch threads)",
          f"- date: {meta['date']}; commit: {meta['commit']}; torch {meta['torch']}",
          f"- ImageNet-1k NegLabel bank: {len(names)} ID + {len(prompts)} candidate prompts, {int(sel.numel())} mined, G=100"
          + (" (--quick: every 20th candidate)" if quick else ""),
          f"- prompt length up to the EOT token: mean {meta['eot_length']['mean']:.1f}, max {meta['eot_length']['max']} "
          "(context 77)"]
    if load_start is not None:
        md.append(f"- machine load (1-min load average): {meta['load_average_1min']}; the machine may be shared")
    md += ["", "| stage | seconds | share |", "|---|---:|---:|"]
    md += [f"| {r['stage']} | {r['seconds']:.2f} | {100 * r['fraction']:.1f} % |" for r in rows if "fraction" in r]
    if compare:
        which = (f"all {n_all}" if len(all_prompts) == n_all
                 else f"{len(all_prompts)} evenly spaced of the {n_all}")
        md += ["", f"Text encoding of {which} prompts ({rounds} interleaved rounds; fp16 autocast on CUDA, "
               f"fp32 on CPU); max |cut − full| over the unit-norm embeddings: {max_diff:.2e}", "",
               "| method | best s | median s | speed-up vs full context |", "|---|---:|---:|---:|"]
        md += [f"| {r['stage'].removeprefix('text encoding: ')} | {r['seconds']:.2f} | {r['median_seconds']:.2f} | "
               f"{r['speedup_vs_full']:.1f}× |" for r in rows if "speedup_vs_full" in r]
    return meta, rows, "\n".join(md) + "\n"


def main(args) -> None:
    size = getattr(args, "model_size", None) or ("tiny" if args.device == "cpu" else "vit-b-16")
    # a ViT-B/16-sized tower on CPU: the full-context comparison on 1,000 prompts (all: ~40 min)
    subset = 1000 if (size == "vit-b-16" and args.device == "cpu") else None
    meta, rows, md = run(args.device, size, quick=getattr(args, "quick", False), compare_subset=subset)
    print(md)
    name = "bank" if (size == "tiny") == (args.device == "cpu") else f"bank-{size}"
    paths = write_results(name, args.device, meta, rows, md)
    print(f"wrote {paths[0]} and {paths[1]}")

"""Bank-building benchmark: ImageNet-1k NegLabel bank (encode ~71,000 prompts + mine).

Times each stage — corpus load, tokenising + encoding the ID and candidate prompts,
NegMining, grouping — with a tiny random open_clip text tower on CPU, or with a
ViT-B/16-sized random text tower (width 512, 12 layers) on GPU. Mining should be
a small fraction (< 5 %) of the total next to encoding.
"""

from __future__ import annotations

import time

import torch

from bench.common import provenance, write_results

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def run(device: str, size: str) -> tuple[dict, list[dict], str]:
    from fastood.bank import TextBank
    from fastood.labels import imagenet1k_classnames, load_corpus, mine_neglabel
    from fastood.models import encode_texts, load_clip

    kwargs = TINY if size == "tiny" else {}
    clip = load_clip("ViT-B-32" if size == "tiny" else "ViT-B-16-quickgelu", pretrained="", device=device, **kwargs)
    names = imagenet1k_classnames()
    stages: dict[str, float] = {}
    t = time.perf_counter()
    corpus = load_corpus("neglabel")
    stages["corpus"] = time.perf_counter() - t
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
    meta = provenance(device)
    meta["model"] = f"{size} random text tower"
    rows = [{"stage": k, "seconds": v, "fraction": v / total} for k, v in stages.items()]
    rows.append({"stage": "total", "seconds": total, "fraction": 1.0, "prompts": len(prompts) + len(names), "selected": int(sel.numel())})
    md = [f"# Bank-building benchmark ({meta['model']})", "",
          f"- device: {meta['device']}", f"- date: {meta['date']}; commit: {meta['commit']}; torch {meta['torch']}",
          f"- ImageNet-1k NegLabel bank: {len(names)} ID + {len(prompts)} candidate prompts, {int(sel.numel())} mined, G=100",
          "", "| stage | seconds | share |", "|---|---:|---:|"]
    md += [f"| {r['stage']} | {r['seconds']:.2f} | {100 * r['fraction']:.1f} % |" for r in rows]
    return meta, rows, "\n".join(md) + "\n"


def main(args) -> None:
    size = "tiny" if args.device == "cpu" else "vit-b-16"
    meta, rows, md = run(args.device, size)
    print(md)
    paths = write_results(f"bank-{size}", args.device, meta, rows, md)
    print(f"wrote {paths[0]} and {paths[1]}")

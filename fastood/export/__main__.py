"""``python -m fastood.export``: ship a NegLabel / MCM detector as ONNX (+ manifest) or a TensorRT engine.

    python -m fastood.export --onnx --out deploy/                          # NegLabel, ViT-B/16, ImageNet-1k
    python -m fastood.export --trt --fp16 --batch 1:64:256 --out deploy/   # + a TensorRT engine (GPU)
    python -m fastood.export --onnx --method mcm --classes my_classes.txt --out deploy/
    python -m fastood.export --onnx --bank bank.safetensors --pretrained ckpt.pt --out deploy/

``--bank FILE`` uses a saved :class:`fastood.bank.TextBank` (``fastood mine``) instead of
building one (classes then come from the bank). ``--pretrained none`` builds the model
with RANDOM weights (tests and demos: the scores are meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch


class CliError(Exception):
    """A user-facing error: printed as ``fastood.export: error: ...`` with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastood.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--onnx", action="store_true", help="write model.onnx + model.manifest.json")
    what.add_argument("--trt", action="store_true", help="also build a TensorRT engine (needs tensorrt and a GPU)")
    p.add_argument("--method", default="neglabel", choices=["neglabel", "mcm"])
    p.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip architecture")
    p.add_argument("--pretrained", default=None,
                   help="hub tag, local checkpoint file or open_clip directory ($FASTOOD_PRETRAINED, else 'openai'); "
                        "'none' = RANDOM weights (testing only)")
    p.add_argument("--model-kwargs", default=None, help="JSON of open_clip overrides (embed_dim, vision_cfg, text_cfg)")
    p.add_argument("--classes", default=None, help="'imagenet1k' (default) or a file with one class name per line")
    p.add_argument("--bank", default=None, help="a saved TextBank (.safetensors) to use instead of building one")
    p.add_argument("--groups", type=int, default=None, help="NegLabel groups G (default: the bank's, 100 when built)")
    p.add_argument("--temperature", type=float, default=None, help="τ (default 0.01 NegLabel, 1.0 MCM)")
    p.add_argument("--threshold", type=float, default=None, help="a calibrated threshold to record (is_ood = score < it)")
    p.add_argument("--interpolation", default=None, choices=["bicubic", "bilinear"],
                   help="resize interpolation (bilinear = the NegLabel reference; open_clip's default is bicubic)")
    p.add_argument("--cache", default=None, help="bank cache directory ($FASTOOD_CACHE or ~/.cache/fastood)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init with --pretrained none")
    p.add_argument("--device", default=None, help="device for bank building and export (default: cuda if available)")
    p.add_argument("--fp16", action="store_true", help="fp16 image encoder (LayerNorm and the head stay fp32)")
    p.add_argument("--batch", default="1:32:256", help="MIN:OPT:MAX batch sizes (TensorRT profile; the graph's batch is dynamic)")
    p.add_argument("--head", default="standard", choices=["standard", "fused"],
                   help="standard ONNX ops (any runtime) or one fastood::SegmentLSEScore node (TensorRT plugin)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 17, default 18)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"], help="torch.onnx exporter")
    p.add_argument("--workspace-gb", type=float, default=None, help="TensorRT builder workspace limit")
    p.add_argument("--verify", action="store_true",
                   help="score random input with the torch detector and the exported model and print the difference")
    p.add_argument("--force-bank", action="store_true", help="use --bank even if it was built with another text tower")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output directory")
    return p


def _load_clip(args: argparse.Namespace, device: str):
    from fastood.models import load_clip

    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as exc:
        raise CliError(f"--model-kwargs is not valid JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise CliError("--model-kwargs must be a JSON object")
    random_init = isinstance(args.pretrained, str) and args.pretrained.strip().lower() in ("none", "random", "")
    if random_init:
        print(f"WARNING: --pretrained none: {args.model} has RANDOM weights; the exported detector is only good "
              "for testing", file=sys.stderr)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            clip = load_clip(args.model, "", device=device, interpolation=args.interpolation, **kwargs)
        clip.pretrained = "none (random init)"
        return clip
    return load_clip(args.model, args.pretrained, device=device, interpolation=args.interpolation, **kwargs)


def _detector(args: argparse.Namespace, clip: Any, device: str):
    from fastood.bank import TextBank
    from fastood.detectors import create

    opts: dict[str, Any] = {"clip": clip, "device": device, "progress": not args.quiet}
    if args.bank:
        bank = TextBank.load(args.bank)
        want = bank.meta.get("text_weights_sha256")
        if want and want != clip.text_hash() and not args.force_bank:
            raise CliError(f"--bank {args.bank} was built with another text tower (text-weights sha256 "
                           f"{want[:12]}… vs the model's {clip.text_hash()[:12]}…): its scores would be wrong for "
                           "this model. Rebuild the bank (fastood mine) or pass --force-bank")
        opts["bank"] = bank
    if args.classes is not None:
        opts["classes"] = args.classes
    elif not args.bank:
        opts["classes"] = "imagenet1k"
    if args.temperature is not None:
        opts["temperature"] = args.temperature
    if args.threshold is not None:
        opts["threshold"] = args.threshold
    if args.method == "neglabel":
        if args.groups is not None:
            opts["groups"] = args.groups
        if args.cache is not None:
            opts["cache"] = args.cache
    elif args.groups is not None:
        raise CliError("--groups applies to --method neglabel only")
    return create(args.method, **opts)


def _verify(det: Any, path: Path, batch: tuple[int, int, int]) -> float | None:
    """Max |score difference| between the torch detector and onnxruntime on random input."""
    import fastood.export as fx

    rt = fx.load(path, provider="cpu")
    n = min(max(batch[0], 3), batch[2])
    h, w = rt.image_size
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))
    ref = det.score(x).float().cpu()
    got = rt.score(x)
    return float((ref - got).abs().max())


def run(args: argparse.Namespace) -> int:
    import fastood.export as fx

    batch = fx.parse_batch(args.batch)
    trt_major = None
    if args.trt:
        from fastood.export.runtime_trt import import_tensorrt, trt_major as _major

        trt_major = _major(import_tensorrt())  # fails first, with the clear message, when TensorRT is absent
        if not torch.cuda.is_available():
            raise CliError("--trt needs a CUDA GPU (torch sees none); use --onnx")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = _load_clip(args, device)
    det = _detector(args, clip, device)
    # TensorRT 11 takes precision from the ONNX file; TensorRT 10 builds fp16 from an fp32 file
    onnx_fp16 = args.fp16 and (not args.trt or trt_major >= 11)
    out = Path(args.out)
    path = fx.to_onnx(det, out, head=args.head, fp16=onnx_fp16, batch=batch, opset=args.opset, exporter=args.exporter)
    from fastood.export.manifest import manifest_path_for, read_manifest

    manifest = read_manifest(manifest_path_for(path))
    size = sum(e["bytes"] for e in manifest["files"].values())
    print(f"wrote {path} ({size / 2**20:.1f} MiB, {manifest['precision']} encoder, {args.head} head, "
          f"opset {manifest['versions']['opset']}) and {manifest_path_for(path).name}: method {manifest['method']}, "
          f"{manifest['num_id']} classes, G={manifest['groups']}, τ={manifest['temperature']:g}, "
          f"input (batch, 3, {manifest['preprocess']['image_size'][0]}, {manifest['preprocess']['image_size'][1]})")
    if args.verify:
        if args.head == "fused":
            print("verify: skipped (the fused head runs in TensorRT only)")
        else:
            diff = _verify(det, path, batch)
            print(f"verify: max |score(torch) - score(onnxruntime)| = {diff:.3e}")
    if args.trt:
        engine = fx.to_tensorrt(path, fp16=True if (args.fp16 and not onnx_fp16) else None, batch=batch,
                                workspace_gb=args.workspace_gb)
        print(f"wrote TensorRT engine {engine}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fastood.export.runtime_trt import TensorRTUnavailable

    try:
        return run(args)
    except (CliError, TensorRTUnavailable, ValueError, FileNotFoundError) as exc:  # ManifestError, BankError too
        print(f"fastood.export: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

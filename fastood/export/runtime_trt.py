"""TensorRT engines for exported detectors: build (with a cache) and run.

``tensorrt`` is optional and imported lazily (:func:`import_tensorrt` raises a
clear error without it). Written against the documented TensorRT 10 and 11
Python APIs; **untested here** (TensorRT is not installable in the development /
CI environment and the GPU test machines have none).

Building (:func:`build_engine`), from the exported ONNX file:

- one optimization profile for the input ``pixels``: batch ``min / opt / max``
  from the manifest (or the caller), fixed (3, H, W);
- precision, the way the installed major version requires:
  * an **fp16 ONNX file** (``to_onnx(..., fp16=True)``: fp16 encoder, LayerNorm and
    head in fp32 through explicit Casts) → a *strongly typed* network, precision
    from the file (TensorRT ≥ 10; the only fp16 route in TensorRT 11, which removed
    ``BuilderFlag.FP16``);
  * an **fp32 ONNX file with fp16=True** → TensorRT 10 only: ``BuilderFlag.FP16``
    plus per-layer precision constraints that keep every ``LayerNormalization``
    (``INormalizationLayer``) and every head layer (ONNX node names
    ``fastood_head/*``) in fp32 (``OBEY_PRECISION_CONSTRAINTS``; falls back to
    ``PREFER_…`` with a warning if a constraint cannot be met). TensorRT 11 raises
    (re-export with fp16=True);
  * otherwise fp32 (TF32 allowed, TensorRT's default).
- the fused head's ``fastood::SegmentLSEScore`` node needs the plugin library
  (``libfastood_trt_plugin.so``, loaded with ``RTLD_GLOBAL`` before parsing and
  before deserializing).

Engines are cached under a key of TensorRT version + GPU compute capability +
the ONNX file's sha256 + the build options (:func:`engine_key`), by default in
``<export dir>/engines/``. Running (:class:`TrtDetector`) binds torch CUDA
tensors with ``set_tensor_address`` and enqueues with ``execute_async_v3`` on
torch's current stream.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastood._io import atomic_write_bytes
from fastood.export.runtime_ort import ExportedDetector

__all__ = [
    "TensorRTUnavailable",
    "import_tensorrt",
    "tensorrt_available",
    "trt_major",
    "plugin_library",
    "load_plugin",
    "engine_key",
    "build_engine",
    "TrtDetector",
]

HEAD_PREFIX = "fastood_head/"
PLUGIN_LIB = "libfastood_trt_plugin.so"
_plugin_handle: ctypes.CDLL | None = None


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or the GPU it needs) is not available."""


def import_tensorrt():
    """``import tensorrt`` or a :class:`TensorRTUnavailable` that says what to do."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed: the TensorRT runtime needs the 'tensorrt' Python package (10.x or 11.x, "
            "NVIDIA's build for your CUDA: pip install 'fastood[trt]' on a machine with an NVIDIA GPU). "
            "Without it, export with --onnx and run the model with onnxruntime (fastood.export.load)."
        ) from exc
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return torch.cuda.is_available()


def trt_major(trt: Any = None) -> int:
    trt = trt or import_tensorrt()
    return int(str(trt.__version__).split(".")[0])


def plugin_library() -> Path | None:
    """The fused-head plugin library shipped in the fastood package, if it was built."""
    from importlib import resources

    env = os.environ.get("FASTOOD_TRT_PLUGIN")
    if env:
        return Path(env)
    try:
        p = Path(str(resources.files("fastood") / PLUGIN_LIB))
    except (ModuleNotFoundError, TypeError):
        return None
    return p if p.is_file() else None


def load_plugin(path: str | os.PathLike | None = None) -> Path:
    """Load the ``SegmentLSEScore`` plugin library (idempotent) so the parser / runtime find it."""
    global _plugin_handle
    lib = Path(path) if path is not None else plugin_library()
    if lib is None or not lib.is_file():
        raise TensorRTUnavailable(
            f"the fused head needs the TensorRT plugin library {PLUGIN_LIB}, which was not found "
            f"({'FASTOOD_TRT_PLUGIN=' + str(lib) if lib else 'not built: fastood builds it when NvInfer.h is found'}); "
            "or export with head='standard'"
        )
    if _plugin_handle is None:
        trt = import_tensorrt()
        _plugin_handle = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        register = getattr(_plugin_handle, "fastood_register_trt_plugin", None)
        if register is not None:
            register.restype = ctypes.c_bool
            register()
        trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.WARNING), "")
    return lib


def _compute_capability(device: torch.device) -> str:
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def engine_key(trt_version: str, capability: str, model_sha256: str, options: dict[str, Any]) -> str:
    """``trt<version>-sm<cc>-<model sha[:16]>-<options hash[:8]>``: a new key for any change that matters."""
    opts = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return f"trt{trt_version}-sm{capability}-{model_sha256[:16]}-{opts}"


def _np_dtype_to_torch(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise TypeError(f"unsupported TensorRT tensor dtype {dt}")
    return table[dt]


def _keep_fp32(trt: Any, network: Any) -> int:
    """TensorRT 10 weak typing: pin LayerNorm and head layers to fp32; returns how many were pinned."""
    floating = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        is_norm = layer.type == trt.LayerType.NORMALIZATION
        if not (is_norm or layer.name.startswith(HEAD_PREFIX)):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outs or any(o.dtype not in floating for o in outs):
            continue  # shape / index layers (ArgMax, Shape, ...) keep their types
        if is_norm and hasattr(layer, "compute_precision"):
            layer.compute_precision = trt.float32
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    input_name: str = "pixels",
    image_size: tuple[int, int],
    batch: tuple[int, int, int],
    onnx_precision: str = "fp32",
    fp16: bool | None = None,
    fused: bool = False,
    workspace_gb: float | None = None,
    plugin: str | os.PathLike | None = None,
    verbose: bool = False,
) -> Path:
    """Build a serialized engine from ``onnx_path`` and write it atomically to ``engine_path``.

    ``onnx_precision`` is the precision recorded in the manifest (``"fp16"`` files
    are built strongly typed); ``fp16=True`` on an fp32 file uses TensorRT 10's
    ``BuilderFlag.FP16`` with LayerNorm / head layers pinned to fp32.
    """
    trt = import_tensorrt()
    major = trt_major(trt)
    if fused:
        load_plugin(plugin)
    strongly_typed = onnx_precision == "fp16"
    weak_fp16 = bool(fp16) and not strongly_typed
    if fp16 is False and strongly_typed:
        raise ValueError("the ONNX file is fp16 (precision comes from the file): fp16=False cannot apply; export in fp32")
    if weak_fp16 and major >= 11:
        raise ValueError(
            f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed networks only): the precision comes "
            "from the ONNX file; export with fp16=True (python -m fastood.export --trt --fp16 does that)"
        )
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and major < 11:  # 11.x: always strongly typed (the flag is deprecated and ignored)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    h, w = image_size
    bmin, bopt, bmax = batch
    profile.set_shape(input_name, (bmin, 3, h, w), (bopt, 3, h, w), (bmax, 3, h, w))
    config.add_optimization_profile(profile)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _keep_fp32(trt, network)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None and weak_fp16:
        warnings.warn("TensorRT could not obey the fp32 constraints on LayerNorm / head layers; retrying with "
                      "PREFER_PRECISION_CONSTRAINTS (check the build log)", stacklevel=2)
        config.clear_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see the TensorRT log above)")
    return atomic_write_bytes(engine_path, memoryview(serialized))


def cached_engine_path(
    manifest: dict[str, Any],
    model_dir: Path,
    *,
    fp16: bool | None,
    batch: tuple[int, int, int],
    device: torch.device,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Where the engine for this model / GPU / TensorRT version / options lives."""
    trt = import_tensorrt()
    cc = _compute_capability(device)
    model_sha = manifest["files"][manifest["model_file"]]["sha256"]
    options = {"fp16": bool(fp16) or manifest["precision"] == "fp16", "batch": list(batch), "head": manifest["head"]}
    key = engine_key(str(trt.__version__), cc, model_sha, options)
    root = Path(cache_dir) if cache_dir is not None else model_dir / "engines"
    return root / f"{key}.engine"


class TrtDetector(ExportedDetector):
    """An exported detector run by a TensorRT engine (built once, cached).

    Args:
        manifest, model_path: the verified export (``model_path`` is the ONNX file).
        engine_path: a prebuilt engine; default: the cache entry for this model, GPU,
            TensorRT version and options (built when missing).
        fp16: see :func:`build_engine` (``None``: the ONNX file's precision).
        batch: (min, opt, max) profile; default the manifest's.
        cache_dir: engine cache directory (default ``<export dir>/engines``).
        device: CUDA device (default the current one).
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        model_path: Path,
        *,
        engine_path: str | os.PathLike | None = None,
        fp16: bool | None = None,
        batch: tuple[int, int, int] | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        plugin: str | os.PathLike | None = None,
        workspace_gb: float | None = None,
    ) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("TensorRT needs a CUDA GPU, and torch sees none")
        built = manifest.get("tensorrt") or {}  # what fastood.export.to_tensorrt built for this export
        if fp16 is None and built.get("fp16") is not None:
            fp16 = bool(built["fp16"])
        if batch is None and built.get("batch"):
            batch = tuple(built["batch"])
        if batch is not None:
            manifest = {**manifest, "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]}}
        super().__init__(manifest, model_path, batch_size=batch_size)
        self.device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        prof = (manifest["batch"]["min"], manifest["batch"]["opt"], manifest["batch"]["max"])
        fused = manifest["head"] == "fused"
        if fused:
            load_plugin(plugin)
        if engine_path is None:
            engine_path = cached_engine_path(manifest, Path(model_path).parent, fp16=fp16, batch=prof,
                                             device=self.device, cache_dir=cache_dir)
        engine_path = Path(engine_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = None
        if engine_path.is_file():
            engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                warnings.warn(f"cached TensorRT engine {str(engine_path)!r} could not be deserialized; rebuilding it",
                              stacklevel=2)
        if engine is None:
            with torch.cuda.device(self.device):
                build_engine(model_path, engine_path, input_name=manifest["input"]["name"], image_size=self.image_size,
                             batch=prof, onnx_precision=manifest["precision"], fp16=fp16, fused=fused,
                             workspace_gb=workspace_gb, plugin=plugin)
            engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT cannot deserialize the engine it just built ({str(engine_path)!r})")
        self.engine_path = engine_path
        self.engine = engine
        self.context = engine.create_execution_context()
        self.backend = f"tensorrt {trt.__version__}"
        self.min_batch = prof[0]
        self._trt = trt
        self._input = manifest["input"]["name"]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self._outputs) != ["pred", "score"] or self._input not in names:
            raise RuntimeError(f"engine {str(engine_path)!r} has I/O tensors {names}, expected pixels → score, pred")
        self._out_dtypes = {n: _np_dtype_to_torch(trt, engine.get_tensor_dtype(n)) for n in self._outputs}

    def _run(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        n = pixels.shape[0]
        if n < self.min_batch:  # pad up to the profile's minimum
            pad = pixels[-1:].expand(self.min_batch - n, *pixels.shape[1:])
            pixels = torch.cat([pixels, pad])
        x = pixels.to(self.device, torch.float32, non_blocking=True).contiguous()
        ctx = self.context
        if not ctx.set_input_shape(self._input, tuple(x.shape)):
            raise ValueError(f"batch {x.shape[0]} is outside the engine's profile {self.manifest['batch']}")
        ctx.set_tensor_address(self._input, x.data_ptr())
        outs: dict[str, Tensor] = {}
        for name in self._outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._out_dtypes[name], device=self.device)
            ctx.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        # x and outs stay alive until the stream reaches them: record them on it
        x.record_stream(stream)
        return outs["score"][:n].float(), outs["pred"][:n].long()

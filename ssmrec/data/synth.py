"""A synthetic MM-CTR world with known truth, written in the exact challenge schema.

Generative model (all draws from one seeded numpy Generator, so a seed fixes every byte):

* **Items** ``1..n_items`` (row 0 = padding). Each item has a category ``c`` and a unit latent
  vector ``z = normalise(mu_c + item_noise * eps)`` around its category centroid, plus a
  popularity ``log_pop ~ N(0, 1)``.
* **Side information derived from the latent**: ``item_tags`` = the category's tag, then tags picked
  by the strongest latent components (2-5 tags, right-padded with 0); ``item_title`` = words from
  the category's topic and from the signs/strength of latent components; a 32x32 **cover** PNG whose
  background colour encodes latent components 0-2, whose shape encodes the category and whose
  shape colour/size encode components 3-6; ``item_emb_d128`` = a fixed random projection of ``z``
  plus Gaussian noise (``emb_noise``), row 0 all zeros.
* **Levels**: ``likes_level`` / ``views_level`` are the decile (0-9) of ``log_pop`` plus noise.
* **Users** carry an interest state ``s`` (unit vector) that *drifts along their history*: after
  every click on item ``i``, ``s <- normalise(rho * s + (1 - rho) * z_i + drift * eps)``. Because the
  state forgets at rate ``rho``, recent clicks tell much more than old ones, so order and recency
  matter and a sequence model beats mean pooling of the history.
* **Warm-up history**: each user first clicks ``warmup`` items, each drawn from 64 popularity-drawn
  candidates by ``softmax(beta * <s, z> + 0.5 * log_pop)``.
* **Impressions**: then ``n_impressions`` events per user. The shown item is interest-driven (as
  above) with probability ``p_interest``, else popularity-drawn. The **true click probability**
  is ``p = sigmoid(alpha * <s, z_target> + gamma * log_pop_target + bias)`` — written to
  ``truth/{split}.parquet`` and never read by models. A click (label ~ Bernoulli(p)) appends the
  item to the history and moves the state.
* **Temporal split**: each user starts at a random time and has a random event rate; all impression
  rows are sorted by time and split 90 % / 5 % / 5 % into train / valid / test.

Outputs in ``out/``: ``train/valid/test.parquet`` (test without ``label``), ``item_info.parquet``,
``item_feature.parquet`` (``item_id``, ``item_title``, ``cover_path``), ``covers/*.png``,
``truth/{train,valid,test}.parquet`` (``p_click``, ``label``) and ``world.json`` (the seed, the preset
used -- ``"custom"`` for a config that is no preset -- and every parameter of the config).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ssmrec.data.schema import DEFAULT_MAX_LEN, ITEM_EMB_DIM, N_ITEM_TAGS
from ssmrec.errors import OutputError, SsmrecError
from ssmrec.io import check_output_dir, os_error_line, write_json_atomic, write_parquet_atomic


@dataclass(frozen=True)
class WorldConfig:
    n_items: int = 3000
    n_users: int = 6000
    n_categories: int = 20
    latent_dim: int = 8
    item_noise: float = 0.3
    emb_noise: float = 0.15
    tags_per_category: int = 12
    warmup_min: int = 8
    warmup_max: int = 80
    n_impressions: int = 20
    p_interest: float = 0.5
    beta: float = 6.0  # sharpness of interest-driven choices
    rho: float = 0.6  # state memory per click (effective memory ~ 1 / (1 - rho) clicks)
    drift: float = 0.03
    alpha: float = 4.0  # weight of interest match in the true click logit
    gamma: float = 0.6  # weight of popularity in the true click logit
    bias: float = -1.0
    level_noise: float = 0.3
    max_len: int = DEFAULT_MAX_LEN
    cover_size: int = 32
    write_covers: bool = True
    valid_frac: float = 0.05
    test_frac: float = 0.05
    # full-size worlds: exact (train, valid, test) row counts by time rank (the latest rows beyond them
    # are dropped), users simulated in chunks of this many (bounded memory, chunked parquet writes), and
    # latent tags drawn from the whole per-category pool through a random projection of z
    split_rows: tuple[int, int, int] | None = None
    chunk_users: int = 0
    tag_projection: bool = False


PRESETS = {
    "tiny": WorldConfig(n_items=300, n_users=800, n_categories=6, warmup_max=70, n_impressions=10, cover_size=16),
    "default": WorldConfig(),
    # MicroLens_1M_x1 at its real size (reference doc §1.1; vocabularies from the FuxiCTR feature map in
    # shared/data/mmctr-microlens1m-vocab): 91,718 item_info rows, tag ids 0..11,739 (91 categories x
    # (128 + 1) + 1), 3,600,000 / 10,000 / 379,142 rows. 1M users x 4 impressions = 4M rows by time; the
    # latest 10,858 are dropped. No covers (91k PNGs would dominate the time).
    "microlens1m": WorldConfig(n_items=91_717, n_users=1_000_000, n_categories=91, tags_per_category=128,
                               n_impressions=4, write_covers=False, split_rows=(3_600_000, 10_000, 379_142),
                               chunk_users=50_000, tag_projection=True),
}

TOPICS = [
    "cooking", "travel", "gaming", "music", "pets", "fitness", "fashion", "comedy", "science", "cars",
    "dance", "art", "football", "makeup", "history", "tech", "nature", "anime", "finance", "family",
    "movies", "camping", "chess", "gardening", "surfing", "yoga", "baking", "poetry", "robots", "space",
]
# One word pair per latent component: (positive pole, negative pole).
POLES = [
    ("bright", "dark"), ("fast", "slow"), ("funny", "serious"), ("loud", "quiet"), ("new", "classic"),
    ("simple", "complex"), ("warm", "cool"), ("wild", "calm"), ("tiny", "giant"), ("sweet", "bitter"),
    ("urban", "rural"), ("solo", "group"), ("retro", "modern"), ("epic", "cozy"), ("daily", "rare"),
    ("smart", "silly"),
]
FORMATS = ["vlog", "tutorial", "review", "challenge", "story", "highlights", "guide", "reaction"]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _deciles(x: np.ndarray) -> np.ndarray:
    edges = np.quantile(x, np.linspace(0.1, 0.9, 9))
    return np.searchsorted(edges, x).astype(np.int64)  # 0..9


def _choose(rng, s, z, log_pop, pop_cdf, n_cand, beta):
    """For each row of states ``s`` pick one item among ``n_cand`` popularity-drawn candidates
    with probability ``softmax(beta * <s, z> + 0.5 * log_pop)`` (Gumbel-max)."""
    n = s.shape[0]
    cand = np.searchsorted(pop_cdf, rng.random((n, n_cand))) + 1  # item ids 1..n_items
    cand = np.minimum(cand, len(pop_cdf))
    logits = beta * np.einsum("nk,nck->nc", s, z[cand]) + 0.5 * log_pop[cand]
    pick = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return cand[np.arange(n), pick]


def _titles(rng, cfg, cat, z):
    topic_of_cat = np.resize(rng.permutation(len(TOPICS)), cfg.n_categories)  # topics repeat past 30 categories
    k = min(cfg.latent_dim, len(POLES))
    strength = np.argsort(-np.abs(z[:, :k]), axis=1)[:, :2]  # two strongest components
    fmt = rng.integers(0, len(FORMATS), size=len(cat))
    titles = []
    for i in range(len(cat)):  # only n_items strings; cheap
        words = [POLES[c][0 if z[i, c] > 0 else 1] for c in strength[i]]
        titles.append(f"{words[0]} {words[1]} {TOPICS[topic_of_cat[cat[i]]]} {FORMATS[fmt[i]]}")
    return titles


def _draw_cover(path, z, cat, size):
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in (255 * _sigmoid(2.5 * z[0:3])))
    fg = tuple(int(v) for v in (255 * _sigmoid(2.5 * z[3:6])))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = size * (0.2 + 0.25 * _sigmoid(2.0 * z[6]))
    c = size / 2
    box = [c - r, c - r, c + r, c + r]
    shape = cat % 4
    if shape == 0:
        d.ellipse(box, fill=fg)
    elif shape == 1:
        d.rectangle(box, fill=fg)
    elif shape == 2:
        d.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=fg)
    else:
        for x0 in range(0, size, max(2, size // 6)):
            d.rectangle([x0, 0, x0 + max(1, size // 12), size], fill=fg)
    img.save(path, format="PNG")


def _seq_array(hist: np.ndarray) -> pa.Array:
    n, w = hist.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(hist.reshape(-1), pa.int64()), w)


def _generate_items(cfg: WorldConfig, rng) -> dict:
    """Items, their tags, multimodal embeddings and levels (row 0 = padding)."""
    k, n_items = cfg.latent_dim, cfg.n_items

    # Items (index 0 = padding; real items 1..n_items).
    mu = _normalise(rng.normal(size=(cfg.n_categories, k)))
    cat = np.concatenate([[0], rng.integers(0, cfg.n_categories, size=n_items)])
    z = _normalise(mu[cat] + cfg.item_noise * rng.normal(size=(n_items + 1, k)))
    z[0] = 0.0
    log_pop = np.concatenate([[-np.inf], rng.normal(size=n_items)])
    pop = np.exp(log_pop[1:])
    pop_cdf = np.cumsum(pop) / pop.sum()
    log_pop[0] = 0.0

    # Tags: 1 category tag + up to 4 latent-driven tags from the category's own pool.
    n_cat_tags = cfg.tags_per_category
    cat_tag = 1 + cat * (n_cat_tags + 1)
    if cfg.tag_projection:  # every tag of the category's pool reachable (the default uses the top-k of z)
        top = np.argsort(-(z @ rng.normal(size=(k, n_cat_tags))), axis=1)[:, : N_ITEM_TAGS - 1]
    else:
        top = np.argsort(-z, axis=1)[:, : N_ITEM_TAGS - 1] % n_cat_tags
    tags = np.zeros((n_items + 1, N_ITEM_TAGS), np.int64)
    tags[:, 0] = cat_tag
    tags[:, 1:] = cat_tag[:, None] + 1 + top
    n_tags_item = rng.integers(2, N_ITEM_TAGS + 1, size=n_items + 1)
    tags[np.arange(N_ITEM_TAGS)[None, :] >= n_tags_item[:, None]] = 0
    tags[0] = 0

    proj = rng.normal(size=(k, ITEM_EMB_DIM)) / np.sqrt(k)
    emb = (z @ proj + cfg.emb_noise * rng.normal(size=(n_items + 1, ITEM_EMB_DIM))).astype(np.float32)
    emb[0] = 0.0

    likes = _deciles(log_pop[1:] + cfg.level_noise * rng.normal(size=n_items))
    views = _deciles(log_pop[1:] + cfg.level_noise * rng.normal(size=n_items))
    likes = np.concatenate([[0], likes])
    views = np.concatenate([[0], views])
    items = {"mu": mu, "cat": cat, "z": z, "log_pop": log_pop, "pop_cdf": pop_cdf, "tags": tags, "emb": emb,
             "likes": likes, "views": views}
    return items


def _simulate_users(cfg: WorldConfig, rng, items: dict, n_users: int, first_user: int = 1,
                    start=None, rate=None) -> dict:
    """Warm-up and impressions of ``n_users`` users (ids ``first_user ..``), vectorised over users.
    ``start`` / ``rate``: the users' start times and event rates when drawn beforehand (chunked
    worlds need every row's time up front to split by time rank); else drawn here."""
    mu, z, log_pop, pop_cdf = items["mu"], items["z"], items["log_pop"], items["pop_cdf"]
    k, n_items = cfg.latent_dim, cfg.n_items
    s = _normalise(mu[rng.integers(0, cfg.n_categories, n_users)] + 0.5 * rng.normal(size=(n_users, k)))
    warm = rng.integers(cfg.warmup_min, cfg.warmup_max + 1, size=n_users)
    hist_cap = cfg.warmup_max + cfg.n_impressions
    hist = np.zeros((n_users, hist_cap), np.int64)  # right-aligned later; here append order
    hist_len = np.zeros(n_users, np.int64)

    def click(users, items):
        nonlocal s
        hist[users, hist_len[users]] = items
        hist_len[users] += 1
        s[users] = _normalise(
            cfg.rho * s[users] + (1 - cfg.rho) * z[items] + cfg.drift * rng.normal(size=(len(users), k))
        )

    for t in range(cfg.warmup_max):
        active = np.nonzero(warm > t)[0]
        if len(active):
            click(active, _choose(rng, s[active], z, log_pop, pop_cdf, 64, cfg.beta))

    # Impressions.
    if start is None:
        start = rng.random(n_users)
        rate = rng.uniform(0.5, 2.0, n_users)
    rows_user, rows_seq, rows_item, rows_p, rows_y, rows_time = [], [], [], [], [], []
    ar = np.arange(n_users)
    for t in range(cfg.n_impressions):
        interest = rng.random(n_users) < cfg.p_interest
        item = np.where(
            interest,
            _choose(rng, s, z, log_pop, pop_cdf, 64, cfg.beta * 0.5),
            np.minimum(np.searchsorted(pop_cdf, rng.random(n_users)) + 1, n_items),
        )
        logit = cfg.alpha * np.einsum("nk,nk->n", s, z[item]) + cfg.gamma * log_pop[item] + cfg.bias
        p = _sigmoid(logit)
        y = (rng.random(n_users) < p).astype(np.float32)
        # The last max_len clicks before this impression, left-padded, newest last.
        idx = hist_len[:, None] - cfg.max_len + np.arange(cfg.max_len)[None, :]
        seq = np.where(idx >= 0, hist[ar[:, None], np.maximum(idx, 0)], 0)
        rows_user.append(ar + first_user)
        rows_seq.append(seq)
        rows_item.append(item)
        rows_p.append(p)
        rows_y.append(y)
        rows_time.append(start + t * 0.05 / rate)
        clicked = np.nonzero(y > 0)[0]
        if len(clicked):
            click(clicked, item[clicked])

    rows = {
        "user_id": np.concatenate(rows_user),
        "item_seq": np.concatenate(rows_seq),
        "item_id": np.concatenate(rows_item),
        "p_click": np.concatenate(rows_p),
        "label": np.concatenate(rows_y),
        "time": np.concatenate(rows_time),
    }
    order = np.argsort(rows["time"], kind="stable")
    rows = {key: v[order] for key, v in rows.items()}
    rows["likes_level"] = items["likes"][rows["item_id"]]
    rows["views_level"] = items["views"][rows["item_id"]]
    return rows


def generate(cfg: WorldConfig, seed: int = 0) -> dict:
    """Simulate the world in memory. Returns items, users' impression rows and truth."""
    rng = np.random.default_rng(seed)
    items = _generate_items(cfg, rng)
    rows = _simulate_users(cfg, rng, items, cfg.n_users)
    return {"cat": items["cat"], "z": items["z"], "log_pop": items["log_pop"], "tags": items["tags"],
            "emb": items["emb"], "rows": rows}


def preset_name(config: WorldConfig) -> str:
    """The preset ``config`` equals, else ``"custom"``."""
    return next((name for name, c in PRESETS.items() if c == config), "custom")


def synthesize(out, preset: str = "default", seed: int = 0, overwrite: bool = False,
               config: WorldConfig | None = None) -> Path:
    """Write a synthetic MM-CTR world to ``out`` (``config`` overrides ``preset``).

    Everything is checked first: ``out`` is a folder (or absent), empty unless ``overwrite``, and
    ``overwrite`` only ever replaces an earlier synthetic world (a folder holding ``world.json``),
    never another folder. Files are written to a sibling staging folder, which then takes the place
    of ``out`` (the old world is renamed away first and deleted last), so an interrupted run never
    leaves a half-written world and a failed overwrite keeps the old one."""
    if config is None:
        if preset not in PRESETS:
            raise SsmrecError(f"unknown synthetic preset '{preset}' (choose from {', '.join(PRESETS)})")
        config = PRESETS[preset]
    elif not isinstance(config, WorldConfig):
        raise SsmrecError(f"config must be a WorldConfig, got {type(config).__name__}")
    used = preset_name(config)
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"{out}: output exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise SsmrecError(f"{out}: output directory exists and is not empty (use --overwrite)")
            if not (out / "world.json").is_file():
                raise OutputError(f"{out}: not a synthetic world (no world.json); --overwrite only replaces an "
                                  "earlier synthetic world, choose another output folder")
    check_output_dir(out.parent, "synthetic world")
    world = None if config.chunk_users else generate(config, seed)
    tmp = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "truth").mkdir(parents=True)
        if world is None:
            _write_world_chunked(tmp, config, seed, used)
        else:
            _write_world(tmp, world, config, seed, used)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # e.g. disk full while drawing covers
            raise OutputError(os_error_line(e, out, "write synthetic world")) from None
        raise
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as e:
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous world back
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(os_error_line(e, out, "replace synthetic world")) from None
    if old.is_symlink():  # ``out`` was a link to a folder: the link is replaced, its target kept
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _write_world(tmp: Path, world: dict, config: WorldConfig, seed: int, preset: str) -> None:
    _write_items(tmp, world, config, seed)
    rows = world["rows"]
    n = len(rows["label"])
    n_test = int(round(n * config.test_frac))
    n_valid = int(round(n * config.valid_frac))
    bounds = {"train": (0, n - n_valid - n_test), "valid": (n - n_valid - n_test, n - n_test), "test": (n - n_test, n)}
    for split, (a, b) in bounds.items():
        write_parquet_atomic(_rows_table(rows, a, b, split), tmp / f"{split}.parquet")
        write_parquet_atomic(_truth_table(rows, a, b), tmp / "truth" / f"{split}.parquet")
    write_json_atomic(tmp / "world.json", {"seed": seed, "preset": preset, **asdict(config)})


def _rows_table(rows: dict, a: int, b: int, split: str) -> pa.Table:
    cols = {
        "user_id": pa.array(rows["user_id"][a:b]),
        "item_seq": _seq_array(rows["item_seq"][a:b]),
        "likes_level": pa.array(rows["likes_level"][a:b]),
        "views_level": pa.array(rows["views_level"][a:b]),
        "item_id": pa.array(rows["item_id"][a:b]),
    }
    if split != "test":  # like the challenge, the test labels are withheld
        cols["label"] = pa.array(rows["label"][a:b])
    return pa.table(cols)


def _truth_table(rows: dict, a: int, b: int) -> pa.Table:
    return pa.table({"p_click": rows["p_click"][a:b], "label": rows["label"][a:b]})


ROW_GROUP_ROWS = 1 << 17  # rows per parquet row group of a chunked world: what the reader decodes at once


def _write_world_chunked(tmp: Path, config: WorldConfig, seed: int, preset: str, progress: bool = True) -> dict:
    """A world too large for memory: items first, then users in chunks of ``chunk_users``, each chunk's
    rows appended to the split files (``pyarrow.parquet.ParquetWriter``). Every row's time is drawn up
    front (4 floats per user) so the temporal split is by global time rank, with the exact
    ``split_rows`` counts; within a split, rows are ordered by time within each chunk of users. Peak
    memory is one chunk's simulation, not the world. Returns the rows written per split."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    items = _generate_items(config, rng)
    _write_items(tmp, items, config, seed)
    n_users, T = config.n_users, config.n_impressions
    trng = np.random.default_rng([seed, 1])
    start, rate = trng.random(n_users), trng.uniform(0.5, 2.0, n_users)
    times = (start[:, None] + np.arange(T)[None, :] * 0.05 / rate[:, None]).ravel()
    counts = config.split_rows
    total = sum(counts)
    if total > len(times):
        raise SsmrecError(f"split_rows {counts} need {total} rows; {n_users} users x {T} impressions give {len(times)}")
    ordered = np.sort(times)
    cut = [ordered[c] if c < len(ordered) else np.inf for c in np.cumsum(counts)]  # exclusive upper edges
    del times, ordered
    writers = {}
    written = dict.fromkeys(("train", "valid", "test"), 0)
    chunk = max(1, config.chunk_users)
    bar = tqdm(total=n_users, unit="user", desc="synthesize", disable=not progress, smoothing=0.1)
    try:
        for c, a in enumerate(range(0, n_users, chunk)):
            b = min(a + chunk, n_users)
            rows = _simulate_users(config, np.random.default_rng([seed, 2, c]), items, b - a, first_user=a + 1,
                                   start=start[a:b], rate=rate[a:b])
            split_of = np.searchsorted(cut, rows["time"], side="right")  # 0 train, 1 valid, 2 test, 3 dropped
            for k, split in enumerate(("train", "valid", "test")):
                sel = np.flatnonzero(split_of == k)
                if not len(sel):
                    continue
                part = {key: v[sel] for key, v in rows.items()}
                for name, table in ((split, _rows_table(part, 0, len(sel), split)),
                                    (f"truth/{split}", _truth_table(part, 0, len(sel)))):
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(tmp / f"{name}.parquet", table.schema)
                    writers[name].write_table(table, row_group_size=ROW_GROUP_ROWS)
                written[split] += len(sel)
            bar.update(b - a)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    if tuple(written.values()) != tuple(counts):
        raise SsmrecError(f"synthesized {written} rows, expected {dict(zip(written, counts))}")
    write_json_atomic(tmp / "world.json", {"seed": seed, "preset": preset, **asdict(config)})
    return written


def _write_items(tmp: Path, world: dict, config: WorldConfig, seed: int) -> None:
    n_items = config.n_items
    ids = np.arange(n_items + 1, dtype=np.int64)
    item_info = pa.table({
        "item_id": pa.array(ids),
        "item_tags": pa.FixedSizeListArray.from_arrays(pa.array(world["tags"].reshape(-1)), N_ITEM_TAGS),
        "item_emb_d128": pa.FixedSizeListArray.from_arrays(pa.array(world["emb"].reshape(-1)), ITEM_EMB_DIM),
    })
    write_parquet_atomic(item_info, tmp / "item_info.parquet")

    titles = _titles(np.random.default_rng(seed + 1), config, world["cat"][1:], world["z"][1:])
    cover_paths = [f"covers/{i:06d}.png" for i in ids[1:]]
    write_parquet_atomic(pa.table({"item_id": pa.array(ids[1:]), "item_title": titles, "cover_path": cover_paths}),
                  tmp / "item_feature.parquet")
    if config.write_covers:  # plain writes: the staging folder is the unit that appears atomically
        (tmp / "covers").mkdir()
        for i in range(1, n_items + 1):
            _draw_cover(tmp / cover_paths[i - 1], world["z"][i], int(world["cat"][i]), config.cover_size)

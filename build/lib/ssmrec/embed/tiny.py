"""A tiny, **randomly initialised** CLIP-architecture model saved like a real one, built offline.

It exercises the real loading path (``transformers.CLIPModel`` + ``CLIPProcessor`` from a
``save_pretrained`` folder) without network. It is **not CLIP**: its weights are random, so its image
vectors are a fixed random non-linear function of the pixels (colours and coarse layout survive,
semantics do not) and its text tower knows nothing about language. Use it for smoke tests and
offline demos only; for real embeddings point ``--image-encoder`` at real CLIP weights (README).

``python -m ssmrec.embed.tiny DIR`` writes one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def save_tiny_clip(out, seed: int = 0, hidden: int = 64, layers: int = 2, image_size: int = 32,
                   patch_size: int = 8, projection_dim: int = 64) -> Path:
    """Write a random-weight CLIPModel + CLIPProcessor (character-level BPE vocabulary) to ``out``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:  # every character alone and word-final: any lower-case title tokenizes
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok_dir = out / "_tokenizer_src"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    heads = max(1, hidden // 32)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ssmrec.embed.tiny OUT_DIR")
    print(save_tiny_clip(sys.argv[1]))

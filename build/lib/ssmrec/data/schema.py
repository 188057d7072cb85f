"""The MM-CTR challenge schema (MicroLens-1M MMCTR, WWW 2025 EReL@MIR), see reference doc §1."""

SPLITS = ("train", "valid", "test")
INTERACTION_COLUMNS = ("user_id", "item_seq", "item_id", "likes_level", "views_level", "label")
ITEM_INFO_COLUMNS = ("item_id", "item_tags", "item_emb_d128")
N_ITEM_TAGS = 5
ITEM_EMB_DIM = 128
# Real data: levels 0-9; FuxiCTR vocab 11 = 10 levels + OOV slot 10. Accept 0..10.
LEVEL_VOCAB = 11
DEFAULT_MAX_LEN = 64

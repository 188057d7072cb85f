"""The MM-CTR challenge schema (MicroLens-1M MMCTR, WWW 2025 EReL@MIR), see reference doc §1."""

SPLITS = ("train", "valid", "test")
INTERACTION_COLUMNS = ("user_id", "item_seq", "item_id", "likes_level", "views_level", "label")
ITEM_INFO_COLUMNS = ("item_id", "item_tags", "item_emb_d128")
N_ITEM_TAGS = 5
ITEM_EMB_DIM = 128
# Real data: levels 0-9; FuxiCTR vocab 11 = 10 levels + OOV slot 10. Accept 0..10.
LEVEL_VOCAB = 11
DEFAULT_MAX_LEN = 64


# ------------------------------------------------------------------------------------------------
# What a served checkpoint accepts (built by each task from a checkpoint's feature map and artifacts)
# ------------------------------------------------------------------------------------------------
from dataclasses import dataclass, field  # noqa: E402


@dataclass(frozen=True)
class CandidateFeature:
    """A named per-candidate input: integer values in ``[low, high]``; ``per_item`` (indexed by item id)
    fills it when a request does not send it (the item's value in the training data), else required."""

    name: str
    low: int
    high: int
    per_item: object = None  # torch.Tensor | None


@dataclass(frozen=True)
class ServingSchema:
    task: str
    model: str
    n_items: int  # ids 1 .. n_items - 1 (0 = padding)
    window: int  # the newest events the model reads (data.max_len)
    item_raw: list[str] | None = None  # the dataset's own item ids by index, when the checkpoint has them
    candidate_features: tuple[CandidateFeature, ...] = field(default_factory=tuple)
    padding_id: int | None = 0  # retrieval catalogues have none: every row is an item
    user_ids: list[str] | None = None  # retrieval: the users whose encoded rows the checkpoint carries
    user_features: dict | None = None  # retrieval: numeric / categorical names, vocab, stats

    def feature(self, name: str) -> CandidateFeature | None:
        return next((f for f in self.candidate_features if f.name == name), None)

"""The `landscape` settings a stage was given, read by name instead of as a dict.

The rules pass each stage only the `landscape` keys it depends on (common.smk: a direction
job gets the direction keys, a metric job the evaluation keys), so every field may be absent
(None) for some stage; a key that is not a field is an error, so a misspelt key cannot pass.
"""
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class LandscapeSettings:
    # the grid: [start, stop, points] per axis, points per tile, and the 1-D line
    alpha: list | None = None
    beta: list | None = None
    tile: list | None = None
    line: list | None = None
    # the directions
    direction_seed: int | str | None = None  # 'n/a' on a training path's PCA plane
    normalization: str | None = None  # filter, layer or none; pca-... on a PCA plane
    perturb_1d: bool | None = None
    perturb_frozen: bool | None = None
    orthogonal: bool | None = None
    # the evaluation: fixed masks, batch, where and in which arithmetic
    mask_seed: int | None = None
    view_seed: int | None = None  # the contrastive objective's fixed views
    batch_size: int | None = None
    device: str | None = None
    precision: str = "fp32"

    @classmethod
    def of(cls, settings: dict) -> "LandscapeSettings":
        """From a stage's settings (their `landscape` section)."""
        given = settings["landscape"]
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"landscape settings hold unknown keys {unknown}")
        return cls(**given)

"""A training recipe's augmentation of each batch (train/recipes.py), on the batch's device; the
operations themselves are in augment/crop.py, randaugment.py and erasing.py."""
import numpy as np
import torch
from timm.data import Mixup

from vitlandscape.augment import crop, erasing, randaugment
from vitlandscape.data import common


class Augmentation:
    """The recipe's augmentation of one training batch, on the batch's device: random resized
    crop, flip, RandAugment, random erasing, then mixup / cutmix. Seeded: the same seed gives
    the same batches, so a rerun or a replay trains bit-identically.

    Call with (normalised images, labels); returns (images, targets): class indices, or soft
    targets [B, classes] (label smoothing folded in) when mixing.
    """

    def __init__(self, recipe: dict, num_classes: int, seed: int):
        self.recipe = recipe
        self.generator = torch.Generator().manual_seed(seed)
        self.mixup = None
        if recipe["mixup"] or recipe["cutmix"]:
            # batch mode (one mixing per batch), as the MAE and DeiT recipes
            self.mixup = Mixup(mixup_alpha=recipe["mixup"], cutmix_alpha=recipe["cutmix"], prob=1.0,
                               switch_prob=0.5, mode="batch", label_smoothing=recipe["label_smoothing"],
                               num_classes=num_classes)

    def __call__(self, images, labels):
        recipe, generator = self.recipe, self.generator
        if recipe["crop_scale"]:
            images = crop.random_resized_crop(images, images.shape[-1], scale=tuple(recipe["crop_scale"]),
                                              generator=generator)
        if recipe["hflip"]:
            images = crop.horizontal_flip(images, p=recipe["hflip"], generator=generator)
        if recipe["rand_augment"]:
            mean, std = common.IMAGENET_MEAN.to(images.device), common.IMAGENET_STD.to(images.device)
            pixels = (images * std + mean).clamp(0, 1)
            ra = recipe["rand_augment"]
            pixels = randaugment.rand_augment(pixels, num_ops=ra["num_ops"], magnitude=ra["magnitude"],
                                              magnitude_std=ra.get("magnitude_std", 0.0), generator=generator)
            images = (pixels - mean) / std
        if recipe["random_erasing"]:
            images = erasing.random_erasing(images, prob=recipe["random_erasing"], generator=generator)
        if self.mixup is None:
            return images, labels
        return self._mixed(images, labels)

    def _mixed(self, images, labels):
        """timm's Mixup draws from numpy's global RNG: seed it from this generator, and put the
        caller's numpy state back."""
        state = np.random.get_state()
        np.random.seed(int(torch.randint(2 ** 31, (1,), generator=self.generator)))
        try:
            return self.mixup(images.clone(), labels)
        finally:
            np.random.set_state(state)

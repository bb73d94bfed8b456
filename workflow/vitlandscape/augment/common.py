"""What the batched training augmentations share (crop.py, randaugment.py, erasing.py).

The MAE / DeiT training augmentations work here on [B, C, H, W] float images on their
device. The official recipes transform one PIL image at a time: torchvision's
RandomResizedCrop (bicubic) and RandomHorizontalFlip, timm's RandAugment
'rand-m9-mstd0.5-inc1' (as timm's create_transform sets it up: bicubic, fill colour the
ImageNet mean) and, after normalisation, timm's RandomErasing(0.25, mode='pixel',
max_count=1). Here each works on a whole batch without a Python loop over its images: every
random choice is drawn up front on the CPU from the `generator` passed in (a CPU
torch.Generator), in a fixed order, then moved to the images' device, so the same generator
state gives bit-identical output on a device. Loops run only over attempts, op kinds and
filter taps. Random draws follow the originals' distributions, not their random streams
(Python's `random` and numpy there); an image's parameters are all drawn even when not used.
What else differs from the PIL originals is noted in crop.py and randaugment.py.
"""
import torch

F64 = torch.float64


def check_generator(generator):
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("augmentations draw from a CPU torch.Generator passed as `generator`")


def uniform(shape, low, high, generator):
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=F64)


def first_valid(valid, *values):
    """Per row, the values at the first True column of `valid` (column 0 where none)."""
    first = valid.to(torch.uint8).argmax(1, keepdim=True)
    return [v.gather(1, first).squeeze(1) for v in values]


def offsets(room, generator):
    """A uniform integer in [0, room] per element (room >= 0), as randint(0, room)."""
    return torch.floor(torch.rand(room.shape, generator=generator, dtype=F64) * (room + 1))

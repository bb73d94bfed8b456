"""Reference computations for the tests, written from the definitions in float64.

Plain tensor operations on a state_dict: no vitlandscape model code, no torch.nn modules,
no timm. A test that compares the library against these compares two implementations.
"""
import math

import torch


def f64(state: dict) -> dict:
    """float64 copies; tensors that require grad stay in the graph (a test may differentiate)."""
    return {k: v.double() for k, v in state.items()}


def layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def linear(x, s: dict, name: str):
    return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def block(x, s: dict, prefix: str, heads: int):
    """Pre-norm transformer block: x + attention(LN(x)), then + MLP(LN(x))."""
    n, t, d = x.shape
    h = layer_norm(x, s[f"{prefix}.norm1.weight"], s[f"{prefix}.norm1.bias"])
    qkv = linear(h, s, f"{prefix}.attn.qkv").reshape(n, t, 3, heads, d // heads)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [n, heads, t, d / heads]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    x = x + linear((weights @ v).transpose(1, 2).reshape(n, t, d), s, f"{prefix}.attn.proj")
    h = layer_norm(x, s[f"{prefix}.norm2.weight"], s[f"{prefix}.norm2.bias"])
    return x + linear(gelu(linear(h, s, f"{prefix}.mlp.fc1")), s, f"{prefix}.mlp.fc2")


def patch_embed(imgs, s: dict, p: int):
    """The p x p stride-p convolution as a matrix product over (channel, row, col) patches."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * p * p)
    weight = s["patch_embed.proj.weight"]
    return x @ weight.reshape(weight.shape[0], -1).T + s["patch_embed.proj.bias"]


def pixel_patches(imgs, p: int, norm_pix: bool = False):
    """MAE targets [N, L, p*p*C], pixels of a patch in (row, col, channel) order."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, p * p * c)
    if norm_pix:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1)
        x = (x - mean) / torch.sqrt(var + 1e-6)
    return x


def kept_patches(noise, mask_ratio: float) -> list:
    """Per image, the indices of the int(L * (1 - ratio)) lowest-noise patches."""
    keep = int(noise.shape[1] * (1 - mask_ratio))
    return [torch.argsort(row)[:keep] for row in noise]


def mae_forward(state: dict, arch: dict, imgs, noise, mask_ratio: float, norm_pix: bool = False):
    """The MAE pretext loss on fixed masks -> (loss, pred [N, L, p*p*C], mask [N, L] 1 = removed)."""
    s, imgs = f64(state), imgs.double()
    p, n, length = arch["patch_size"], noise.shape[0], noise.shape[1]
    kept = kept_patches(noise, mask_ratio)
    x = patch_embed(imgs, s, p) + s["pos_embed"][:, 1:]
    x = torch.stack([x[i, kept[i]] for i in range(n)])
    x = torch.cat([(s["cls_token"] + s["pos_embed"][:, :1]).expand(n, -1, -1), x], dim=1)
    for i in range(arch["depth"]):
        x = block(x, s, f"blocks.{i}", arch["num_heads"])
    x = layer_norm(x, s["norm.weight"], s["norm.bias"])

    y = linear(x, s, "decoder_embed")
    tokens = s["mask_token"].expand(n, length, -1).clone()
    for i in range(n):
        tokens[i, kept[i]] = y[i, 1:]
    y = torch.cat([y[:, :1], tokens], dim=1) + s["decoder_pos_embed"]
    for i in range(arch["decoder_depth"]):
        y = block(y, s, f"decoder_blocks.{i}", arch["decoder_num_heads"])
    pred = linear(layer_norm(y, s["decoder_norm.weight"], s["decoder_norm.bias"]), s, "decoder_pred")[:, 1:]

    mask = torch.ones(n, length, dtype=torch.float64)
    for i in range(n):
        mask[i, kept[i]] = 0
    per_patch = ((pred - pixel_patches(imgs, p, norm_pix)) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


def mae_loss(state, arch, imgs, noise, mask_ratio, norm_pix=False) -> float:
    return float(mae_forward(state, arch, imgs, noise, mask_ratio, norm_pix)[0])


def classifier_logits(state: dict, arch: dict, imgs, head: str):
    """A ViT classifying from the cls token; head 'probe' = BatchNorm (eval, no affine) + linear."""
    s, imgs = f64(state), imgs.double()
    x = patch_embed(imgs, s, arch["patch_size"])
    x = torch.cat([s["cls_token"].expand(len(x), -1, -1), x], dim=1) + s["pos_embed"]
    for i in range(arch["depth"]):
        x = block(x, s, f"blocks.{i}", arch["num_heads"])
    features = layer_norm(x, s["norm.weight"], s["norm.bias"])[:, 0]
    if head == "probe":
        features = (features - s["head.0.running_mean"]) / torch.sqrt(s["head.0.running_var"] + 1e-6)
        return linear(features, s, "head.1")
    return linear(features, s, "head")


def cross_entropy_and_accuracy(logits, labels) -> tuple[float, float]:
    picked = logits[torch.arange(len(labels)), labels]
    loss = (torch.logsumexp(logits, dim=-1) - picked).mean()
    return float(loss), float((logits.argmax(-1) == labels).double().mean())


def moved(state: dict, dirs: dict, a: float, b: float) -> dict:
    """theta + a * dx + b * dy in float64 (directions {'x': {...}, 'y': {...}})."""
    out = f64(state)
    for name, dx in dirs["x"].items():
        out[name] = out[name] + a * dx.double() + b * dirs["y"][name].double()
    return out

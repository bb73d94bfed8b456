"""Optimisers and parameter groups of the official MAE recipes (util/lars.py, util/lr_decay.py,
main_pretrain.py, main_finetune.py, main_linprobe.py)."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from conftest import TINY_ARCH
from vitlandscape.models.arch import build_mae
from vitlandscape.train.optim import Lars, make_optimizer, param_groups

# ---------------------------------------------------------------- LARS


def toy_params() -> dict:
    """Named tensors of a toy regression: 2-D weights, 1-D biases, a 2-D weight at zero
    (||p|| = 0), a 2-D weight with zero gradient (||d|| = 0 without weight decay) and one
    the loss never uses (no gradient)."""
    g = torch.Generator().manual_seed(0)
    return {
        "W": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "b": torch.randn(3, generator=g, dtype=torch.float64),
        "Z": torch.zeros(3, 5, dtype=torch.float64),
        "V": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "c": torch.randn(3, generator=g, dtype=torch.float64),
        "U": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "unused": torch.randn(2, 2, generator=g, dtype=torch.float64),
    }


def toy_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)


def toy_loss(p: dict, x, y):
    out = x @ (p["W"] + p["Z"]).T + p["b"] + torch.tanh(x @ p["V"].T + p["c"]) + 0 * p["U"].sum()
    return ((out - y) ** 2).mean()


# two groups: decayed (with the zero weight), and not decayed (with the zero-gradient weight)
GROUPS = [({"W", "b", "Z"}, {"lr": 0.5, "weight_decay": 0.1}),
          ({"V", "c", "U", "unused"}, {"lr": 0.2, "weight_decay": 0.0})]


def reference_lars(params: dict, x, y, steps: int, momentum: float, trust: float) -> dict:
    """The official LARS update in float64, from its definition, on plain tensors."""
    p = {k: v.clone().double() for k, v in params.items()}
    mu = {k: torch.zeros_like(v) for k, v in p.items()}
    hyper = {name: h for names, h in GROUPS for name in names}
    for _ in range(steps):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        loss = toy_loss(leaves, x.double(), y.double())
        used = [k for k in leaves if k != "unused"]
        grads = dict(zip(used, torch.autograd.grad(loss, [leaves[k] for k in used])))
        for k, grad in grads.items():
            lr, wd = hyper[k]["lr"], hyper[k]["weight_decay"]
            d = grad.clone()
            if p[k].dim() >= 2:
                d = d + wd * p[k]
                p_norm, d_norm = p[k].pow(2).sum().sqrt(), d.pow(2).sum().sqrt()
                q = trust * p_norm / d_norm if (p_norm > 0 and d_norm > 0) else 1.0
                d = d * q
            mu[k] = momentum * mu[k] + d
            p[k] = p[k] - lr * mu[k]
    return p


def lars_run(steps: int, momentum=0.9, trust=0.001):
    params = {k: v.clone().requires_grad_(True) for k, v in toy_params().items()}
    groups = [{"params": [params[k] for k in sorted(names)], **h} for names, h in GROUPS]
    optimizer = Lars(groups, momentum=momentum, trust_coefficient=trust)
    x, y = toy_data()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        toy_loss(params, x, y).backward()
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("momentum, trust", [(0.9, 0.001), (0.5, 0.05)])
def test_lars_matches_reference(momentum, trust):
    params, optimizer = lars_run(6, momentum, trust)
    x, y = toy_data()
    expected = reference_lars(toy_params(), x, y, 6, momentum, trust)
    start = toy_params()
    for k in params:
        assert torch.isfinite(params[k]).all(), k
        torch.testing.assert_close(params[k].detach(), expected[k], rtol=1e-10, atol=1e-12, msg=k)
    # the parameters with a nonzero gradient moved; U (zero gradient, no decay: q = 1, d = 0) did not
    for k in ("W", "b", "Z", "V", "c"):
        assert not torch.equal(params[k].detach(), start[k]), k
    torch.testing.assert_close(params["U"].detach(), start["U"])
    torch.testing.assert_close(params["unused"].detach(), start["unused"])
    assert params["unused"] not in optimizer.state
    assert optimizer.defaults == {"lr": 0.0, "weight_decay": 0.0, "momentum": momentum, "trust_coefficient": trust}


def test_lars_first_step_by_hand():
    """One step from a zero momentum buffer, written out per parameter kind."""
    start = toy_params()
    leaves = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    x, y = toy_data()
    toy_loss(leaves, x, y).backward()
    grad = {k: v.grad for k, v in leaves.items()}
    params, _ = lars_run(1, trust=0.001)
    after = {k: v.detach() for k, v in params.items()}
    # 1-D: plain SGD step, no weight decay (0.1 in this group), no trust ratio
    torch.testing.assert_close(after["b"], start["b"] - 0.5 * grad["b"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(after["c"], start["c"] - 0.2 * grad["c"], rtol=1e-12, atol=1e-14)
    # 2-D with weight decay: d = g + wd p, scaled to 0.001 * ||p|| / ||d||
    d = grad["W"] + 0.1 * start["W"]
    torch.testing.assert_close(after["W"], start["W"] - 0.5 * 0.001 * start["W"].norm() / d.norm() * d,
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close((after["W"] - start["W"]).norm(), 0.5 * 0.001 * start["W"].norm(), rtol=1e-12, atol=0)
    # 2-D without weight decay: d = g scaled
    torch.testing.assert_close(after["V"], start["V"] - 0.2 * 0.001 * start["V"].norm() / grad["V"].norm() * grad["V"],
                               rtol=1e-12, atol=1e-14)
    # ||p|| = 0: q = 1, the full (decayed, here decay of zero) gradient step
    torch.testing.assert_close(after["Z"], -0.5 * grad["Z"], rtol=1e-12, atol=1e-14)
    assert grad["Z"].abs().sum() > 0


def test_lars_float32_and_per_group_lr():
    """float32 tensors step as the float64 reference does, to float32 precision, and the lr
    of each group is its own (the caller sets lr * lr_scale per group)."""
    params = {k: v.float().requires_grad_(True) for k, v in toy_params().items()}
    groups = [{"params": [params[k] for k in sorted(names)], **h} for names, h in GROUPS]
    optimizer = Lars(groups)
    x, y = (t.float() for t in toy_data())
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        toy_loss(params, x, y).backward()
        optimizer.step()
    expected = reference_lars(toy_params(), *toy_data(), 3, 0.9, 0.001)
    for k in params:
        assert params[k].dtype == torch.float32
        torch.testing.assert_close(params[k].detach().double(), expected[k], rtol=1e-5, atol=1e-6, msg=k)


def test_lars_rejects_negative_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        Lars([torch.zeros(2, requires_grad=True)], momentum=-0.1)


# ---------------------------------------------------------------- parameter groups

DEPTH = 12


def tiny_vit(global_pool: str = "avg", depth: int = DEPTH) -> VisionTransformer:
    """ViT-B/16 depth and naming at a tiny width."""
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=24, depth=depth, num_heads=2,
                             num_classes=10, qkv_bias=True, global_pool=global_pool)


def official_layer_id(name: str, depth: int) -> int:
    """util/lr_decay.py: get_layer_id_for_vit with num_layers = len(model.blocks) + 1."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return depth + 1


def group_table(model: nn.Module, groups: list[dict]) -> dict:
    """parameter name -> (lr_scale, weight_decay); each trainable tensor at most once."""
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for group in groups:
        assert set(group) >= {"params", "weight_decay", "lr_scale"}
        for p in group["params"]:
            name = names[id(p)]
            assert name not in table, f"{name} in two groups"
            table[name] = (group["lr_scale"], group["weight_decay"])
    return table


@pytest.mark.parametrize("global_pool", ["avg", "token"])
@pytest.mark.parametrize("layer_decay", [0.65, 0.75])
def test_layer_decay_matches_official_table(global_pool, layer_decay):
    model = tiny_vit(global_pool)
    no_wd = model.no_weight_decay()
    assert {"cls_token", "pos_embed"} <= no_wd
    table = group_table(model, param_groups(model, 0.05, layer_decay, no_wd))
    expected = {}
    for name, p in model.named_parameters():
        scale = layer_decay ** (DEPTH + 1 - official_layer_id(name, DEPTH))
        expected[name] = (scale, 0.0 if (p.ndim == 1 or name in no_wd) else 0.05)
    assert table.keys() == expected.keys()
    for name in expected:
        assert table[name][0] == pytest.approx(expected[name][0], rel=1e-12), name
        assert table[name][1] == expected[name][1], name
    # the layers spelled out: the stem is layer 0, block i layer i + 1, the rest layer depth + 1
    top = DEPTH + 1
    assert table["patch_embed.proj.weight"] == (pytest.approx(layer_decay ** top), 0.05)
    assert table["cls_token"] == (pytest.approx(layer_decay ** top), 0.0)
    assert table["pos_embed"] == (pytest.approx(layer_decay ** top), 0.0)
    assert table["blocks.0.attn.qkv.weight"] == (pytest.approx(layer_decay ** 12), 0.05)
    assert table["blocks.5.norm1.weight"] == (pytest.approx(layer_decay ** 7), 0.0)
    assert table["blocks.11.mlp.fc2.weight"] == (pytest.approx(layer_decay), 0.05)
    assert table["blocks.11.mlp.fc2.bias"] == (pytest.approx(layer_decay), 0.0)
    assert table["head.weight"] == (1.0, 0.05)
    assert table["head.bias"] == (1.0, 0.0)
    final_norm = "fc_norm" if global_pool == "avg" else "norm"
    assert f"{final_norm}.weight" in table and table[f"{final_norm}.weight"] == (1.0, 0.0)
    assert ("norm.weight" in table) == (global_pool == "token")  # avg pool: norm is an Identity


def test_groups_split_by_layer_and_decay():
    """As the official recipe: one group per (layer, decay or not), no empty group."""
    model = tiny_vit()
    groups = param_groups(model, 0.05, 0.75, model.no_weight_decay())
    assert all(group["params"] for group in groups)
    keys = [(group["lr_scale"], group["weight_decay"]) for group in groups]
    assert len(keys) == len(set(keys)) == 2 * (DEPTH + 2)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("layer_decay", [None, 1.0])
def test_no_layer_decay_means_unit_scales(layer_decay):
    model = tiny_vit("token")
    groups = param_groups(model, 0.05, layer_decay)
    assert [g["lr_scale"] for g in groups] == [1.0] * len(groups)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.05]


def test_layer_decay_needs_blocks():
    with pytest.raises(ValueError, match="blocks"):
        param_groups(nn.Linear(3, 2), 0.05, layer_decay=0.75)


def test_no_weight_decay_list_and_frozen_parameters():
    model = tiny_vit("token")
    table = group_table(model, param_groups(model, 0.05))
    assert table["cls_token"] == table["pos_embed"] == (1.0, 0.05)  # not listed: they decay (3-D)
    table = group_table(model, param_groups(model, 0.05, no_weight_decay=["cls_token"]))
    assert table["cls_token"] == (1.0, 0.0) and table["pos_embed"] == (1.0, 0.05)
    table = group_table(model, param_groups(model, 0.05, no_weight_decay={"pos_embed", "cls_token"}))
    assert table["cls_token"] == table["pos_embed"] == (1.0, 0.0)
    assert table["blocks.3.attn.proj.weight"] == (1.0, 0.05)
    # names are matched exactly, not as prefixes or patterns
    table = group_table(model, param_groups(model, 0.05, no_weight_decay=["blocks.3", "head.*"]))
    assert table["blocks.3.attn.proj.weight"] == (1.0, 0.05) and table["head.weight"] == (1.0, 0.05)
    # a frozen parameter (the fixed sin-cos position embedding) is left out
    model.pos_embed.requires_grad_(False)
    table = group_table(model, param_groups(model, 0.05, 0.75, model.no_weight_decay()))
    assert "pos_embed" not in table and "cls_token" in table
    assert len(table) == len(list(model.parameters())) - 1


def test_linear_probe_groups_hold_only_the_head():
    """main_linprobe.py: BatchNorm1d(affine=False) + Linear head, everything else frozen."""
    model = tiny_vit("token")
    model.head = nn.Sequential(nn.BatchNorm1d(24, affine=False, eps=1e-6), nn.Linear(24, 10))
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    head = [model.head[1].weight, model.head[1].bias]
    for layer_decay in (None, 0.75):
        groups = param_groups(model, 0.0, layer_decay)
        assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in head}
        assert group_table(model, groups) == {"head.1.weight": (1.0, 0.0), "head.1.bias": (1.0, 0.0)}
    table = group_table(model, param_groups(model, 0.05))
    assert table == {"head.1.weight": (1.0, 0.05), "head.1.bias": (1.0, 0.0)}
    groups = param_groups(model.head, 0.05)  # the trainable sub-module itself
    assert group_table(model.head, groups) == {"1.weight": (1.0, 0.05), "1.bias": (1.0, 0.0)}
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in head}
    optimizer = make_optimizer("lars", groups)
    assert isinstance(optimizer, Lars)


def test_pretraining_groups():
    """main_pretrain.py: no decay for 1-D tensors and '.bias' names; cls_token and mask_token
    decay; the fixed position embeddings do not train; no layer decay."""
    model = build_mae(TINY_ARCH)
    table = group_table(model, param_groups(model, 0.05))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert table.keys() == trainable.keys()
    assert "pos_embed" not in table and "decoder_pos_embed" not in table
    assert table["cls_token"] == table["mask_token"] == (1.0, 0.05)
    for name, p in trainable.items():
        assert table[name] == (1.0, 0.0 if p.ndim == 1 else 0.05), name

    class Odd(nn.Module):  # a '.bias' that is not 1-D still does not decay
        def __init__(self):
            super().__init__()
            self.proj = nn.Module()
            self.proj.bias = nn.Parameter(torch.zeros(2, 3))
            self.scale = nn.Parameter(torch.ones(2, 3))
    odd = Odd()
    assert group_table(odd, param_groups(odd, 0.05)) == {"proj.bias": (1.0, 0.0), "scale": (1.0, 0.05)}


# ---------------------------------------------------------------- make_optimizer


def test_make_optimizer():
    model = tiny_vit("token", depth=2)
    groups = param_groups(model, 0.05, 0.75, model.no_weight_decay())
    adamw = make_optimizer("adamw", groups, betas=(0.8, 0.99))
    assert type(adamw) is torch.optim.AdamW
    assert len(adamw.param_groups) == len(groups)
    for mine, theirs in zip(groups, adamw.param_groups):
        assert theirs["betas"] == (0.8, 0.99) and theirs["lr"] == 0.0
        assert theirs["weight_decay"] == mine["weight_decay"] and theirs["lr_scale"] == mine["lr_scale"]
    assert make_optimizer("adamw", param_groups(model, 0.05)).param_groups[0]["betas"] == (0.9, 0.95)
    lars = make_optimizer("lars", param_groups(model, 0.05), momentum=0.8, trust_coefficient=0.01)
    assert type(lars) is Lars
    assert all(g["momentum"] == 0.8 and g["trust_coefficient"] == 0.01 and g["lr"] == 0.0
               for g in lars.param_groups)
    assert make_optimizer("lars", param_groups(model, 0.05)).defaults["momentum"] == 0.9
    assert make_optimizer("lars", param_groups(model, 0.05)).defaults["trust_coefficient"] == 0.001
    with pytest.raises(ValueError, match="adamw.*lars"):
        make_optimizer("sgd", groups)

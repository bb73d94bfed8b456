"""Sharpness-aware minimisation (recipe element `sam`): the SAM / ASAM step against its closed
form, around SGD, AdamW and LARS; the training loop's second pass (same batch, same random
draws, same precision; the lr schedule reaching the base optimizer); MAE, RC-MAE and the linear
probe under SAM; the planner's second pass; the schema's checks."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, TINY_ARCH, model_settings
from vitlandscape import configcheck, plan
from vitlandscape.data import prepare
from vitlandscape.models.arch import build_mae
from vitlandscape.train import loops, optim, recipes, stages


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recomputing(optimizer, loss):
    """SAM's closure: zero the gradients, compute `loss()` again and its gradients."""
    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value
    return closure


def _with_recipe(cfg: dict, stage: str, **recipe) -> dict:
    return {**cfg, stage: {**cfg[stage], "recipe": {**(cfg[stage].get("recipe") or {}), **recipe}}}


# ---------------------------------------------------------------- the step against its closed form


def quadratic():
    """L(w) = 0.5 w^T A w - b^T w on w = (u, v), two parameters of 3 and 2 x 2 elements (float64)."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(7, 7, generator=g, dtype=torch.float64)
    a = m @ m.T / 7 + torch.eye(7, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    w0 = torch.randn(7, generator=g, dtype=torch.float64)
    u = nn.Parameter(w0[:3].clone())
    v = nn.Parameter(w0[3:].clone().view(2, 2))

    def loss():
        w = torch.cat([u, v.flatten()])
        return 0.5 * w @ a @ w - b @ w

    return a, b, w0, (u, v), loss


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_is_the_closed_form_on_a_quadratic(adaptive):
    a, b, w0, params, loss = quadratic()
    lr, rho = 0.1, 0.3
    sam = optim.SAM(params, torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    sam.zero_grad()
    loss().backward()
    returned = sam.step(recomputing(sam, loss))

    def grad(w):
        return a @ w - b

    g = grad(w0)
    if adaptive:  # ASAM: e_i = rho * w_i^2 g_i / ||w * g||
        e = rho * w0 ** 2 * g / torch.linalg.vector_norm(w0.abs() * g)
    else:
        e = rho * g / torch.linalg.vector_norm(g)
    expected = w0 - lr * grad(w0 + e)
    got = torch.cat([params[0].detach(), params[1].detach().flatten()])
    assert torch.allclose(got, expected, rtol=1e-13, atol=1e-14), (got - expected).abs().max()
    w = w0 + e
    assert float(returned.detach()) == pytest.approx(float(0.5 * w @ a @ w - b @ w), rel=1e-13)  # the loss at w + e


def test_a_parameter_without_gradient_is_not_moved_and_the_closure_is_required():
    a, b, w0, (u, v), loss = quadratic()
    frozen = nn.Parameter(torch.ones(3, dtype=torch.float64))
    sam = optim.SAM([u, v, frozen], torch.optim.SGD, rho=0.1, lr=0.1)
    loss().backward()
    with pytest.raises(ValueError, match="closure"):
        sam.step()

    sam.step(recomputing(sam, loss))
    assert torch.equal(frozen.detach(), torch.ones(3, dtype=torch.float64)) and frozen.grad is None
    with pytest.raises(ValueError, match="rho"):
        optim.SAM([u], torch.optim.SGD, rho=0.0, lr=0.1)


def _regression():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)  # the layers' initialisation: the same whatever ran before
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    return model, x, y


def _grads_at(model, weights: dict, x, y) -> dict:
    """The gradient of the regression loss at `weights` (by name), by hand on a copy."""
    copied = copy.deepcopy(model)
    copied.load_state_dict(weights)
    F.mse_loss(copied(x), y).backward()
    return {n: p.grad.clone() for n, p in copied.named_parameters()}


@pytest.mark.parametrize("adaptive", [False, True])
def test_adamw_underneath_steps_with_the_gradient_at_w_plus_e(adaptive):
    """Two steps: the weights equal AdamW's own steps taken with the gradients at w + e, e computed
    by hand; weight decay (on 2-D weights) acts on w, not on w + e."""
    model, x, y = _regression()
    reference = copy.deepcopy(model)
    rho, lr = 0.2, 0.01
    sam = optim.make_optimizer("adamw", optim.param_groups(model, 0.1), betas=(0.9, 0.95),
                               sam="asam" if adaptive else "sam", rho=rho)
    assert isinstance(sam, optim.SAM) and type(sam.base_optimizer) is torch.optim.AdamW
    adamw = torch.optim.AdamW(optim.param_groups(reference, 0.1), lr=0.0, betas=(0.9, 0.95))
    for opt in (sam, adamw):
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
    for _ in range(2):
        w = {n: p.detach().clone() for n, p in model.named_parameters()}
        g = _grads_at(model, w, x, y)
        scaled = {n: g[n] * w[n].abs() if adaptive else g[n] for n in g}
        norm = math.sqrt(sum(float(s.pow(2).sum()) for s in scaled.values()))
        e = {n: rho * (scaled[n] * w[n].abs() if adaptive else scaled[n]) / norm for n in g}
        g_moved = _grads_at(model, {n: w[n] + e[n] for n in w}, x, y)

        sam.zero_grad()
        F.mse_loss(model(x), y).backward()
        sam.step(recomputing(sam, lambda: F.mse_loss(model(x), y)))
        for n, p in reference.named_parameters():
            p.grad = g_moved[n]
        adamw.step()
        for (n, p), q in zip(model.named_parameters(), reference.parameters()):
            # float64; the two sides sum the norm of e in another order, and AdamW divides by
            # sqrt(v): over 60 initialisations the weights differed by at most 2.2e-13 (either
            # kernel set), where one step moves them by about lr = 1e-2
            assert torch.allclose(p, q, rtol=0, atol=1e-11), n
    assert not torch.equal(model[0].weight, _regression()[0][0].weight)


def test_lars_underneath_and_zero_grad_and_state_dict():
    model, x, y = _regression()
    sam = optim.make_optimizer("lars", optim.param_groups(model, 0.0), sam="sam", rho=0.05)
    assert type(sam.base_optimizer) is optim.Lars and sam.param_groups[0]["momentum"] == 0.9
    for group in sam.param_groups:
        group["lr"] = 0.5

    def one_step(opt, net):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step(recomputing(opt, lambda: F.mse_loss(net(x), y)))

    before = copy.deepcopy(model.state_dict())
    one_step(sam, model)
    assert not _same(before, model.state_dict())
    sam.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # a copy of the model and a new SAM loaded from the state dict take the same next step
    twin = copy.deepcopy(model)
    loaded = optim.make_optimizer("lars", optim.param_groups(twin, 0.0), sam="sam", rho=0.05)
    loaded.load_state_dict(copy.deepcopy(sam.state_dict()))
    assert loaded.param_groups is loaded.base_optimizer.param_groups and loaded.param_groups[0]["lr"] == 0.5
    one_step(sam, model)
    one_step(loaded, twin)
    assert _same(model.state_dict(), twin.state_dict())
    with pytest.raises(ValueError, match="none, sam, asam"):
        optim.make_optimizer("adamw", optim.param_groups(model, 0.0), sam="gsam")


# ---------------------------------------------------------------- the training loop


def test_the_loops_lr_reaches_the_base_optimizer():
    """The loop sets `group['lr']` on `optimizer.param_groups`: the base optimizer's groups are those
    dicts, and AdamW's first step moves each weight by its group's lr (|m / sqrt(v)| = 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 2))
    groups = [{"params": list(model[0].parameters()), "weight_decay": 0.0, "lr_scale": 0.5},
              {"params": list(model[1].parameters()), "weight_decay": 0.0, "lr_scale": 1.0}]
    sam = optim.make_optimizer("adamw", groups, sam="sam", rho=0.05)
    assert sam.base_optimizer.param_groups is sam.param_groups
    lr = 1e-3
    for group in sam.param_groups:
        group["lr"] = lr * group["lr_scale"]
    assert [g["lr"] for g in sam.base_optimizer.param_groups] == [lr * 0.5, lr]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 6), torch.randn(8, 2)
    F.mse_loss(model(x), y).backward()
    sam.step(recomputing(sam, lambda: F.mse_loss(model(x), y)))
    moved = [(p.detach() - b).abs() for p, b in zip(model.parameters(), before)]
    scales = [0.5, 0.5, 1.0, 1.0]
    for step, scale in zip(moved, scales):
        assert torch.allclose(step, torch.full_like(step, lr * scale), rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_second_pass_repeats_the_steps_random_draws_in_its_precision(precision):
    """Each SAM step calls the step loss twice with the same random draws (the MAE mask's noise
    here) and in the recipe's precision; the draws of the first passes are those of a run
    without SAM, and the curve records the first pass's loss."""
    def run(sam):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        draws, dtypes = [], []

        def step_loss(x, y, step):
            noise = torch.rand(3)
            draws.append((step, noise))
            out = model(x)
            dtypes.append(out.dtype)
            return F.mse_loss(out.float(), y) + noise.sum() * 0, {"noise": noise.sum()}

        base = model_settings("mae")
        cfg = _with_recipe(base, "pretrain", precision=precision, sam=sam) if sam else \
            _with_recipe(base, "pretrain", precision=precision)
        stage_cfg = {**recipes.resolve(cfg, "pretrain"), "epochs": 2, "warmup_epochs": 0, "lr": 1e-2}
        g = torch.Generator().manual_seed(1)
        batches = [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)) for _ in range(3)]
        history = loops.fit(optim.param_groups(model, 0.0), step_loss, batches, stage_cfg, "test")
        return draws, dtypes, history, model

    plain, plain_dtypes, plain_history, plain_model = run(None)
    draws, dtypes, history, model = run("sam")
    assert [s for s, _ in draws] == [s for s in range(6) for _ in range(2)]
    firsts, seconds = draws[0::2], draws[1::2]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(firsts, seconds))  # the same draws twice a step
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(firsts, plain))  # and the RNG goes on as without SAM
    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    assert set(dtypes) == set(plain_dtypes) == {expected}
    assert not torch.equal(model.weight, plain_model.weight)
    assert history[0]["lr"] == plain_history[0]["lr"] and math.isfinite(history[-1]["loss"])


# ---------------------------------------------------------------- the stages under SAM


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_mae_pretraining_with_sam_trains_and_is_deterministic(tmp_path, data_file, precision):
    cfg = _with_recipe(model_settings("mae"), "pretrain", precision=precision)
    plain = stages.pretrain(cfg, data_file, tmp_path / "plain.pt")
    sam_cfg = _with_recipe(cfg, "pretrain", sam="sam", sam_rho=0.1)
    first = stages.pretrain(sam_cfg, data_file, tmp_path / "a.pt")
    second = stages.pretrain(sam_cfg, data_file, tmp_path / "b.pt")
    assert all(math.isfinite(h["loss"]) for h in first["history"])
    assert _same(first["model"], second["model"]) and first["history"] == second["history"]
    assert not _same(first["model"], plain["model"])
    assert all(v.dtype == torch.float32 for v in first["model"].values())
    asam = stages.pretrain(_with_recipe(cfg, "pretrain", sam="asam", sam_rho=0.1), data_file, tmp_path / "c.pt")
    assert not _same(asam["model"], first["model"]) and math.isfinite(asam["history"][-1]["loss"])


def test_rcmae_with_sam_runs_the_teacher_once_a_step_and_updates_it_after(tmp_path, data_file, monkeypatch):
    calls = {"teacher": 0, "student": 0, "reused": 0}
    teacher_prediction, step_losses = loops.teacher_prediction, loops.rcmae_step_losses

    def counted_teacher(*args):
        calls["teacher"] += 1
        return teacher_prediction(*args)

    def counted_student(*args):
        calls["student"] += 1
        calls["reused"] += args[-1] is not None
        return step_losses(*args)

    monkeypatch.setattr(loops, "teacher_prediction", counted_teacher)
    monkeypatch.setattr(loops, "rcmae_step_losses", counted_student)
    cfg = _with_recipe(model_settings("rcmae"), "pretrain", sam="sam")
    first = stages.pretrain(cfg, data_file, tmp_path / "a.pt")
    steps = calls["teacher"]
    assert steps == 2 * 2  # 2 epochs of 72 // 32 batches
    assert calls == {"teacher": steps, "student": 2 * steps, "reused": 2 * steps}
    second = stages.pretrain(cfg, data_file, tmp_path / "b.pt")
    assert _same(first["teacher"], second["teacher"]) and _same(first["student"], second["student"])
    assert not _same(first["teacher"], first["student"])  # the EMA teacher lags the student
    plain = stages.pretrain(model_settings("rcmae"), data_file, tmp_path / "c.pt")
    assert not _same(first["teacher"], plain["teacher"])


@pytest.mark.parametrize("features", ["streaming", "cached"])
def test_linear_probe_with_sam_runs_the_encoder_and_updates_batch_norm_once_a_step(data_file, monkeypatch, features):
    """LARS under SAM trains the head; the frozen encoder runs once a step, and the head's batch
    norm, which sees the same frozen features with or without SAM, ends with the same statistics."""
    prepared = prepare.load_prepared(data_file)
    torch.manual_seed(0)
    state = build_mae(TINY_ARCH).state_dict()
    encode, counts = loops.encode, []

    def counted(model, images):
        counts[-1] += 1
        return encode(model, images)

    monkeypatch.setattr(loops, "encode", counted)
    results = {}
    for sam in ("none", "sam"):
        counts.append(0)
        cfg = _with_recipe(model_settings("mae"), "probe", sam=sam)
        cfg["probe"]["features"] = features
        model, history = stages.downstream_training(cfg, "probe", prepared, torch.device("cpu"))(state)
        assert math.isfinite(history[-1]["loss"])
        results[sam] = {k: v.clone() for k, v in model.state_dict().items()}
    assert counts[0] == counts[1] > 0
    plain, sam = results["none"], results["sam"]
    assert torch.equal(plain["head.0.running_mean"], sam["head.0.running_mean"])
    assert torch.equal(plain["head.0.running_var"], sam["head.0.running_var"])
    assert torch.equal(plain["head.0.num_batches_tracked"], sam["head.0.num_batches_tracked"])
    assert not torch.equal(plain["head.1.weight"], sam["head.1.weight"])
    assert torch.equal(plain["blocks.0.attn.qkv.weight"], sam["blocks.0.attn.qkv.weight"])  # frozen encoder


# ---------------------------------------------------------------- planner and config


def test_the_planner_counts_the_second_pass():
    for method in ("mae", "rcmae", "supervised"):
        cfg = model_settings(method)
        sam = _with_recipe(cfg, "pretrain", sam="sam")
        ratio = plan.stage_flops(sam, "pretrain", 10, 100) / plan.stage_flops(cfg, "pretrain", 10, 100)
        assert ratio == (7 / 4 if method == "rcmae" else 2)  # RC-MAE: the teacher's forward once a step
    cfg = model_settings("mae")
    assert plan.stage_flops(_with_recipe(cfg, "finetune", sam="asam"), "finetune", 10, 100) == \
        2 * plan.stage_flops(cfg, "finetune", 10, 100)
    # the probe: the head's passes double, the frozen encoder's do not
    head = 2 * TINY_ARCH["embed_dim"] * 10  # FLOPs of the linear head's forward, 10 classes
    extra = plan.stage_flops(_with_recipe(cfg, "probe", sam="sam"), "probe", 10, 100) - \
        plan.stage_flops(cfg, "probe", 10, 100)
    assert extra == 100 * cfg["probe"]["epochs"] * 3 * head


def test_old_recipes_say_none_and_the_schema_refuses_bad_values():
    for stage in ("pretrain", "probe", "finetune"):
        recipe = recipes.resolve(model_settings("mae"), stage)["recipe"]
        assert (recipe["sam"], recipe["sam_rho"]) == ("none", 0.05) and not recipes.uses_sam(recipe)
    assert recipes.resolve(model_settings("supervised"), "pretrain")["recipe"]["sam"] == "none"
    schema = ROOT / "config" / "schema.yaml"
    for recipe, key in (({"sam": "gsam"}, "models.m.pretrain.recipe.sam"),
                        ({"sam": "sam", "sam_rho": 0}, "models.m.pretrain.recipe.sam_rho"),
                        ({"sam_rho": -0.1}, "models.m.pretrain.recipe.sam_rho")):
        config = {"models": {"m": {"method": "mae", "arch": dict(TINY_ARCH), "pretrain": {"recipe": recipe}}}}
        with pytest.raises(configcheck.ConfigError, match=key.replace(".", r"\.")):
            configcheck.validate_config(config, schema)
    config = {"models": {"m": {"method": "mae", "arch": dict(TINY_ARCH),
                               "probe": {"recipe": {"sam": "asam", "sam_rho": 0.5}}}}}
    configcheck.validate_config(config, schema)
    assert not configcheck.problems(config)

"""Random directions in weight space (Li et al. 2018), saved as safetensors.

File contract: tensors `x.<param>` and `y.<param>` with `<param>` named as in the model's
state_dict; parameters that are not perturbed are absent. Metadata records the settings
and the sha256 of the checkpoint the directions were normalised against.
"""

import torch
from safetensors.torch import load_file, safe_open

from vitlandscape.storage.outputs import write_safetensors


def perturbed_names(model: torch.nn.Module, perturb_1d: bool, perturb_frozen: bool) -> list[str]:
    """Parameters to perturb: weights with ndim >= 2 that train, plus 1-D / frozen ones on request.

    Frozen means requires_grad=False in the model definition (e.g. the fixed sin-cos
    position embeddings), not parameters frozen by a training recipe.
    """
    return [name for name, p in model.named_parameters()
            if (p.ndim >= 2 or perturb_1d) and (p.requires_grad or perturb_frozen)]


def normalize(d: torch.Tensor, w: torch.Tensor, how: str) -> torch.Tensor:
    """Rescale direction `d` to the scale of weight `w`.

    filter: every slice along dim 0 gets the norm of the same slice of `w`
    (a 1-D tensor counts as one filter); layer: the whole tensor gets ||w||; none: unchanged.
    """
    if how == "none":
        return d
    if how == "layer" or d.ndim < 2:
        return d * (w.norm() / (d.norm() + 1e-10))
    if how == "filter":
        dims = tuple(range(1, d.ndim))
        w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
        return d * (w_norm / (d_norm + 1e-10))
    raise ValueError(f"unknown normalization {how!r}; use filter, layer or none")


def make(model: torch.nn.Module, seed: int, normalization: str = "filter", perturb_1d: bool = False,
         perturb_frozen: bool = False, orthogonal: bool = False) -> dict[str, torch.Tensor]:
    """Two Gaussian directions {'x.<name>': ..., 'y.<name>': ...} normalised to `model`'s weights.

    With `orthogonal`, y loses its component along x after normalisation (its filter norms
    then match the weights' only approximately).
    """
    params = dict(model.named_parameters())
    names = perturbed_names(model, perturb_1d, perturb_frozen)
    if not names:
        raise ValueError("no parameter is perturbed: check perturb_1d / perturb_frozen")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for axis in ("x", "y"):
        for name in names:
            w = params[name].detach().float().cpu()
            d = torch.randn(w.shape, generator=generator, dtype=torch.float32)
            out[f"{axis}.{name}"] = normalize(d, w, normalization).contiguous()
    if orthogonal:
        xs = torch.cat([out[f"x.{n}"].flatten() for n in names]).double()
        ys = torch.cat([out[f"y.{n}"].flatten() for n in names]).double()
        coef = float(xs @ ys / (xs @ xs))
        for name in names:
            out[f"y.{name}"] = (out[f"y.{name}"].double() - coef * out[f"x.{name}"].double()).float()
    return out


def save(directions: dict, path, metadata: dict) -> None:
    write_safetensors(directions, {k: str(v) for k, v in metadata.items()}, path)


def split(tensors: dict, source="directions") -> dict:
    """{'x.<name>': ..., 'y.<name>': ...} -> {'x': {name: ...}, 'y': {name: ...}}."""
    out = {"x": {}, "y": {}}
    for key, value in tensors.items():
        axis, _, name = key.partition(".")
        if axis not in out or not name:
            raise ValueError(f"{source}: tensor {key!r} is not named x.<param> or y.<param>")
        out[axis][name] = value
    if set(out["x"]) != set(out["y"]):
        raise ValueError(f"{source}: x and y cover different parameters")
    return out


def load(path) -> tuple[dict, dict]:
    """-> ({'x': {name: tensor}, 'y': {name: tensor}}, metadata)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return split(load_file(str(path)), f"direction file {path}"), metadata

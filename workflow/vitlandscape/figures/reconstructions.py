"""What an MAE pretext loss looks like: reconstructions of a few evaluation images, with the
landscape's fixed masks, at the trained weights and at points along the surface's x direction.

One row per image: original | masked input | then, for alpha = 0 and each chosen point,
reconstruction | reconstruction with the visible patches pasted back. The points are fractions
of the grid's positive alpha end, snapped to the surface's alpha coordinates (beta = 0), so the
losses in the column headers are values the surface holds; they are checked against it.

`reconstruction_panels` computes (numpy arrays, no matplotlib), `plot_reconstructions` draws,
`reconstructions_figure` is the stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from vitlandscape import devices
from vitlandscape.data.common import IMAGENET_MEAN, IMAGENET_STD
from vitlandscape.figures.stages import open_surface, printed
from vitlandscape.figures.surfaces import _new_figure, _suptitle, resolve_settings, save_figure
from vitlandscape.landscape import directions, objectives
from vitlandscape.landscape.settings import LandscapeSettings
from vitlandscape.landscape.surface import Perturbation
from vitlandscape.storage import outputs

MASKED_GREY = 0.5  # display value of a removed patch in the masked input

# Relative difference allowed between the loss evaluated here and the surface's value at the
# same point. In fp32 on both sides it is the same float32 computation, but the surface's points
# may have been evaluated in other batch sizes and tiles, on another device or thread count: the
# sums differ in the last bits (~1e-7 relative), while a checkpoint, direction file or mask seed
# that is not the surface's moves the loss by far more. With bf16 or tf32 on either side the
# arithmetic differs: bf16 moves the surface by up to about 1 % (tests/test_landscape.py).
FP32_TOLERANCE, REDUCED_TOLERANCE = 1e-5, 2e-2


# --- compute ----------------------------------------------------------------------------


def _surface_name(ds: xr.Dataset) -> str:
    a = ds.attrs
    return f"the {a.get('model', '?')}/{a.get('objective', '?')} surface (checkpoint {a.get('checkpoint', '?')})"


def _nearest(coords: np.ndarray, value: float) -> int:
    return int(np.abs(coords - value).argmin())


def _grid_line(coords: np.ndarray, what: str, ds: xr.Dataset) -> int:
    """Index of the coordinate 0 of an axis, which the surface must hold."""
    index = _nearest(coords, 0.0)
    if abs(coords[index]) > 1e-9 * max(np.ptp(coords), 1.0):
        raise ValueError(f"{_surface_name(ds)} has no {what} = 0 grid line "
                         f"(coordinates {coords.min():g} .. {coords.max():g}, {coords.size} points)")
    return index


def chosen_points(ds: xr.Dataset, fractions) -> tuple[list[int], int]:
    """(alpha indices: 0 first, then each fraction of the largest alpha, snapped to the
    nearest coordinate; the index of beta = 0). The surface must hold alpha = 0 and beta = 0."""
    alphas, betas = ds["alpha"].values, ds["beta"].values
    if alphas.max() <= 0:
        raise ValueError(f"{_surface_name(ds)} has no positive alpha (max {alphas.max():g})")
    centre, beta0 = _grid_line(alphas, "alpha", ds), _grid_line(betas, "beta", ds)
    return [centre] + [_nearest(alphas, f * alphas.max()) for f in fractions], beta0


def _first_images(objective, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` evaluation images (model input) and their fixed mask noise, taken from
    the objective's own batches so the masks are those its loss uses."""
    if count > objective.info["eval_samples"]:
        raise ValueError(f"reconstructions.images = {count}, but the evaluation set has "
                         f"{objective.info['eval_samples']} images")
    images, noise, taken = [], [], 0
    for stored, batch_noise, _ in objective.batches:
        images.append(objective.inputs(stored))
        noise.append(batch_noise)
        taken += len(stored)
        if taken >= count:
            break
    return torch.cat(images)[:count], torch.cat(noise)[:count]


def unnormalised(pred: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Norm-pix predictions back to image units with each original patch's own mean and
    variance (as the official MAE visualisation demo does; variance as `targets` computes it)."""
    mean = original.mean(dim=-1, keepdim=True)
    var = original.var(dim=-1, keepdim=True)
    return pred * (var + 1e-6) ** 0.5 + mean


def _display(model, patches: torch.Tensor) -> np.ndarray:
    """Normalised-image patches [k, L, p*p*3] -> RGB in [0, 1], [k, H, W, 3]."""
    mean, std = IMAGENET_MEAN.to(patches.device), IMAGENET_STD.to(patches.device)
    return (model.unpatchify(patches) * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def _reconstruct(objective, images, noise, original):
    """(prediction in normalised-image units [k, L, p*p*3], mask [k, L], per-image loss [k])
    at the model's current weights; the loss is over the masked patches, on the loss's targets."""
    model = objective.model
    with devices.precision(objective.precision, images.device):  # the arithmetic of evaluate()
        latent, mask, ids_restore = model.forward_encoder(images, objective.info["mask_ratio"], noise)
        pred = model.forward_decoder(latent, ids_restore).float()
    image_losses = (model.patch_losses(images, pred) * mask).sum(1) / mask.sum(1)
    if model.norm_pix_loss:
        pred = unnormalised(pred, original)
    return pred, mask, image_losses


def _check_against_surface(loss: float, precision: str, ds: xr.Dataset, i: int, j: int) -> None:
    expected = float(ds["loss"].values[i, j])
    precisions = {precision, str(ds.attrs.get("precision", "fp32"))}
    tolerance = FP32_TOLERANCE if precisions == {"fp32"} else REDUCED_TOLERANCE
    if not abs(loss - expected) <= tolerance * abs(expected):
        raise ValueError(
            f"{_surface_name(ds)} holds pretext loss {expected:.8g} at alpha = {ds['alpha'].values[i]:g}, "
            f"beta = {ds['beta'].values[j]:g}, but this checkpoint and direction file give {loss:.8g} there "
            f"(relative difference {abs(loss - expected) / abs(expected):.2e} > {tolerance:g}, "
            f"{' and '.join(sorted(precisions))}): the checkpoint, directions, evaluation set or mask seed "
            "are not the surface's")


def reconstruction_panels(objective, perturbation: Perturbation, surface: xr.Dataset, fractions,
                          images: int) -> dict:
    """Arrays of the figure: `alphas` [P] (0 first), `losses` [P] (whole evaluation set),
    `original` and `masked` [k, H, W, 3], `reconstruction` and `pasted` [P, k, H, W, 3] (display
    space, [0, 1]), `image_losses` [P, k], `mask` [k, L] (1 = removed) and `prediction`
    [P, k, L, p*p*3] (normalised-image units, norm-pix undone); `labels` for the titles.
    Moves the objective's model along x and restores its weights, whatever happens."""
    model = objective.model
    alpha_index, beta0 = chosen_points(surface, fractions)
    inputs, noise = _first_images(objective, images)
    original = model.patchify(inputs)
    losses, predictions, image_losses = [], [], []
    try:
        for i in alpha_index:
            perturbation.set(float(surface["alpha"].values[i]), 0.0)
            losses.append(objective.evaluate()[0])
            _check_against_surface(losses[-1], objective.precision, surface, i, beta0)
            pred, mask, per_image = _reconstruct(objective, inputs, noise, original)
            predictions.append(pred)
            image_losses.append(per_image.cpu().numpy())
    finally:
        perturbation.restore()
    removed = mask.unsqueeze(-1).bool()
    pixel_mask = model.unpatchify(removed.expand_as(original).float())[:, :1].permute(0, 2, 3, 1).cpu().numpy()
    shown = _display(model, original)
    return {
        "alphas": surface["alpha"].values[alpha_index].astype(float),
        "losses": np.array(losses),
        "original": shown,
        "masked": np.where(pixel_mask > 0.5, MASKED_GREY, shown).astype(shown.dtype),
        "reconstruction": np.stack([_display(model, pred) for pred in predictions]),
        "pasted": np.stack([_display(model, torch.where(removed, pred, original)) for pred in predictions]),
        "image_losses": np.stack(image_losses),
        "mask": mask.cpu().numpy(),
        "prediction": torch.stack(predictions).cpu().numpy(),
        "labels": {"model": str(surface.attrs.get("model", "?")), "mask_ratio": objective.info["mask_ratio"],
                   "mask_seed": objective.info["mask_seed"],
                   "target": "norm-pix" if model.norm_pix_loss else "pixel"},
    }


# --- draw -------------------------------------------------------------------------------

PANEL_INCHES = 1.25


def make_reconstruction_figure(panels: dict, settings: dict | None = None) -> Figure:
    """Rows: images; columns: original, masked, then reconstruction | pasted per point."""
    s = resolve_settings(settings)
    k, points = len(panels["original"]), len(panels["alphas"])
    columns = 2 + 2 * points
    fig = _new_figure((PANEL_INCHES * columns, PANEL_INCHES * k + 1.2), s)
    axes = fig.subplots(k, columns, squeeze=False)
    labels = panels["labels"]
    for row in range(k):
        top = row == 0
        cells = [(panels["original"][row], "original" if top else ""),
                 (panels["masked"][row], "masked input" if top else "")]
        for p in range(points):
            header = f"α = {panels['alphas'][p]:.3g}, set loss {panels['losses'][p]:.4f}\n" if top else ""
            cells += [(panels["reconstruction"][p, row], f"{header}{panels['image_losses'][p, row]:.4f}"),
                      (panels["pasted"][p, row], "\n+ visible" if top else "")]
        for ax, (image, title) in zip(axes[row], cells):
            ax.imshow(image, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=7)
    _suptitle(fig, f"{labels['model']}: MAE pretext reconstructions along direction x (β = 0)",
              [f"{labels['mask_ratio']:.0%} of the patches masked (mask seed {labels['mask_seed']})",
               f"{labels['target']} MSE over the masked patches: whole evaluation set in the headers, "
               "that image under each reconstruction"])
    return fig


def plot_reconstructions(panels: dict, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    """Write `{prefix}_reconstructions.{fmt}` for each of `settings["formats"]`; return the paths."""
    return save_figure(make_reconstruction_figure(panels, settings), prefix, "reconstructions", settings)


# --- stage ------------------------------------------------------------------------------


def reconstructions_figure(settings: dict, data_path, checkpoint, directions_path, surface_path, prefix) -> list:
    """The stage. `settings`: the model's config entry with `name` and the `landscape` keys
    of the evaluation (mask_seed, batch_size, device, precision), as the landscape stages take
    them, plus the `figures` section and `reconstructions` (`figures.reconstructions`: `images`,
    `fractions`). It evaluates the whole set at each point, as a line does, where lines run."""
    options = settings["reconstructions"]  # figures.reconstructions of the config
    ds = open_surface(surface_path)
    if ds.attrs.get("objective", "pretext") != "pretext":
        raise ValueError(f"surface {surface_path} is of the {ds.attrs['objective']} loss, not the pretext loss")
    objective = objectives.for_stage({**settings, "objective": "pretext"}, data_path, checkpoint,
                                     LandscapeSettings.of(settings))
    dirs, meta = directions.load(directions_path)
    outputs.made_for(checkpoint, meta, f"directions {directions_path} were made")
    panels = reconstruction_panels(objective, Perturbation(objective.model, dirs), ds,
                                   options["fractions"], options["images"])
    for alpha, loss in zip(panels["alphas"], panels["losses"]):
        print(f"alpha = {alpha:g}: pretext loss {loss:.6f} (as the surface holds)")
    return printed(plot_reconstructions(panels, prefix, settings.get("figures")))

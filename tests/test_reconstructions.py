"""MAE reconstruction figure along the landscape: panels against the float64 reference at the
same moved weights, whole-set losses against the surface, snapping, refusals, weights restored,
and the files written."""
import argparse

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.image import imread

import reference
from conftest import model_settings
from vitlandscape.data import prepare
from vitlandscape.figures import reconstructions
from vitlandscape.landscape import directions, grid, objectives, tiles
from vitlandscape.landscape import stages as landscape_stages
from vitlandscape.landscape.surface import Perturbation
from vitlandscape.models.arch import build_mae

ALPHA, BETA = [-1.0, 1.0, 7], [-0.5, 0.5, 3]  # alpha: 0, 1/3, 2/3, 1 on the positive side
FRACTIONS = [0.25, 0.6, 1.0]  # 0.25 and 0.6 of the end are off the grid: they snap to 1/3 and 2/3
MASK_SEED, IMAGES = 3, 6
SURFACE_BATCH, FIGURE_BATCH = 8, 5  # the figure's first 6 images span two of its batches
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def landscape(batch_size: int) -> dict:
    return {"alpha": ALPHA, "beta": BETA, "tile": [4, 3], "direction_seed": 0, "mask_seed": MASK_SEED,
            "normalization": "filter", "perturb_1d": False, "perturb_frozen": False, "orthogonal": False,
            "batch_size": batch_size, "device": "cpu", "precision": "fp32"}


def save_mae(state: dict, norm_pix: bool, path) -> None:
    """An official-format MAE checkpoint."""
    torch.save({"model": state, "args": argparse.Namespace(norm_pix_loss=norm_pix)}, path)


def build_objective(cfg, checkpoint, data, batch_size=FIGURE_BATCH):
    return objectives.build("pretext", checkpoint, cfg, prepare.load_prepared(data), batch_size=batch_size,
                            mask_seed=MASK_SEED, device=torch.device("cpu"))


@pytest.fixture(scope="module", params=[False, True], ids=["pixel", "norm-pix"])
def setup(request, tmp_path_factory):
    """Data, an MAE checkpoint, its directions and surface (the workflow's stages), and the
    panels of its figure."""
    norm_pix = request.param
    root = tmp_path_factory.mktemp("reconstructions")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    images[:, 4:12, 4:12] //= 3  # a darker square: structure a patch's mean and variance differ over
    np.savez(root / "data.npz", images=images, labels=np.arange(40) % 3)
    prepare.prepare_data({"dataset": "npz", "path": str(root / "data.npz"), "image_size": 16,
                          "eval_samples": 12, "seed": 0, "test_fraction": 0.25}, root / "data.pt")
    torch.manual_seed(0)
    cfg = model_settings("mae", norm_pix_loss=norm_pix)
    save_mae(build_mae(cfg["arch"], norm_pix).state_dict(), norm_pix, root / "mae.pth")
    s = {**cfg, "objective": "pretext", "landscape": landscape(SURFACE_BATCH)}
    landscape_stages.make_directions(s, root / "mae.pth", root / "dirs.safetensors")
    tile_files = [root / f"{tile}.nc" for tile in grid.tile_names(ALPHA, BETA, [4, 3])]
    for path in tile_files:
        landscape_stages.surface_tile(s, root / "data.pt", root / "mae.pth", root / "dirs.safetensors", path.stem,
                                      path)
    tiles.assemble(s, tile_files, root / "mae.pth", root / "dirs.safetensors", root / "surface.zarr")
    surface = xr.open_zarr(root / "surface.zarr").load()
    objective = build_objective(cfg, root / "mae.pth", root / "data.pt")
    dirs, _ = directions.load(root / "dirs.safetensors")
    before = {k: v.clone() for k, v in objective.model.state_dict().items()}
    panels = reconstructions.reconstruction_panels(objective, Perturbation(objective.model, dirs), surface,
                                                   FRACTIONS, IMAGES)
    return {"root": root, "cfg": cfg, "norm_pix": norm_pix, "surface": surface, "dirs": dirs,
            "objective": objective, "before": before, "panels": panels}


def display(patches: torch.Tensor, p: int) -> torch.Tensor:
    """float64 patches [k, L, p*p*3] (row, col, channel) -> RGB [k, H, W, 3] in [0, 1]."""
    k, length, _ = patches.shape
    g = int(length ** 0.5)
    image = patches.reshape(k, g, g, p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(k, g * p, g * p, 3)
    return (image * STD + MEAN).clamp(0, 1)


def reference_panels(setup) -> dict:
    """The panels in float64 by tests/reference.py, with its own masks and moved weights."""
    cfg, p = setup["cfg"], setup["cfg"]["arch"]["patch_size"]
    prepared = prepare.load_prepared(setup["root"] / "data.pt")
    images = prepared["train_images"][prepared["eval_index"]].double()
    noise = torch.rand(len(images), 16, generator=torch.Generator().manual_seed(MASK_SEED))[:IMAGES]
    images = images[:IMAGES]
    state = torch.load(setup["root"] / "mae.pth", weights_only=False)["model"]
    pixels = reference.pixel_patches(images, p)
    out = {"prediction": [], "reconstruction": [], "pasted": [], "image_losses": []}
    for a in setup["panels"]["alphas"]:
        moved = reference.moved(state, setup["dirs"], float(a), 0.0)
        _, pred, mask = reference.mae_forward(moved, cfg["arch"], images, noise, cfg["mask_ratio"], setup["norm_pix"])
        per_patch = ((pred - reference.pixel_patches(images, p, setup["norm_pix"])) ** 2).mean(-1)
        out["image_losses"].append((per_patch * mask).sum(1) / mask.sum(1))
        if setup["norm_pix"]:  # back to image units with the original patch's mean and (unbiased) variance
            mean = pixels.mean(-1, keepdim=True)
            var = ((pixels - mean) ** 2).sum(-1, keepdim=True) / (pixels.shape[-1] - 1)
            pred = pred * torch.sqrt(var + 1e-6) + mean
        out["prediction"].append(pred)
        out["reconstruction"].append(display(pred, p))
        out["pasted"].append(display(torch.where(mask.unsqueeze(-1) == 1, pred, pixels), p))
    out = {k: torch.stack(v).numpy() for k, v in out.items()}
    out["mask"], out["original"] = mask.numpy(), display(pixels, p).numpy()
    return out


def test_panels_match_the_float64_reference(setup):
    """(1, 2) float32 forwards against float64 at the same weights. Measured max errors (pixel /
    norm-pix model): prediction 2.1e-6 / 2.4e-6 abs (values up to 4.4), display arrays 5.1e-7 /
    5.4e-7 abs, image losses 1.0e-7 / 1.5e-7 relative. The tolerances leave 8-20x headroom; a
    missing paste or norm-pix un-normalisation makes errors of 0.6 and more (both tried)."""
    panels, ref = setup["panels"], reference_panels(setup)
    k = IMAGES
    assert panels["prediction"].shape == (4, k, 16, 48) and panels["reconstruction"].shape == (4, k, 16, 16, 3)
    np.testing.assert_array_equal(panels["mask"], ref["mask"])
    errors = {key: np.abs(panels[key] - ref[key]).max() for key in ("prediction", "reconstruction", "pasted")}
    errors["image_losses"] = np.abs(panels["image_losses"] / ref["image_losses"] - 1).max()
    print({key: f"{value:.2e}" for key, value in errors.items()})
    np.testing.assert_allclose(panels["prediction"], ref["prediction"], rtol=0, atol=2e-5)
    for key in ("reconstruction", "pasted", "original"):
        np.testing.assert_allclose(panels[key], ref[key], rtol=0, atol=1e-5, err_msg=key)
    # (2) each image's own loss: the masked-patch mean of the (norm-pix) per-patch MSE
    np.testing.assert_allclose(panels["image_losses"], ref["image_losses"], rtol=2e-6)
    # pasted: the original where visible, the reconstruction where masked
    visible = np.repeat(np.repeat(ref["mask"].reshape(k, 4, 4) == 0, 4, 1), 4, 2)
    np.testing.assert_array_equal(panels["pasted"][:, visible], np.broadcast_to(
        panels["original"][visible], panels["pasted"][:, visible].shape))
    np.testing.assert_array_equal(panels["pasted"][:, ~visible], panels["reconstruction"][:, ~visible])
    np.testing.assert_array_equal(panels["masked"][~visible], reconstructions.MASKED_GREY)
    np.testing.assert_array_equal(panels["masked"][visible], panels["original"][visible])
    for key in ("original", "masked", "reconstruction", "pasted"):
        assert 0 <= panels[key].min() and panels[key].max() <= 1


def test_losses_are_the_surfaces_values_at_the_snapped_points(setup):
    """(3, 4) The points are 0 and the grid coordinates nearest to each fraction of the largest
    alpha (0.25 and 0.6 of it are off the grid); the whole-set losses are the surface's values
    there. The surface was evaluated in batches of 8, the figure in batches of 5: the float32 sums
    may differ in the last bits (measured 6e-9 / 0 relative), hence 1e-6, far below what another
    checkpoint moves (test_surface_of_another_checkpoint_is_refused)."""
    panels, surface = setup["panels"], setup["surface"]
    coords = surface["alpha"].values
    np.testing.assert_array_equal(panels["alphas"], coords[[3, 4, 5, 6]])  # 0, 1/3, 2/3, 1
    for alpha, fraction in zip(panels["alphas"][1:], FRACTIONS):
        target = fraction * coords.max()
        assert np.abs(coords - target).min() == abs(alpha - target)
    assert not np.isin(np.array(FRACTIONS[:2]) * coords.max(), coords).any()
    expected = surface["loss"].sel(beta=0.0).values[[3, 4, 5, 6]]
    print(f"relative difference to the surface {np.abs(panels['losses'] / expected - 1).max():.2e}")
    np.testing.assert_allclose(panels["losses"], expected, rtol=1e-6)
    assert len(np.unique(panels["losses"])) == 4


def _coords_only(alpha, beta) -> xr.Dataset:
    return xr.Dataset({"loss": (("alpha", "beta"), np.zeros((len(alpha), len(beta))))},
                      coords={"alpha": alpha, "beta": beta}, attrs={"model": "m", "objective": "pretext"})


def test_snapping_and_grids_without_the_needed_lines():
    ds = _coords_only(grid.axis([-1.0, 2.0, 16]), grid.axis([-1.0, 1.0, 5]))  # alpha step 0.2
    indices, beta0 = reconstructions.chosen_points(ds, [0.27, 0.62, 0.9, 1.0])  # 0.54, 1.24, 1.8, 2
    np.testing.assert_allclose(ds["alpha"].values[indices], [0.0, 0.6, 1.2, 1.8, 2.0])
    assert beta0 == 2
    with pytest.raises(ValueError, match="has no alpha = 0 grid line"):
        reconstructions.chosen_points(_coords_only(grid.axis([-1.0, 1.0, 6]), [0.0]), [0.5])
    with pytest.raises(ValueError, match="has no beta = 0 grid line"):
        reconstructions.chosen_points(_coords_only([0.0, 1.0], grid.axis([-1.0, 1.0, 4])), [0.5])
    with pytest.raises(ValueError, match="no positive alpha"):
        reconstructions.chosen_points(_coords_only([-1.0, 0.0], [0.0]), [0.5])


def test_weights_are_restored_bit_exactly(setup):
    after = setup["objective"].model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in setup["before"].items())


def test_surface_of_another_checkpoint_is_refused(setup):
    """(5) Weights scaled by 1.01: the loss at alpha = 0 moves well beyond 1e-5 relative; the
    weights are still restored after the refusal."""
    root = setup["root"]
    state = torch.load(root / "mae.pth", weights_only=False)["model"]
    save_mae({k: v * 1.01 for k, v in state.items()}, setup["norm_pix"], root / "scaled.pth")
    objective = build_objective(setup["cfg"], root / "scaled.pth", root / "data.pt")
    before = {k: v.clone() for k, v in objective.model.state_dict().items()}
    expected = float(setup["surface"]["loss"].sel(alpha=0.0, beta=0.0))
    with pytest.raises(ValueError, match=r"the m/pretext surface \(checkpoint .*mae.pth\) holds pretext loss "
                                         rf"{expected:.8g} at alpha = 0, beta = 0, but .* give \d"):
        reconstructions.reconstruction_panels(objective, Perturbation(objective.model, setup["dirs"]),
                                              setup["surface"], FRACTIONS, 2)
    assert all(torch.equal(objective.model.state_dict()[k], v) for k, v in before.items())


def test_tolerance_follows_the_arithmetic(setup):
    """A surface 1e-3 away from the fp32 losses: refused as fp32, accepted as a bf16 surface
    (bf16 moves a surface by up to about 1 %)."""
    root = setup["root"]
    objective = build_objective(setup["cfg"], root / "mae.pth", root / "data.pt")
    perturbation = Perturbation(objective.model, setup["dirs"])
    shifted = setup["surface"].copy(deep=True)
    shifted["loss"] = shifted["loss"] * (1 + 1e-3)
    with pytest.raises(ValueError, match=r"relative difference 9.99e-04 > 1e-05, fp32\)"):
        reconstructions.reconstruction_panels(objective, perturbation, shifted, FRACTIONS, 2)
    shifted.attrs["precision"] = "bf16"
    panels = reconstructions.reconstruction_panels(objective, perturbation, shifted, FRACTIONS, 2)
    np.testing.assert_allclose(panels["losses"], setup["panels"]["losses"], rtol=1e-6)


def test_figure_files(setup, tmp_path):
    """(7) png and pdf; the png is the figure's size at its dpi (aspect of 10 columns x 6 rows)."""
    settings = {"formats": ["png", "pdf"], "dpi": 50}
    fig = reconstructions.make_reconstruction_figure(setup["panels"], settings)
    width, height = fig.get_size_inches() * 50
    assert (width, height) == (reconstructions.PANEL_INCHES * 10 * 50, (reconstructions.PANEL_INCHES * 6 + 1.2) * 50)
    paths = reconstructions.plot_reconstructions(setup["panels"], tmp_path / "fig" / "pretext", settings)
    assert [p.name for p in paths] == ["pretext_reconstructions.png", "pretext_reconstructions.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    image = imread(paths[0])
    assert image.shape[:2] == (round(height), round(width))
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_stage(setup, tmp_path, capsys):
    """The stage builds the objective from the settings the landscape stages take, plus the
    figure's sections; it refuses directions made for another checkpoint."""
    root, cfg = setup["root"], setup["cfg"]
    settings = {**cfg, "objective": "pretext", "landscape": landscape(FIGURE_BATCH),
                "figures": {"formats": ["png"], "dpi": 40}, "reconstructions": {"images": 2, "fractions": [1.0]}}
    written = reconstructions.reconstructions_figure(settings, root / "data.pt", root / "mae.pth",
                                                     root / "dirs.safetensors", root / "surface.zarr",
                                                     tmp_path / "pretext")
    assert written == [tmp_path / "pretext_reconstructions.png"]
    log = capsys.readouterr().out
    assert f"{written[0]}\n" in log and "alpha = 1: pretext loss" in log
    assert imread(written[0]).shape[:2] == (round((reconstructions.PANEL_INCHES * 2 + 1.2) * 40),
                                            round(reconstructions.PANEL_INCHES * 6 * 40))
    save_mae(torch.load(root / "mae.pth", weights_only=False)["model"], not setup["norm_pix"], root / "other.pth")
    with pytest.raises(ValueError, match="were made for checkpoint sha256"):
        reconstructions.reconstructions_figure(settings, root / "data.pt", root / "other.pth",
                                               root / "dirs.safetensors", root / "surface.zarr", tmp_path / "x")

"""Convergence table of synthetic training curves whose answers are known in closed form."""
import numpy as np
import pandas as pd
import pytest

from vitlandscape.metrics import convergence
from vitlandscape.metrics.curves import epoch_steps, smoothed

EPOCH = 10  # steps per epoch
EPOCHS = 30
FRACTIONS = [0.5, 0.9, 0.99, 1.0]  # 1: the step where the smoothed loss first equals its final value


def curve(tau: float, a: float = 0.2, b: float = 1.0, epochs: int = EPOCHS, seconds: float = 0.5,
          noise: float = 0.0, column: str = "reconstruction_loss") -> pd.DataFrame:
    """L(t) = a + b exp(-t / tau) per step, with optional deterministic zig-zag noise."""
    t = np.arange(EPOCH * epochs)
    loss = a + b * np.exp(-t / tau) + noise * (-1.0) ** t
    return pd.DataFrame({"step": t, "epoch": t // EPOCH, "wall_s": seconds * (t + 1), "lr": 1e-3,
                         "loss": loss, column: loss})


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values (fewer at the start), by cumulative sums."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def expected_step(values: np.ndarray, f: float) -> int:
    """First step where the epoch mean is at or below L_end + (1 - f)(L_start - L_end)."""
    mean = trailing_mean(values, EPOCH)
    return int(np.argmax(mean <= mean[-1] + (1 - f) * (mean[0] - mean[-1])))


def rows(table: pd.DataFrame, model: str, target: str) -> pd.Series:
    found = table[(table["model"] == model) & (table["target"] == target)]
    assert len(found) == 1, (model, target, table)
    return found.iloc[0]


def test_smoothed_is_the_trailing_mean_over_one_epoch():
    c = curve(tau=40, noise=0.05)
    np.testing.assert_allclose(smoothed(c, "reconstruction_loss"),
                               trailing_mean(c["reconstruction_loss"].to_numpy(), EPOCH), rtol=1e-12)
    assert smoothed(c, "reconstruction_loss")[0] == c["reconstruction_loss"].iloc[0]


def test_epoch_length_is_the_number_of_rows_of_the_first_epoch():
    c = curve(tau=40).iloc[3:]  # a resumed curve starting mid-epoch: 7 rows of epoch 0
    assert epoch_steps(c) == EPOCH - 3
    assert epoch_steps(curve(tau=40)) == EPOCH


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_decrease_steps_match_the_closed_form_and_a_faster_curve_gets_there_sooner(noise):
    curves = {"mae": curve(tau=60, noise=noise), "rcmae": curve(tau=30, noise=noise, seconds=0.7)}
    meta = {"mae": {"method": "mae", "stage": "pretrain"}, "rcmae": {"method": "rcmae", "stage": "pretrain"}}
    table = convergence.convergence_rows(curves, FRACTIONS, meta=meta)
    assert list(table.columns) == convergence.COLUMNS
    for model, c in curves.items():
        for f in FRACTIONS:
            row = rows(table, model, f"decrease_{f:g}")
            step = expected_step(c["reconstruction_loss"].to_numpy(), f)
            assert row["step"] == step and row["reached"]
            assert row["epoch"] == step // EPOCH
            assert row["wall_s"] == c["wall_s"].iloc[step]
            assert (row["model"], row["method"], row["stage"], row["quantity"]) == (
                model, meta[model]["method"], "pretrain", "reconstruction_loss")
            mean = trailing_mean(c["reconstruction_loss"].to_numpy(), EPOCH)
            assert row["threshold"] == pytest.approx(mean[-1] + (1 - f) * (mean[0] - mean[-1]), rel=1e-12)
    for f in FRACTIONS[:-1]:
        assert rows(table, "rcmae", f"decrease_{f:g}")["step"] < rows(table, "mae", f"decrease_{f:g}")["step"]
    if noise == 0:  # a strictly decreasing loss first equals its final value at the last step
        assert rows(table, "mae", "decrease_1")["step"] == len(curves["mae"]) - 1
    steps = [rows(table, "mae", f"decrease_{f:g}")["step"] for f in FRACTIONS]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_decrease_of_a_slow_curve_is_near_the_continuous_answer():
    """Without noise and with tau much longer than an epoch, the smoothed curve lags the raw
    one by half an epoch: the step is tau ln(1/(1-f)) (end value ~ a) plus about EPOCH/2."""
    tau = 200.0
    c = curve(tau=tau, epochs=300)
    table = convergence.convergence_rows({"m": c}, [0.5])
    assert abs(rows(table, "m", "decrease_0.5")["step"] - (tau * np.log(2) + EPOCH / 2)) <= 2


def test_final_of_other_models_puts_all_models_on_one_scale():
    curves = {"mae": curve(tau=60, a=0.3), "rcmae": curve(tau=30, a=0.2), "high": curve(tau=30, a=0.5)}
    table = convergence.convergence_rows(curves, [0.9])
    means = {m: trailing_mean(c["reconstruction_loss"].to_numpy(), EPOCH) for m, c in curves.items()}
    for model in curves:
        assert set(table[table["model"] == model]["target"]) == {"decrease_0.9"} | {
            f"final_of_{other}" for other in curves if other != model}
    rc = rows(table, "rcmae", "final_of_mae")
    assert rc["reached"] and rc["threshold"] == pytest.approx(means["mae"][-1], rel=1e-12)
    assert rc["step"] == int(np.argmax(means["rcmae"] <= means["mae"][-1]))
    for model in ("mae", "rcmae"):  # a loss floor above the others never reaches their final loss
        never = rows(table, "high", f"final_of_{model}")
        assert not never["reached"] and pd.isna(never["step"]) and pd.isna(never["epoch"]) and pd.isna(
            never["wall_s"])
    assert rows(table, "mae", "final_of_high")["reached"]


def test_probe_targets_use_the_first_snapshot_reaching_a_fraction_of_the_final_accuracy():
    """Snapshot s holds the weights after s steps (0: before training, 300: the final weights of a
    300-step curve): it was taken when curve row s - 1 ended, so that row gives epoch and wall time."""
    curves = {"mae": curve(tau=60), "rcmae": curve(tau=30)}
    probes = {"mae": {300: 0.6, 0: 0.1, 200: 0.55, 100: 0.3},  # any order; JSON keys are strings
              "rcmae": {"0": 0.2, "150": 0.65, "300": 0.6}}  # the final snapshot is not the best one
    table = convergence.convergence_rows(curves, [0.1, 0.5, 0.9, 1.0], probes=probes)
    probe = table[table["quantity"] == "probe_top1"]
    assert set(probe["target"]) == {"of_final_0.1", "of_final_0.5", "of_final_0.9", "of_final_1"}
    first = rows(probe, "mae", "of_final_0.1")  # reached by the initial weights
    assert first["reached"] and (first["step"], first["epoch"], first["wall_s"]) == (0, 0, 0.0)
    assert rows(probe, "mae", "of_final_0.5")["step"] == 100  # 0.3 >= 0.5 * 0.6
    assert rows(probe, "mae", "of_final_0.9")["step"] == 200  # 0.55 >= 0.54, 0.3 is not
    last = rows(probe, "mae", "of_final_1")
    assert (last["step"], last["epoch"], last["wall_s"]) == (300, EPOCHS - 1, curves["mae"]["wall_s"].iloc[-1])
    assert rows(probe, "rcmae", "of_final_0.9")["step"] == 150
    assert rows(probe, "rcmae", "of_final_1")["step"] == 150 and rows(probe, "rcmae", "of_final_1")["threshold"] == 0.6
    row = rows(probe, "mae", "of_final_0.9")
    assert row["threshold"] == pytest.approx(0.54) and row["reached"]
    assert row["epoch"] == 19 and row["wall_s"] == curves["mae"]["wall_s"].iloc[199]  # after step 199


def test_probes_only_for_models_that_have_them():
    table = convergence.convergence_rows({"mae": curve(tau=60), "sup": curve(tau=30)}, [0.5],
                                         probes={"mae": {0: 0.1, 300: 0.5}})
    assert set(table[table["quantity"] == "probe_top1"]["model"]) == {"mae"}


def test_table_is_written_atomically_as_csv(tmp_path):
    curves = {"mae": curve(tau=60, a=0.3), "high": curve(tau=30, a=0.5)}
    table = convergence.convergence_rows(curves, FRACTIONS, meta={"mae": {"method": "mae", "stage": "pretrain"}})
    path = tmp_path / "metrics" / "convergence.csv"
    convergence.write_table(table, path)
    back = pd.read_csv(path)
    assert list(back.columns) == convergence.COLUMNS and len(back) == len(table)
    assert [p.name for p in path.parent.iterdir()] == ["convergence.csv"]
    as_text = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert all(step.isdigit() or step == "" for step in as_text["step"])  # integers, no '.0'
    assert "" in set(as_text["step"])
    never = back[back["target"] == "final_of_mae"].iloc[0]
    assert not never["reached"] and pd.isna(never["step"])


@pytest.mark.parametrize("break_curve, message", [
    (lambda c: c.drop(columns="reconstruction_loss"), "no column 'reconstruction_loss'"),
    (lambda c: c.iloc[:0], "no rows"),
    (lambda c: c.iloc[[0, 1, 3, 2, 4]], "steps do not increase at row 3"),
    (lambda c: c.iloc[[0, 1, 1, 2]], "steps do not increase at row 2"),
    (lambda c: c.assign(reconstruction_loss=c["reconstruction_loss"].where(c["step"] != 17)), "is nan at step 17"),
    (lambda c: c.assign(reconstruction_loss=c["reconstruction_loss"].where(c["step"] < 40, np.inf)),
     "is inf at step 40"),
    (lambda c: c.assign(wall_s=c["wall_s"].where(c["step"] != 5)), "wall_s is not finite at row 5"),
])
def test_a_curve_that_cannot_be_trusted_is_named(break_curve, message):
    curves = {"mae": curve(tau=60), "rcmae": break_curve(curve(tau=30))}
    with pytest.raises(ValueError, match=message) as err:
        convergence.convergence_rows(curves, FRACTIONS)
    assert "rcmae" in str(err.value) and "reconstruction_loss" in str(err.value)


def test_bad_fractions_and_probes_are_named():
    curves = {"mae": curve(tau=60)}
    with pytest.raises(ValueError, match="fractions"):
        convergence.convergence_rows(curves, [0.5, 1.5])
    with pytest.raises(ValueError, match="fractions"):
        convergence.convergence_rows(curves, [0.0])
    with pytest.raises(ValueError, match=r"\['rcmae'\] but no training curve"):
        convergence.convergence_rows(curves, [0.5], probes={"rcmae": {0: 0.5}})
    with pytest.raises(ValueError, match="mae after 1000 steps: its training curve has no step 999"):
        convergence.convergence_rows(curves, [0.9], probes={"mae": {0: 0.1, 1000: 0.5}})
    with pytest.raises(ValueError, match="probe accuracies of mae"):
        convergence.convergence_rows(curves, [0.9], probes={"mae": {0: 0.1, 300: float("nan")}})
    with pytest.raises(ValueError, match="probe accuracies of mae"):
        convergence.convergence_rows(curves, [0.9], probes={"mae": {}})


def test_the_workflow_table_meets_models_within_a_stage_on_the_pretext_loss(tmp_path):
    """convergence.table: MAE-like curves meet on reconstruction_loss, a supervised stage on its
    loss; probe files add probe rows for their model only."""
    fast, slow, sup = curve(tau=20.0), curve(tau=60.0), curve(tau=30.0).drop(columns="reconstruction_loss")
    files = {}
    for key, frame in (("a/pretrain", fast), ("b/pretrain", slow), ("s/finetune", sup)):
        files[key] = tmp_path / f"{key.replace('/', '_')}.csv"
        frame.to_csv(files[key], index=False)
    (tmp_path / "probe.json").write_text('{"steps": [0, 50, 240], "test_top1": [0.2, 0.7, 0.8]}')
    settings = {"fractions": [0.9], "methods": {"a/pretrain": "mae", "b/pretrain": "rcmae", "s/finetune": "mae"}}
    table = convergence.table(settings, files, tmp_path / "c.csv", {"a/pretrain": tmp_path / "probe.json"})
    assert set(zip(table["model"], table["target"])) == {
        ("a", "decrease_0.9"), ("a", "final_of_b"), ("b", "decrease_0.9"), ("b", "final_of_a"),
        ("s", "decrease_0.9"), ("a", "of_final_0.9")}
    assert set(table.loc[table["model"] != "s", "quantity"]) == {"reconstruction_loss", "probe_top1"}
    assert set(table.loc[table["model"] == "s", "quantity"]) == {"loss"}
    step = rows(table, "a", "decrease_0.9")["step"]
    assert step == expected_step(fast["reconstruction_loss"].to_numpy(), 0.9)
    assert rows(table, "a", "of_final_0.9")["step"] == 240  # 0.7 at step 50 is short of 0.9 x 0.8

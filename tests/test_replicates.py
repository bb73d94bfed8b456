"""Findings across replicates: the two-level bootstrap and the study's findings table."""
import numpy as np
import pandas as pd
import pytest

from vitlandscape.metrics import intervals, replicates

BOOTSTRAP = {"resamples": 4000, "seed": 0, "confidence": 0.95}


def test_an_interval_of_constant_replicates_has_no_width():
    assert intervals.nested_interval([[2.5, 2.5], [2.5], [2.5, 2.5, 2.5]], 500) == (2.5, 2.5)


def test_one_seed_is_the_plain_bootstrap_of_its_mean():
    """With one training seed the outer level draws that seed every time: the interval is the
    ordinary percentile bootstrap of the mean, written here as a plain loop (Monte Carlo error
    of 20000 resamples on the 2.5 % quantile of 12 values: well under 0.05 of their sd)."""
    values = np.random.default_rng(1).normal(size=12)
    rng = np.random.default_rng(7)
    means = [values[rng.integers(0, 12, 12)].mean() for _ in range(20000)]
    expected = np.quantile(means, [0.025, 0.975])
    found = intervals.nested_interval([values], 20000, seed=3)
    assert found == pytest.approx(tuple(expected), abs=0.05 * values.std())


def _coverage(interval, sims=150, seeds=10, inner=5):
    """How often an interval covers the true mean 0 of nested data whose seeds differ (sd 1)
    far more than their inner replicates do (sd 0.2)."""
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(sims):
        groups = [rng.normal(rng.normal(), 0.2, inner) for _ in range(seeds)]
        low, high = interval(groups)
        hits += low <= 0 <= high
    return hits / sims


def test_the_nested_interval_covers_where_a_flat_bootstrap_does_not():
    """Resampling the 50 values as if independent ignores that each seed's 5 move together: its
    interval is about sqrt(5) too narrow and misses the mean far more often than 5 %."""
    def flat(groups):
        values = np.concatenate(groups)
        rng = np.random.default_rng(0)
        means = values[rng.integers(0, values.size, (1000, values.size))].mean(axis=1)
        return np.quantile(means, [0.025, 0.975])

    nested = _coverage(lambda g: intervals.nested_interval(g, 1000))
    assert nested >= 0.82  # percentile intervals from 10 clusters run a little under 95 %
    assert _coverage(flat) <= nested - 0.2


def _summary(wider_values, than_values, seeds=3, directions=3, edge=None):
    """A study's summary of two models' surfaces: mae/pretext and sup/supervised, one row per
    (training seed, direction seed), values given per seed (one array of `directions` each)."""
    rows = []
    for model, objective, values in (("mae", "pretext", wider_values), ("sup", "supervised", than_values)):
        for s in range(seeds):
            for d in range(directions):
                rows.append({"study": "seeds", "model": model, "variant": model if s == 0 else f"{model}.seed={s}",
                             "setting": str(s), "training_seed": s, "direction_seed": d, "eval_seed": 0,
                             "surface": f"{model}/{objective}", "objective": objective,
                             "basin_radius_r0.5": values[s][d], "basin_edge_r0.5": bool(edge and edge(model, s, d)),
                             "sharpness_rel_rho0.5": -values[s][d]})
    return pd.DataFrame(rows)


CLAIM = {"name": "mae_wider", "claim": "MAE is wider", "wider": "mae/pretext", "than": "sup/supervised",
         "measures": ["basin_radius_r0.5", "sharpness_rel_rho0.5"]}


def _findings(summary, tmp_path, claims=(CLAIM,), varies=None):
    seed_index = list(summary["training_seed"])
    settings = {"study": "seeds", "varies": varies, "claims": list(claims), "bootstrap": BOOTSTRAP}
    return replicates.findings_table(summary, seed_index, settings, tmp_path / "findings.csv")


def test_a_clear_difference_holds_with_its_paired_mean_and_interval(tmp_path):
    rng = np.random.default_rng(0)
    wider = 0.6 + 0.02 * rng.normal(size=(3, 3))
    than = 0.3 + 0.02 * rng.normal(size=(3, 3))
    table = _findings(_summary(wider, than), tmp_path).set_index("measure")
    row = table.loc["basin_radius_r0.5"]
    assert row["n"] == 9 and row["holds_in"] == 9
    assert row["mean_wider"] == pytest.approx(wider.mean()) and row["mean_than"] == pytest.approx(than.mean())
    assert row["mean_difference"] == pytest.approx((wider - than).mean())
    assert row["ci_low"] < row["mean_difference"] < row["ci_high"] and row["ci_low"] > 0
    assert row["verdict"] == "holds" and row["sense"] == "larger is wider"
    # smaller is wider: the negated values give a negative difference, which supports the claim
    sharp = table.loc["sharpness_rel_rho0.5"]
    assert sharp["mean_difference"] == pytest.approx(-(wider - than).mean()) and sharp["ci_high"] < 0
    assert sharp["verdict"] == "holds"
    assert pd.read_csv(tmp_path / "findings.csv").shape[0] == 2


def test_the_reverse_does_not_hold_and_noise_is_undecided(tmp_path):
    rng = np.random.default_rng(1)
    reverse = _findings(_summary(0.3 + 0.01 * rng.normal(size=(3, 3)), np.full((3, 3), 0.6)), tmp_path)
    assert set(reverse["verdict"]) == {"does not hold"}
    noise = _findings(_summary(rng.normal(size=(3, 3)), rng.normal(size=(3, 3))), tmp_path)
    row = noise.set_index("measure").loc["basin_radius_r0.5"]
    assert row["verdict"] == "undecided" and "contains no difference" in row["reason"]


def test_between_seed_noise_widens_the_interval(tmp_path):
    """The same 9 differences, once spread within seeds and once between them: with the spread
    between seeds the interval must be wider (the nesting is respected)."""
    within = np.array([[0.1, 0.3, 0.5]] * 3)
    between = within.T.copy()
    narrow = _findings(_summary(within + 1, np.ones((3, 3))), tmp_path).iloc[0]
    wide = _findings(_summary(between + 1, np.ones((3, 3))), tmp_path).iloc[0]
    assert narrow["mean_difference"] == pytest.approx(wide["mean_difference"])
    assert wide["ci_high"] - wide["ci_low"] > 1.5 * (narrow["ci_high"] - narrow["ci_low"])


def test_a_censored_region_leaves_a_supported_claim_undecided(tmp_path):
    summary = _summary(np.full((3, 3), 0.6) + np.arange(3)[:, None] * 0.01, np.full((3, 3), 0.3),
                       edge=lambda model, s, d: model == "sup" and s == 1 and d == 2)
    row = _findings(summary, tmp_path).set_index("measure").loc["basin_radius_r0.5"]
    assert row["verdict"] == "undecided" and "grid edge in 1 of 9" in row["reason"]


def test_one_replicate_gives_no_interval(tmp_path):
    row = _findings(_summary([[0.6]], [[0.3]], seeds=1, directions=1), tmp_path).iloc[0]
    assert row["n"] == 1 and row["verdict"] == "undecided" and np.isnan(row["ci_low"])
    assert row["mean_difference"] == pytest.approx(0.3)


def test_a_setting_study_tests_each_setting_against_the_first(tmp_path):
    """Varying a setting: claims per setting, and each setting of a model against the first one."""
    a, b = _summary(np.full((1, 3), 0.5), np.full((1, 3), 0.2), seeds=1), _summary(np.full((1, 3), 0.7),
                                                                                   np.full((1, 3), 0.2), seeds=1)
    a["setting"], b["setting"] = "64", "256"
    summary = pd.concat([a, b], ignore_index=True)
    summary["basin_radius_r0.5"] += np.random.default_rng(2).uniform(0, 0.01, len(summary))  # replicates differ
    table = _findings(summary, tmp_path, varies="pretrain.batch_size")
    claims = table[table["claim"] == "mae_wider"]
    assert list(claims["setting"]) == ["64", "64", "256", "256"]
    effect = table[table["claim"] == "pretrain.batch_size=256_vs_64:mae/pretext"].set_index("measure")
    assert effect.loc["basin_radius_r0.5", "mean_difference"] == pytest.approx(0.2, abs=0.011)
    assert effect.loc["basin_radius_r0.5", "verdict"] == "holds"
    assert effect.loc["basin_radius_r0.5", "n"] == 3


def test_a_measure_repeated_across_direction_pairs_is_one_measurement(tmp_path):
    """A Hessian measure of one training is the same on every direction pair: 3 equal
    differences are one measurement, not 3, and give no verdict."""
    row = _findings(_summary([[0.6, 0.6, 0.6]], [[0.3, 0.3, 0.3]], seeds=1), tmp_path).iloc[0]
    assert row["n"] == 3 and row["verdict"] == "undecided" and "no spread for an interval" in row["reason"]
    # over 3 trainings the same repeated values do vary: an interval, and a verdict
    varied = _findings(_summary([[0.6] * 3, [0.65] * 3, [0.62] * 3], [[0.3] * 3] * 3), tmp_path).iloc[0]
    assert varied["verdict"] == "holds" and varied["ci_low"] > 0

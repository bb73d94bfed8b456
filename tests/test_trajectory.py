"""Trajectories: snapshot schedule, snapshot file, PCA plane against a dense reference, distances."""
import hashlib
import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch

from vitlandscape.landscape import trajectory_plane
from vitlandscape.storage import snapshots

SHAPES = {"conv.weight": (4, 3, 2, 2), "fc.weight": (5, 7), "fc.bias": (5,), "cls_token": (1, 2, 6)}
NAMES = list(SHAPES)


def _random(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in SHAPES.items()}


def _flat(state: dict) -> np.ndarray:
    return np.concatenate([state[n].double().numpy().ravel() for n in NAMES])


def _unflat(vec: np.ndarray) -> dict:
    out, i = {}, 0
    for n, s in SHAPES.items():
        size = math.prod(s)
        out[n] = torch.from_numpy(vec[i:i + size].reshape(s).copy())
        i += size
    return out


def _path(final: dict, coefs: np.ndarray, basis: np.ndarray) -> list:
    """Snapshots w_t = w_final + sum_k coefs[t, k] * basis[k]."""
    w = _flat(final)
    return [_unflat(w + c @ basis) for c in coefs]


def _slice_norms(t: torch.Tensor) -> torch.Tensor:
    """Norms of the slices along dim 0; a tensor with ndim < 2 is one slice."""
    rows = t.double().reshape(t.shape[0], -1) if t.ndim >= 2 else t.double().reshape(1, -1)
    return torch.linalg.vector_norm(rows, dim=1)


# ---------------------------------------------------------------- straight line

LINE = np.array([-3.0, -2.2, -1.5, -0.7, -0.3, 0.1, 0.0])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_straight_line_has_one_component(sign):
    final = _random(0)
    v = _flat(_random(1))
    c = sign * LINE
    states = _path(final, c[:, None], v[None])
    plane = trajectory_plane.pca_plane(states, final, NAMES, "none", dtype=torch.float64)
    r1, r2 = plane["explained_variance_ratio"]
    assert abs(r1 - 1) < 1e-12 and abs(r2) < 1e-12
    flip = -np.sign(c[0])  # the first snapshot goes to the negative side
    expected = flip * c * np.linalg.norm(v)
    np.testing.assert_allclose(plane["coords"][:, 0], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(plane["coords"][:, 1], 0, atol=1e-12)
    x = np.concatenate([plane["directions"][f"x.{n}"].numpy().ravel() for n in NAMES])
    y = np.concatenate([plane["directions"][f"y.{n}"].numpy().ravel() for n in NAMES])
    np.testing.assert_allclose(x, flip * v / np.linalg.norm(v), atol=1e-13)
    assert abs(np.linalg.norm(y) - 1) < 1e-12 and abs(x @ y) < 1e-12
    assert plane["scale"] == [1.0, 1.0]
    np.testing.assert_allclose(plane["in_plane"], 1.0, atol=1e-12)


def test_straight_line_trajectory_scale():
    final, fill = _random(0), 0.7
    v = _flat(_random(1))
    states = _path(final, LINE[:, None], v[None])
    plane = trajectory_plane.pca_plane(states, final, NAMES, fill=fill)
    s1 = np.abs(LINE).max() * np.linalg.norm(v) / fill
    assert plane["normalization"] == "trajectory"
    np.testing.assert_allclose(plane["scale"], [s1, s1], rtol=1e-12)  # no second extent: the first's scale
    np.testing.assert_allclose(plane["coords"][:, 0], LINE * np.linalg.norm(v) / s1, atol=1e-12)
    assert np.abs(plane["coords"]).max() <= fill + 1e-12
    assert abs(np.abs(plane["coords"][:, 0]).max() - fill) < 1e-12
    x = plane["directions"]["x.conv.weight"]
    assert x.dtype == torch.float32
    expected = _unflat(v)["conv.weight"] / np.linalg.norm(v) * s1
    torch.testing.assert_close(x.double(), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- a planar path against a dense reference

def _planar(seed=3):
    final = _random(seed)
    p = sum(math.prod(s) for s in SHAPES.values())
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, 2)))
    t = np.linspace(0, 1, 9)
    coefs = np.stack([-4.0 * (1 - t), 1.2 * np.sin(3 * t) * (1 - t)], axis=1)  # ends at the final weights
    return final, _path(final, coefs, q.T)


def _reference(states, final):
    """PCA on the concatenated n x P matrix: SVD of the centred rows, first snapshot <= 0."""
    d = np.stack([_flat(s) - _flat(final) for s in states])
    _, sv, vt = np.linalg.svd(d - d.mean(0), full_matrices=False)
    comps = vt[:2] * np.where(d[0] @ vt[:2].T > 0, -1.0, 1.0)[:, None]
    return comps, d @ comps.T, (sv ** 2 / (sv ** 2).sum())[:2]


@pytest.mark.parametrize("block", [trajectory_plane._BLOCK, 20])  # 20: parameters split into row blocks
def test_planar_path_matches_dense_pca(block, monkeypatch):
    monkeypatch.setattr(trajectory_plane, "_BLOCK", block)
    final, states = _planar()
    comps, coords, ratio = _reference(states, final)
    plane = trajectory_plane.pca_plane(states, final, NAMES, "none", dtype=torch.float64)
    for k, axis in enumerate("xy"):
        got = np.concatenate([plane["directions"][f"{axis}.{n}"].numpy().ravel() for n in NAMES])
        np.testing.assert_allclose(got, comps[k], rtol=0, atol=1e-10)
    np.testing.assert_allclose(plane["coords"], coords, rtol=0, atol=1e-10)
    np.testing.assert_allclose(plane["explained_variance_ratio"], ratio, rtol=0, atol=1e-10)
    assert abs(sum(ratio) - 1) < 1e-12
    np.testing.assert_allclose(plane["in_plane"], 1.0, atol=1e-12)
    assert plane["coords"][0, 0] <= 0 and plane["coords"][0, 1] <= 0
    np.testing.assert_array_equal(plane["coords"][-1], 0.0)


def test_planar_path_trajectory_scale():
    final, states = _planar()
    _, coords, _ = _reference(states, final)
    plane = trajectory_plane.pca_plane(states, final, NAMES, fill=0.8)
    scale = np.abs(coords).max(0) / 0.8
    np.testing.assert_allclose(plane["scale"], scale, rtol=1e-12)
    np.testing.assert_allclose(plane["coords"], coords / scale, atol=1e-12)
    np.testing.assert_allclose(np.abs(plane["coords"]).max(0), [0.8, 0.8], atol=1e-12)


def test_off_plane_snapshots_report_their_share():
    final, states = _planar()
    rng = np.random.default_rng(7)
    states[2] = _unflat(_flat(states[2]) + rng.standard_normal(_flat(final).size))  # leaves the plane
    plane = trajectory_plane.pca_plane(states, final, NAMES, "none", dtype=torch.float64)
    comps, coords, ratio = _reference(states, final)
    np.testing.assert_allclose(plane["explained_variance_ratio"], ratio, rtol=0, atol=1e-10)
    assert sum(ratio) < 0.999
    d = np.stack([_flat(s) - _flat(final) for s in states])
    share = (coords ** 2).sum(1)[:-1] / (d ** 2).sum(1)[:-1]
    np.testing.assert_allclose(plane["in_plane"][:-1], share, atol=1e-10)
    assert plane["in_plane"][-1] == 1.0 and min(plane["in_plane"]) < 0.99


# ---------------------------------------------------------------- filter normalisation

def _filter_friendly_path(final, seed=5):
    """A planar path whose two basis vectors have, slice by slice along dim 0, orthogonal parts
    with norms proportional to the final weights' slices: filter normalisation then rescales
    every unit component by one common factor and the plane holds the path."""
    rng = np.random.default_rng(seed)
    e1, e2 = {}, {}
    for n, s in SHAPES.items():
        w = final[n].numpy()
        rows = w.reshape(s[0], -1) if len(s) >= 2 else w.reshape(1, -1)
        a, b = np.empty_like(rows), np.empty_like(rows)
        for k, row in enumerate(rows):
            q, _ = np.linalg.qr(rng.standard_normal((row.size, 2)))
            a[k], b[k] = q[:, 0] * np.linalg.norm(row), q[:, 1] * np.linalg.norm(row)
        e1[n], e2[n] = torch.from_numpy(a.reshape(s)), torch.from_numpy(b.reshape(s))
    basis = np.stack([_flat(e1), _flat(e2)])
    t = np.linspace(0, 1, 7)
    coefs = np.stack([-(1 - t) * 0.3, 0.1 * np.sin(4 * t) * (1 - t)], axis=1)
    return _path(final, coefs, basis)


def test_filter_normalisation_and_least_squares():
    final = _random(4)
    states = _filter_friendly_path(final)
    plane = trajectory_plane.pca_plane(states, final, NAMES, "filter", dtype=torch.float64)
    assert plane["scale"] == [1.0, 1.0]
    for n in NAMES:
        for axis in "xy":
            torch.testing.assert_close(_slice_norms(plane["directions"][f"{axis}.{n}"]),
                                       _slice_norms(final[n]), rtol=1e-9, atol=0)
    dx = _flat({n: plane["directions"][f"x.{n}"] for n in NAMES})
    dy = _flat({n: plane["directions"][f"y.{n}"] for n in NAMES})
    for (a, b), state in zip(plane["coords"], states):
        # to 1e-8, not exactly: normalize's +1e-10 on a slice norm bends each slice a little differently
        np.testing.assert_allclose(_flat(final) + a * dx + b * dy, _flat(state), rtol=0, atol=1e-8)
    np.testing.assert_allclose(plane["in_plane"], 1.0, atol=1e-8)
    assert plane["coords"][0, 0] <= 0 and plane["coords"][0, 1] <= 0


def test_filter_coordinates_are_least_squares():
    """A generic path is not in the plane of the rescaled directions: residuals are orthogonal to it."""
    final = _random(4)
    rng = np.random.default_rng(38)  # a path whose fit turns an axis round: the sign is fixed after the fit
    coefs = rng.standard_normal((6, 3)) * np.array([3, 1, 0.5])
    states = _path(final, coefs, rng.standard_normal((3, _flat(final).size)))
    plane = trajectory_plane.pca_plane(states, final, NAMES, "filter")
    assert plane["coords"][0, 0] <= 0 and plane["coords"][0, 1] <= 0
    dirs = np.stack([_flat({n: plane["directions"][f"{a}.{n}"] for n in NAMES}) for a in "xy"])
    for (a, b), state, share in zip(plane["coords"], states, plane["in_plane"]):
        diff = _flat(state) - _flat(final)
        residual = diff - a * dirs[0] - b * dirs[1]
        np.testing.assert_allclose(dirs @ residual, 0, atol=1e-9 * np.linalg.norm(diff) * np.linalg.norm(dirs))
        assert abs(share - (1 - residual @ residual / (diff @ diff))) < 1e-9


def test_pca_plane_rejects_bad_input():
    final, states = _planar()
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        trajectory_plane.pca_plane(states[:2], final, NAMES)
    missing = [dict(s) for s in states]
    del missing[1]["fc.bias"]
    with pytest.raises(ValueError, match="'fc.bias' is missing from snapshot 1"):
        trajectory_plane.pca_plane(missing, final, NAMES)
    bent = [dict(s) for s in states]
    bent[2]["fc.weight"] = bent[2]["fc.weight"].T
    with pytest.raises(ValueError, match="snapshot 2 has shape"):
        trajectory_plane.pca_plane(bent, final, NAMES)
    with pytest.raises(ValueError, match="final weights"):
        trajectory_plane.pca_plane(states, final, NAMES + ["head.weight"])
    with pytest.raises(ValueError, match="unknown normalization"):
        trajectory_plane.pca_plane(states, final, NAMES, "layer")
    with pytest.raises(ValueError, match="all equal"):
        trajectory_plane.pca_plane([final] * 3, final, NAMES)


# ---------------------------------------------------------------- when to snapshot

@pytest.mark.parametrize("schedule, total, expected", [
    ({"every": 5}, 12, [0, 5, 10, 12]),
    ({"every": 4}, 12, [0, 4, 8, 12]),
    ({"every": 1}, 3, [0, 1, 2, 3]),
    ({"every": 50}, 12, [0, 12]),
    ({"every": 3}, 0, [0]),
    ({"points": 5}, 100, [0, 25, 50, 75, 100]),
    ({"points": 4, "spacing": "linear"}, 10, [0, 3, 7, 10]),
    ({"points": 3, "spacing": "linear"}, 5, [0, 3, 5]),  # 2.5 rounds half up
    ({"points": 10, "spacing": "linear"}, 4, [0, 1, 2, 3, 4]),
    ({"points": 5, "spacing": "log"}, 100, [0, 2, 9, 31, 100]),
    ({"points": 8, "spacing": "log"}, 10, [0, 1, 2, 3, 4, 5, 7, 10]),  # 0,0,1,2,3,5,7,10 made distinct
    ({"points": 9, "spacing": "log"}, 7, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"points": 2, "spacing": "log"}, 1000, [0, 1000]),
])
def test_snapshot_steps(schedule, total, expected):
    assert snapshots.snapshot_steps(schedule, total) == expected


def test_log_steps_are_distinct_and_dense_early():
    for total in (1, 2, 7, 30, 1000):
        for n in (2, 3, 5, 17, 40):
            steps = snapshots.snapshot_steps({"points": n, "spacing": "log"}, total)
            assert len(steps) == min(n, total + 1) == len(set(steps))
            assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == total


@pytest.mark.parametrize("schedule, message", [
    ({"every": 0}, "every must be an integer >= 1"),
    ({"every": 2.5}, "every must be an integer >= 1"),
    ({"points": 1}, "points must be an integer >= 2"),
    ({"points": 5, "spacing": "cubic"}, "unknown spacing 'cubic'"),
    ({"evry": 5}, r"unknown key\(s\) \['evry'\]"),
    ({"every": 5, "points": 3}, "cannot be combined"),
    ({}, "give every or points"),
])
def test_snapshot_steps_errors(schedule, message):
    with pytest.raises(ValueError, match=message):
        snapshots.snapshot_steps(schedule, 10)


# ---------------------------------------------------------------- the snapshot file

def _snapshots():
    g = torch.Generator().manual_seed(0)
    return {step: {"b.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(4, generator=g),
                   "blocks.0.attn.qkv.weight": torch.randn(6, 2, generator=g).to(torch.bfloat16)}
            for step in (12, 0, 5)}


def test_snapshot_file_round_trip(tmp_path):
    states = _snapshots()
    path = tmp_path / "snapshots.safetensors"
    snapshots.save_snapshots(path, states, {"model": "mae", "seed": 3, "schedule": {"every": 5}})
    steps, loaded, meta = snapshots.load_snapshots(path)
    assert steps == [0, 5, 12]
    for step, state in zip(steps, loaded):
        assert set(state) == set(states[step])
        for name, t in state.items():
            assert t.dtype == torch.float32
            assert torch.equal(t, states[step][name].float())
    assert meta["model"] == "mae" and json.loads(meta["seed"]) == 3
    assert json.loads(meta["schedule"]) == {"every": 5} and json.loads(meta["steps"]) == [0, 5, 12]


def test_snapshot_file_bytes_are_deterministic(tmp_path):
    meta = {f"key{i}": f"value{i}" for i in range(8)}
    digests = set()
    for i in range(3):
        snapshots.save_snapshots(tmp_path / f"{i}.safetensors", _snapshots(), meta)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1


def test_malformed_snapshot_files(tmp_path):
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file({"step0.w": torch.zeros(2), "weights.w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"'weights.w' is not named step<int>.<param>"):
        snapshots.load_snapshots(path)
    safetensors.torch.save_file({"step0.w": torch.zeros(2), "step0.v": torch.zeros(1), "step5.w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"step 5 has other parameters than step 0: missing \['v'\]"):
        snapshots.load_snapshots(path)
    safetensors.torch.save_file({"step0.w": torch.zeros(2), "step7.w": torch.zeros(2)}, path,
                                metadata={"steps": "[0, 5]"})
    with pytest.raises(ValueError, match="metadata steps"):
        snapshots.load_snapshots(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        snapshots.load_snapshots(path)
    states = _snapshots()
    del states[5]["a.bias"]
    with pytest.raises(ValueError, match="other parameters"):
        snapshots.save_snapshots(tmp_path / "x.safetensors", states, {})
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------------------- distances and the summary

def _hand_path():
    final = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 4.0]]), "skip": torch.zeros(3)}
    states = [{"a": torch.tensor([6.0, 4.0]), "b": torch.tensor([[0.0, 4.0]]), "skip": torch.ones(3)},  # diff (3,4,0,0)
              {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 6.0]]), "skip": torch.ones(3)},  # diff (0,0,0,2)
              dict(final)]
    return states, final


def test_path_distances_by_hand():
    states, final = _hand_path()
    got = trajectory_plane.path_distances(states, final, ["a", "b"])  # "skip" moves but is not counted
    assert got["distance_to_final"] == pytest.approx([5.0, 2.0, 0.0], abs=1e-15)
    assert got["distance_travelled"] == pytest.approx([0.0, math.sqrt(29), math.sqrt(29) + 2], abs=1e-14)
    assert got["final_norm"] == pytest.approx(5.0, abs=1e-15)


def test_summary_is_json_ready():
    final, states = _planar()
    plane = trajectory_plane.pca_plane(states, final, NAMES)
    distances = trajectory_plane.path_distances(states, final, NAMES)
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 100]
    record = json.loads(json.dumps(trajectory_plane.summary(np.array(steps), plane, distances)))
    assert set(record) == {"steps", "coords", "explained_variance_ratio", "scale", "normalization", "in_plane",
                           "distance_to_final", "distance_travelled", "final_norm"}
    assert record["steps"] == steps and record["coords"] == plane["coords"].tolist()
    assert record["distance_travelled"] == distances["distance_travelled"]
    with pytest.raises(ValueError, match="steps"):
        trajectory_plane.summary(steps[:-1], plane, distances)

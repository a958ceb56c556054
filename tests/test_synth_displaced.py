"""Tests of invivo.synth.displaced: rigid transforms against hand-worked rotations, the
analytic renderer against the phantom's own painted labels (exactly), exact integer
shifts and 90-degree rotations, the analytic organ volumes, and the rendered
modalities against their tables, conserved totals and the moved centre of mass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from invivo.errors import ParameterError
from invivo.synth import mouse_phantom
from invivo.synth.displaced import (
    MR_ECHO_TIME_S,
    PET_BQ_PER_ML,
    body_points,
    grid,
    random_rigid,
    render_modality,
    render_phantom,
    rigid_matrix,
)
from invivo.synth.phantom import DEFAULT_HU, DEFAULT_R2STAR_PER_S, DEFAULT_S0

R, A, S = np.eye(3)


@pytest.fixture(scope="module")
def ph():
    return mouse_phantom(voxel_size_mm=0.5)


def _labels_of(ph):
    return {name: float(lab) for lab, name in ph.names.items()}


def _apply(m, p):
    return np.asarray(p, dtype=float) @ m[:3, :3].T + m[:3, 3]


def _rotation_angle_deg(m):
    return math.degrees(math.acos(np.clip((np.trace(m[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)))


def _centre_of_mass_mm(vol, data):
    w = data.sum()
    c = [(data.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(data.shape[ax])).sum() / w
         for ax in range(3)]
    return _apply(vol.affine, c)


# A moderate motion that keeps the moved body inside the default 40 x 36 x 100 mm field of view.
MOTION = rigid_matrix((5.0, -4.0, 10.0), (1.5, -1.0, 2.0))


# --------------------------------------------------------------------------- rigid transforms
def test_rigid_matrix_is_a_proper_rotation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rigid_matrix(rng.uniform(-180, 180, 3), rng.uniform(-10, 10, 3), centre_mm=rng.uniform(-5, 5, 3))
        r = m[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-14)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-14)
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])


def test_rigid_matrix_90_degree_rotations_map_axes_right_handed():
    rx, ry, rz = (rigid_matrix(a)[:3, :3] for a in ((90, 0, 0), (0, 90, 0), (0, 0, 90)))
    # exact integers: the 90-degree cosines are snapped to 0
    assert np.array_equal(rx @ A, S) and np.array_equal(rx @ S, -A) and np.array_equal(rx @ R, R)
    assert np.array_equal(ry @ S, R) and np.array_equal(ry @ R, -S) and np.array_equal(ry @ A, A)
    assert np.array_equal(rz @ R, A) and np.array_equal(rz @ A, -R) and np.array_equal(rz @ S, S)
    # R = Rz @ Ry @ Rx: the rotation about R acts first
    both = rigid_matrix((90, 0, 90))[:3, :3]
    assert np.array_equal(both @ A, S)  # Rx: A -> S, Rz leaves S
    assert np.array_equal(both @ R, A)  # Rx leaves R, Rz: R -> A
    np.testing.assert_allclose(rigid_matrix((30, 40, 50))[:3, :3],
                               rigid_matrix((0, 0, 50))[:3, :3] @ rigid_matrix((0, 40, 0))[:3, :3]
                               @ rigid_matrix((30, 0, 0))[:3, :3], atol=1e-15)
    # 180 and 270 degrees are exact too
    assert np.array_equal(rigid_matrix((0, 0, 180))[:3, :3], np.diag([-1.0, -1.0, 1.0]))
    assert np.array_equal(rigid_matrix((0, 0, 270))[:3, :3] @ R, -A)


def test_rigid_matrix_centre_and_translation():
    c = np.array([3.0, -2.0, 10.0])
    t = np.array([1.0, 2.0, -0.5])
    m = rigid_matrix((0, 0, 90), t, centre_mm=c)
    np.testing.assert_allclose(_apply(m, c), c + t, atol=1e-14)  # the centre only translates
    # c + R-axis turns to c + A-axis, then moves by t
    np.testing.assert_allclose(_apply(m, c + 2 * R), c + 2 * A + t, atol=1e-14)
    # same as translate(-c), rotate, translate(c + t)
    generic = rigid_matrix((12.0, -7.0, 33.0), t, centre_mm=c)
    p = np.array([[5.0, 6.0, -7.0], [0.0, 0.0, 0.0]])
    r = rigid_matrix((12.0, -7.0, 33.0))[:3, :3]
    np.testing.assert_allclose(_apply(generic, p), (p - c) @ r.T + c + t, atol=1e-12)


def test_random_rigid_bounds_and_spread():
    rng = np.random.default_rng(42)
    c = np.array([1.0, 2.0, 3.0])
    angles, lengths, axes = [], [], []
    for _ in range(200):
        m = random_rigid(rng, max_rotation_deg=20.0, max_translation_mm=10.0, centre_mm=c)
        r = m[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-13)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-13)
        angles.append(_rotation_angle_deg(m))
        lengths.append(np.linalg.norm(m[:3, 3] - (c - r @ c)))  # the translation t
        w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        axes.append(w / np.linalg.norm(w))
    angles, lengths = np.array(angles), np.array(lengths)
    assert angles.max() <= 20.0 + 1e-9 and lengths.max() <= 10.0 + 1e-12
    # uniform on [0, 20] deg and [0, 10] mm: the range is used, mean near the middle
    # (sd of a mean of 200 uniforms: 0.41 deg, 0.20 mm)
    assert angles.min() < 1.0 and angles.max() > 19.0 and abs(angles.mean() - 10.0) < 1.5
    assert lengths.min() < 0.5 and lengths.max() > 9.5 and abs(lengths.mean() - 5.0) < 0.75
    # axes uniform on the sphere: their mean is near 0 (expected norm ~0.07)
    assert np.linalg.norm(np.mean(axes, axis=0)) < 0.2
    np.testing.assert_allclose(random_rigid(rng, max_rotation_deg=0.0, max_translation_mm=0.0), np.eye(4),
                               atol=1e-15)


def test_grid_centred_and_covering():
    shape, aff = grid((0.3, 0.4, 0.5), fov_mm=(10.0, 9.0, 20.0), centre_mm=(1.0, -2.0, 5.0))
    assert shape == (34, 23, 40)  # ceil(10/0.3), ceil(9/0.4), 20/0.5
    centres = [aff[ax, 3] + aff[ax, ax] * (np.arange(shape[ax])) for ax in range(3)]
    np.testing.assert_allclose([c.mean() for c in centres], [1.0, -2.0, 5.0], atol=1e-12)
    assert all(shape[ax] * aff[ax, ax] >= (10.0, 9.0, 20.0)[ax] for ax in range(3))
    # the phantom's own grid
    p = mouse_phantom(voxel_size_mm=0.5)
    shape, aff = grid(0.5, fov_mm=(30.0, 24.0, 90.0))
    assert shape == p.labels.shape and np.array_equal(aff, p.labels.affine)


# --------------------------------------------------------------------------- the renderer
def test_render_on_phantom_grid_reproduces_painted_labels_exactly(ph):
    img = render_phantom(ph, _labels_of(ph), affine=ph.labels.affine, shape=ph.labels.shape)
    assert img.dtype == np.float64
    assert np.array_equal(img, ph.labels.data.astype(np.float64))
    # background only where no ellipsoid is
    img = render_phantom(ph, _labels_of(ph), affine=ph.labels.affine, shape=ph.labels.shape, background=-5.0)
    assert np.array_equal(img == -5.0, ph.labels.data == 0)


def test_group_value_and_unnamed_organs_zero(ph):
    img = render_phantom(ph, {"tumour": 2.0, "tumour_core": 7.0}, affine=ph.labels.affine, shape=ph.labels.shape)
    lab = ph.labels.data
    assert np.all(img[lab == 9] == 2.0) and np.all(img[lab == 10] == 7.0)
    assert np.all(img[(lab != 9) & (lab != 10)] == 0.0)


@pytest.mark.parametrize("supersample", [1, 2])
def test_integer_voxel_translation_shifts_the_array_exactly(ph, supersample):
    shape, aff = grid(0.5)  # 40 x 36 x 100 mm: the shifted tumour stays inside
    values = _labels_of(ph)
    base = render_phantom(ph, values, affine=aff, shape=shape, supersample=supersample)
    moved = render_phantom(ph, values, affine=aff, shape=shape, supersample=supersample,
                           motion=rigid_matrix(translation_mm=(2.0, -1.5, 3.0)))  # (4, -3, 6) voxels
    rolled = np.roll(base, (4, -3, 6), axis=(0, 1, 2))
    assert np.array_equal(moved[4:, :-3, 6:], rolled[4:, :-3, 6:])
    assert moved.sum() == base.sum()  # nothing left the field of view


@pytest.mark.parametrize("supersample", [1, 2])
def test_90_degree_rotation_about_s_rotates_the_array(ph, supersample):
    shape, aff = grid(0.5, fov_mm=(40.0, 40.0, 100.0))  # square in i, j, centred on the rotation axis
    values = _labels_of(ph)
    base = render_phantom(ph, values, affine=aff, shape=shape, supersample=supersample)
    moved = render_phantom(ph, values, affine=aff, shape=shape, supersample=supersample,
                           motion=rigid_matrix((0, 0, 90)))
    # world (x, y) shows the phantom at (y, -x): moved[i, j] = base[j, n-1-i]
    expected = base[:, ::-1, :].transpose(1, 0, 2)
    if supersample == 1:
        assert np.array_equal(moved, expected)
    else:  # same sub-points, summed in another order
        np.testing.assert_allclose(moved, expected, rtol=0, atol=1e-12)
    assert not np.array_equal(moved, base)


def test_oblique_grid_equals_inverse_motion(ph):
    # rendering on a grid moved by G equals rendering the object moved by inverse(G)
    g = rigid_matrix((7.0, -3.0, 21.0), (0.3, 0.7, -1.1))
    shape, aff = grid(0.6, fov_mm=(36.0, 36.0, 100.0))
    a = render_phantom(ph, _labels_of(ph), affine=g @ aff, shape=shape)
    b = render_phantom(ph, _labels_of(ph), affine=aff, shape=shape, motion=np.linalg.inv(g))
    assert np.mean(a != b) < 1e-5  # only points within rounding of a surface may differ


@pytest.mark.parametrize("moved", [False, True])
def test_supersampled_organ_volumes_approach_analytic(ph, moved):
    # each organ alone, on a small grid around it; the volume is sum x voxel volume
    m = random_rigid(np.random.default_rng(7), max_rotation_deg=30.0, max_translation_mm=2.0) if moved else np.eye(4)
    vox = 0.5
    errors = {1: [], 4: []}
    for name, ells in ph.shapes.items():
        if name == "body":  # the body's analytic volume is not defined (what the organs leave)
            continue
        lo = np.min([np.subtract(e.centre_mm, e.semi_axes_mm) for e in ells], axis=0)
        hi = np.max([np.add(e.centre_mm, e.semi_axes_mm) for e in ells], axis=0)
        half = np.linalg.norm(hi - lo) / 2.0 + 1.0  # covers the organ whatever the rotation
        shape, aff = grid(vox, fov_mm=(2 * half,) * 3, centre_mm=_apply(m, (lo + hi) / 2.0))
        for s in errors:
            img = render_phantom(ph, {name: 1.0}, affine=aff, shape=shape, supersample=s, motion=m)
            vol_ml = img.sum() * vox ** 3 / 1000.0
            errors[s].append(vol_ml / ph.analytic_volumes_ml[name] - 1.0)
    e1, e4 = np.abs(errors[1]), np.abs(errors[4])
    # measured (unmoved): supersample 4 within 0.6 % (tumour core, r = 2 mm), mean 0.16 %;
    # supersample 1 up to 5.5 % (spleen, bladder)
    assert e4.max() < 0.01, errors[4]
    assert e4.mean() < 0.003, errors[4]
    assert e4.sum() < e1.sum()


# --------------------------------------------------------------------------- modalities
def test_pet_total_conserved_under_motion_and_blur(ph):
    _, sharp = render_modality(ph, "PET", voxel_size_mm=0.5, noise=0, fwhm_mm=0)
    vol, still = render_modality(ph, "PET", voxel_size_mm=0.5, noise=0)
    vol_m, moved = render_modality(ph, "PET", voxel_size_mm=0.5, noise=0, motion=MOTION)
    # the moved body stays inside the field of view: the outer two voxels of every face are empty
    d = moved["noise_free"]
    for ax in range(3):
        for sl in (slice(0, 2), slice(-2, None)):
            idx = [slice(None)] * 3
            idx[ax] = sl
            assert d[tuple(idx)].max() < 1e-6 * d.max()
    t_sharp, t_still, t_moved = (x["noise_free"].sum() for x in (sharp, still, moved))
    assert t_still == pytest.approx(t_sharp, rel=1e-12)  # the blur keeps the total
    assert t_moved == pytest.approx(t_still, rel=0.01)  # measured 0.1 %
    assert np.array_equal(moved["motion"], MOTION) and np.array_equal(still["motion"], np.eye(4))
    assert still["fwhm_mm"] == 1.2 and sharp["fwhm_mm"] == 0.0
    # the total against the analytic organ volumes (organs inside the body only: body and tumour 0)
    v, t = render_modality(ph, "PET", voxel_size_mm=0.5, noise=0, values={"body": 0.0, "tumour": 0.0})
    exact_bq = sum(PET_BQ_PER_ML[n] * ph.analytic_volumes_ml[n] for n in PET_BQ_PER_ML
                   if n not in ("body", "tumour_rim", "tumour_core"))
    assert t["noise_free"].sum() * v.voxel_volume_ml == pytest.approx(exact_bq, rel=0.005)  # measured 0.28 %
    assert t["values"]["body"] == 0.0 and t["values"]["liver"] == PET_BQ_PER_ML["liver"]


def test_pet_centre_of_mass_follows_motion(ph):
    # supersample 4 (the PET default): 3 aliases on the axis-aligned unmoved grid (0.02 mm COM bias measured)
    vol, still = render_modality(ph, "PET", voxel_size_mm=0.5, noise=0, supersample=4)
    vol_m, moved = render_modality(ph, "PET", voxel_size_mm=0.5, noise=0, supersample=4, motion=MOTION)
    c0 = _centre_of_mass_mm(vol, still["noise_free"])
    c1 = _centre_of_mass_mm(vol_m, moved["noise_free"])
    assert np.linalg.norm(c1 - _apply(MOTION, c0)) < 0.01  # measured 0.002 mm
    assert np.linalg.norm(c1 - c0) > 2.0  # the motion is not trivial
    np.testing.assert_array_equal(vol_m.affine, vol.affine)  # the displacement is in the data


def _interior_points(ph):
    """One point per organ well inside it (>= 0.75 mm from any other organ), phantom frame."""
    pts = {"body": [(0.0, 0.0, 35.0), (-8.0, 0.0, -15.0)]}
    for name, ells in ph.shapes.items():
        if name == "body":
            continue
        if name == "tumour_rim":
            c = np.array(ells[0].centre_mm)
            pts[name] = [c + (0, 0, 2.75), c + (0, -2.75, 0), c + (2.75, 0, 0)]
        else:
            pts[name] = [e.centre_mm for e in ells]
    return pts


@pytest.mark.parametrize("motion", [None, MOTION], ids=["still", "moved"])
def test_mr_and_ct_values_match_tables_in_organ_interiors(ph, motion):
    m = np.eye(4) if motion is None else motion
    mr, mr_t = render_modality(ph, "MR", voxel_size_mm=0.25, noise=0, motion=motion)
    ct, ct_t = render_modality(ph, "CT", voxel_size_mm=0.4, noise=0, fwhm_mm=0, motion=motion)
    ct_blur, _ = render_modality(ph, "CT", voxel_size_mm=0.4, noise=0, motion=motion)  # default 0.2 mm FWHM
    labels = render_phantom(ph, _labels_of(ph), affine=mr.affine, shape=mr.shape, motion=motion)
    assert mr.meta.modality == "MR" and mr.meta.echo_times_s == (0.003,) and mr_t["echo_times_s"] == (0.003,)
    assert ct.meta.modality == "CT" and ct.meta.units == "HU"
    for name, points in _interior_points(ph).items():
        s_expected = DEFAULT_S0[name] * math.exp(-DEFAULT_R2STAR_PER_S[name] * MR_ECHO_TIME_S)
        assert mr_t["values"][name] == pytest.approx(s_expected, rel=1e-15)
        for p in points:
            w = _apply(m, p)
            i_mr = tuple(np.rint(_apply(np.linalg.inv(mr.affine), w)).astype(int))
            i_ct = tuple(np.rint(_apply(np.linalg.inv(ct.affine), w)).astype(int))
            assert labels[i_mr] == ph.label(name)  # the point is where we think
            assert mr.data[i_mr] == pytest.approx(s_expected, rel=1e-14), name
            assert ct.data[i_ct] == pytest.approx(DEFAULT_HU[name], rel=1e-13, abs=1e-10), name
            if name != "tumour_rim":  # 1.5 mm thick: its interior is within the blur's reach
                assert ct_blur.data[i_ct] == pytest.approx(DEFAULT_HU[name], rel=1e-9, abs=1e-9), name
    assert mr.data[0, 0, 0] == 0.0 and ct.data[0, 0, 0] == -1000.0 and ct_blur.data[0, 0, 0] == -1000.0


def test_noise_levels_match_their_definition(ph):
    # PET: sd = 0.05 x body level in the body (Poisson-like, sd^2 proportional to the value)
    pet, t = render_modality(ph, "PET", voxel_size_mm=0.5, seed=3)
    body = PET_BQ_PER_ML["body"]
    clean = t["noise_free"]
    in_body = np.abs(clean - body) < 1e-9 * body
    assert in_body.sum() > 20_000
    assert np.std(pet.data[in_body] - clean[in_body]) == pytest.approx(0.05 * body, rel=0.02)
    hot = clean > 0.9 * PET_BQ_PER_ML["bladder"]
    rel_hot = np.std(pet.data[hot] - clean[hot]) / (0.05 * math.sqrt(body * PET_BQ_PER_ML["bladder"]))
    assert rel_hot == pytest.approx(1.0, rel=0.1)
    assert np.all(pet.data[clean == 0] == 0)  # no activity, no noise
    assert t["noise_sd"] == pytest.approx(0.05 * body) and pet.meta.units == "BQML" and pet.meta.modality == "PT"
    # MR: Rician, sigma = 0.02 x body signal: air is Rayleigh with mean sigma sqrt(pi/2)
    mr, t = render_modality(ph, "MR", voxel_size_mm=0.5, seed=4)
    sigma = 0.02 * t["values"]["body"]
    air = t["noise_free"] == 0
    assert t["noise_sd"] == pytest.approx(sigma)
    assert mr.data[air].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2.0), rel=0.01)
    # CT: additive 20 HU
    ct, t = render_modality(ph, "CT", voxel_size_mm=0.5, seed=5)
    assert np.std(ct.data - t["noise_free"]) == pytest.approx(20.0, rel=0.01)
    # SPECT: its own defaults
    spect, t = render_modality(ph, "spect", voxel_size_mm=0.8, noise=0)
    assert spect.meta.modality == "NM" and t["fwhm_mm"] == 1.6 and t["supersample"] == 4
    assert t["values"]["kidneys"] > 10 * t["values"]["liver"] / 2


def test_body_points_uniform_inside_the_shrunk_body(ph):
    rng = np.random.default_rng(11)
    pts = body_points(ph, 20_000, rng=rng, margin_mm=1.0)
    e = ph.shapes["body"][0]
    a = np.array(e.semi_axes_mm) - 1.0
    q = (((pts - e.centre_mm) / a) ** 2).sum(axis=1)
    assert pts.shape == (20_000, 3) and q.max() <= 1.0
    # uniform in volume: a fraction f^3 lies within the ellipsoid scaled by f (sd ~0.003)
    for f in (0.5, 0.8):
        assert np.mean(q <= f * f) == pytest.approx(f ** 3, abs=0.01)
    assert np.all(np.abs(pts.mean(axis=0) - e.centre_mm) < 0.02 * a)  # sd of the mean ~0.003 a
    assert body_points(ph, 0, rng=rng).shape == (0, 3)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda ph: render_modality(ph, "PETCT", voxel_size_mm=0.5), "unknown modality"),
        (lambda ph: render_modality(ph, "PET", voxel_size_mm=-0.5), "voxel_size_mm"),
        (lambda ph: render_modality(ph, "PET", voxel_size_mm=0.5, motion=np.eye(3)), "4x4"),
        (lambda ph: render_modality(ph, "CT", voxel_size_mm=0.5, motion=np.diag([1.1, 1.0, 1.0, 1.0])),
         "not rigid"),
        (lambda ph: render_modality(ph, "CT", voxel_size_mm=0.5, motion=np.diag([-1.0, 1.0, 1.0, 1.0])),
         "not rigid"),
        (lambda ph: render_modality(ph, "MR", voxel_size_mm=0.5, values={"brain": 1.0}), "unknown organ"),
        (lambda ph: render_modality(ph, "MR", voxel_size_mm=0.5, noise=-1.0), "noise"),
        (lambda ph: render_modality(ph, "MR", voxel_size_mm=0.5, fwhm_mm=float("nan")), "fwhm_mm"),
        (lambda ph: render_phantom(ph, {"brain": 1.0}, affine=np.eye(4), shape=(4, 4, 4)), "unknown organ"),
        (lambda ph: render_phantom(ph, {"liver": 1.0}, affine=np.eye(4), shape=(4, 4)), "shape"),
        (lambda ph: render_phantom(ph, {"liver": 1.0}, affine=np.zeros((4, 4)), shape=(4, 4, 4)), "affine"),
        (lambda ph: render_phantom(ph, {"liver": 1.0}, affine=np.eye(4), shape=(4, 4, 4), supersample=0),
         "supersample"),
        (lambda ph: render_phantom(ph, {"liver": "x"}, affine=np.eye(4), shape=(4, 4, 4)), "liver"),
        (lambda ph: render_phantom("ph", {"liver": 1.0}, affine=np.eye(4), shape=(4, 4, 4)), "Phantom"),
        (lambda ph: random_rigid(0), "Generator"),
        (lambda ph: random_rigid(np.random.default_rng(0), max_rotation_deg=-1.0), "max_rotation_deg"),
        (lambda ph: rigid_matrix((0, 90)), "rotation_deg"),
        (lambda ph: grid(0.5, fov_mm=(10.0, 0.0, 10.0)), "fov_mm"),
        (lambda ph: body_points(ph, 10, rng=np.random.default_rng(0), margin_mm=11.0), "margin_mm"),
    ],
)
def test_bad_input_raises_one_line_parameter_error(ph, call, match):
    with pytest.raises(ParameterError, match=match) as info:
        call(ph)
    assert "\n" not in str(info.value)

"""Tests of invivo.report: figures checked against the known geometry and values they show."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from invivo import Meta, Volume
from invivo import report as R
from invivo.errors import GeometryError, OutputExistsError, ParameterError

N = 40
# x flipped (voxel i runs R -> L), anisotropic voxels 0.5 x 0.6 x 0.8 mm
AFFINE = np.array([[-0.5, 0.0, 0.0, 12.0],
                   [0.0, 0.6, 0.0, -10.0],
                   [0.0, 0.0, 0.8, -15.0],
                   [0.0, 0.0, 0.0, 1.0]])
HOT_VOX = (12, 25, 18)     # the bright sphere: RAS (6.0, 5.0, -0.6) mm
SIDE_VOX = (28, 10, 30)    # a fainter sphere off every slice through HOT: RAS (-2.0, -4.0, 9.0) mm
VOXEL_MM = (0.5, 0.6, 0.8)


def _world(ijk) -> np.ndarray:
    return AFFINE[:3, :3] @ np.asarray(ijk, float) + AFFINE[:3, 3]


def _xyz(shape=(N, N, N), affine=AFFINE) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1).T
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


@pytest.fixture(scope="module")
def vols():
    xyz = _xyz()
    centre = _world((20, 20, 20))
    ellipsoid = (((xyz - centre) / np.array([8.0, 9.0, 13.0])) ** 2).sum(-1) <= 1.0
    mr = np.where(ellipsoid, 100.0, 5.0) + 0.5 * xyz[..., 2]
    pet = (10.0 * np.exp(-((xyz - _world(HOT_VOX)) ** 2).sum(-1) / (2 * 1.5 ** 2))
           + 4.0 * np.exp(-((xyz - _world(SIDE_VOX)) ** 2).sum(-1) / (2 * 1.5 ** 2)))
    return (Volume(mr, AFFINE, Meta(modality="MR")), Volume(pet, AFFINE, Meta(modality="PT", units="%ID/g")),
            ellipsoid)


def _ax(fig, gid):
    axes = [a for a in fig.axes if a.get_gid() == gid]
    assert len(axes) == 1, f"expected one axes {gid!r}, got {[a.get_gid() for a in fig.axes]}"
    return axes[0]


def _image(ax, gid):
    ims = [im for im in ax.get_images() if im.get_gid() == gid]
    assert len(ims) == 1
    return ims[0]


def _pixel_world(im) -> tuple[np.ndarray, tuple[float, float]]:
    """The image array and the world (h, v) mm of the centre of its brightest pixel."""
    a = np.ma.filled(np.ma.asarray(im.get_array()).astype(float), np.nan)
    r, c = np.unravel_index(np.nanargmax(a), a.shape)
    x0, x1, y0, y1 = im.get_extent()
    return a, (x0 + (c + 0.5) * (x1 - x0) / a.shape[1], y0 + (r + 0.5) * (y1 - y0) / a.shape[0])


def _png_rgb(path) -> np.ndarray:
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def _png_pixel(fig, ax, img, xy_mm) -> np.ndarray:
    """RGB of the saved PNG at the world point ``xy_mm`` of ``ax`` (display y runs up, PNG rows down)."""
    px, py = ax.transData.transform(xy_mm)
    return img[int(round(img.shape[0] - py)), int(round(px))]


# ---------------------------------------------------------------------------
# fused_png
# ---------------------------------------------------------------------------
def test_fused_slices_pass_through_the_hot_spot_in_ras(vols, tmp_path):
    mr, pet, _ = vols
    mr_before, pet_before = mr.data.copy(), pet.data.copy()
    path, fig = R.fused_png(mr, pet, tmp_path / "fused.png", return_figure=True)
    assert path == tmp_path / "fused.png" and path.is_file()
    np.testing.assert_array_equal(mr.data, mr_before)
    np.testing.assert_array_equal(pet.data, pet_before)
    img = _png_rgb(path)
    assert img.shape[1] == R.FIGURE_WIDTH_PX and 500 < img.shape[0] < 1600
    hot = _world(HOT_VOX)  # (6.0, 5.0, -0.6) mm
    expect = {"axial": (hot[0], hot[1]), "coronal": (hot[0], hot[2]), "sagittal": (hot[1], hot[2])}
    for panel, (h, v) in expect.items():
        ax = _ax(fig, panel)
        a, (ph, pv) = _pixel_world(_image(ax, "overlay"))
        # the brightest pixel sits on the sphere's centre voxel: exact to float rounding (< 1e-9 mm)
        assert abs(ph - h) < 1e-9 and abs(pv - v) < 1e-9, (panel, ph, pv, h, v)
        assert np.nanmax(a) == pytest.approx(10.0, rel=1e-12)
        # physical aspect: the displayed mm box has the same proportions on screen
        x0, x1, y0, y1 = ax.get_xlim() + ax.get_ylim()
        bbox = ax.get_window_extent()
        assert bbox.width / bbox.height == pytest.approx(abs(x1 - x0) / abs(y1 - y0), rel=0.02)
        # rendered PNG: the centroid of the hot-coloured pixels (red >> blue) in this panel is the
        # sphere centre to within one voxel (the peak itself is white in 'hot', so it is a ring)
        bb = ax.get_window_extent()
        r0, r1 = int(img.shape[0] - bb.y1) + 2, int(img.shape[0] - bb.y0) - 2
        c0, c1 = int(bb.x0) + 2, int(bb.x1) - 2
        sub = img[r0:r1, c0:c1]
        rows, cols = np.nonzero(sub[..., 0] - sub[..., 2] > 0.3)
        assert rows.size > 50, panel
        disp = np.c_[cols.mean() + c0 + 0.5, img.shape[0] - (rows.mean() + r0 + 0.5)]
        wh, wv = ax.transData.inverted().transform(disp)[0]
        vh, vv = (VOXEL_MM[0], VOXEL_MM[1]) if panel == "axial" else \
            (VOXEL_MM[0], VOXEL_MM[2]) if panel == "coronal" else (VOXEL_MM[1], VOXEL_MM[2])
        assert abs(wh - h) < vh and abs(wv - v) < vv, (panel, wh, wv, h, v)
        bg = _png_pixel(fig, ax, img, (h - 10.0 if panel != "sagittal" else h - 12.0, v))
        assert abs(bg[0] - bg[2]) < 0.02 and abs(bg[0] - bg[1]) < 0.02, (panel, bg)
    # the titles state the slice positions in mm
    assert _ax(fig, "axial").get_title() == "axial z = -0.6 mm"
    assert _ax(fig, "coronal").get_title() == "coronal y = 5.0 mm"
    assert _ax(fig, "sagittal").get_title() == "sagittal x = 6.0 mm"
    # colour bar carries the units
    labels = [a.get_ylabel() for a in fig.axes]
    assert "%ID/g" in labels


def test_fused_axial_slice_is_the_data_in_ras_order(vols, tmp_path):
    """Independent of nibabel: the x axis of the data is flipped, so the axial image is data[::-1, :, k].T."""
    mr, pet, _ = vols
    _, fig = R.fused_png(mr, pet, tmp_path / "f.png", slice_mm=_world((7, 30, 11)), return_figure=True)
    ax = _ax(fig, "axial")
    under = _image(ax, "underlay")
    np.testing.assert_array_equal(under.get_array(), mr.data[::-1, :, 11].T)
    # extent edges are voxel-centre coordinates +/- half a voxel
    xs = np.sort(-0.5 * np.arange(N) + 12.0)  # world x of the voxel centres
    assert under.get_extent() == pytest.approx((xs[0] - 0.25, xs[-1] + 0.25, -10.0 - 0.3, -10.0 + 0.6 * 39 + 0.3))
    cor = _image(_ax(fig, "coronal"), "underlay")
    np.testing.assert_array_equal(cor.get_array(), mr.data[::-1, 30, :].T)
    sag = _image(_ax(fig, "sagittal"), "underlay")
    np.testing.assert_array_equal(sag.get_array(), mr.data[7, :, :].T)
    assert _ax(fig, "sagittal").get_title() == f"sagittal x = {_world((7, 0, 0))[0]:.1f} mm"


def test_fused_mip_shows_the_sphere_that_no_slice_cuts(vols, tmp_path):
    mr, pet, _ = vols
    _, fig = R.fused_png(mr, pet, tmp_path / "f.png", return_figure=True)
    side = _world(SIDE_VOX)  # (-2, -4, 9) mm, 4 %ID/g peak
    mip = _image(_ax(fig, "mip_coronal"), "overlay")
    a = np.asarray(mip.get_array(), float)
    np.testing.assert_array_equal(a, pet.data.max(axis=1)[::-1, :].T)
    x0, x1, z0, z1 = mip.get_extent()
    col = int((side[0] - x0) / (x1 - x0) * a.shape[1])
    row = int((side[2] - z0) / (z1 - z0) * a.shape[0])
    assert a[row, col] == pytest.approx(4.0, rel=1e-3)
    # the coronal slice through the hot spot (y = 5 mm) does not cut the side sphere (9 mm away)
    sl = np.ma.filled(np.ma.asarray(_image(_ax(fig, "coronal"), "overlay").get_array()).astype(float), 0.0)
    assert sl[row, col] == 0.0  # masked: below the 5 % threshold
    sag = np.asarray(_image(_ax(fig, "mip_sagittal"), "overlay").get_array(), float)
    np.testing.assert_array_equal(sag, pet.data.max(axis=0).T)


def test_fused_4d_frames_mr_only_and_custom_range(vols, tmp_path):
    mr, pet, _ = vols
    dyn = Volume(np.stack([pet.data * s for s in (1.0, 2.0, 3.0)], axis=-1), AFFINE, Meta(modality="PT"))
    _, fig = R.fused_png(mr, dyn, tmp_path / "last.png", return_figure=True)
    assert np.nanmax(_pixel_world(_image(_ax(fig, "axial"), "overlay"))[0]) == pytest.approx(30.0)
    assert "frame 2 of 3" in fig.get_suptitle()
    _, fig = R.fused_png(mr, dyn, tmp_path / "first.png", frame=0, overlay_range=(0, 50), return_figure=True)
    im = _image(_ax(fig, "axial"), "overlay")
    assert np.nanmax(_pixel_world(im)[0]) == pytest.approx(10.0)
    assert im.get_clim() == (0.0, 50.0)
    # threshold: 5 % of (0, 50) -> values below 2.5 are masked
    arr = np.ma.asarray(im.get_array())
    assert np.all(arr.compressed() >= 2.5) and arr.mask.any()
    p, fig = R.fused_png(mr, None, tmp_path / "mr.png", return_figure=True)
    assert _png_rgb(p).shape[1] == 900
    assert [a.get_gid() for a in fig.axes if a.get_gid()] == ["axial", "coronal", "sagittal"]
    assert all(not [i for i in a.get_images() if i.get_gid() == "overlay"] for a in fig.axes)
    with pytest.raises(ParameterError, match="frame"):
        R.fused_png(mr, dyn, tmp_path / "bad.png", frame=3)


def test_fused_long_body_layout_with_permuted_axes(tmp_path):
    """Voxel axes (i, j, k) = (S, L, A): the picture must still be in RAS and one row of five panels."""
    shape = (100, 24, 20)
    aff = np.array([[0, -0.8, 0, 10.0], [0, 0, 0.8, -8.0], [0.8, 0, 0, -40.0], [0, 0, 0, 1.0]])
    xyz = _xyz(shape, aff)
    spot = np.array([2.8, 2.4, 24.0])  # voxel (80, 9, 13)
    pet = np.exp(-((xyz - spot) ** 2).sum(-1) / 4.0)
    mr = np.ones(shape)
    _, fig = R.fused_png(Volume(mr, aff), Volume(pet, aff), tmp_path / "m.png", return_figure=True)
    specs = [a.get_subplotspec() for a in fig.axes if a.get_gid()]
    assert len(specs) == 5 and all(sp.get_geometry()[0] == 1 for sp in specs)  # one row of five panels
    for panel, (h, v) in {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}.items():
        _, (ph, pv) = _pixel_world(_image(_ax(fig, panel), "overlay"))
        assert ph == pytest.approx(spot[h], abs=1e-9) and pv == pytest.approx(spot[v], abs=1e-9)


def test_fused_rejects_grid_mismatch_and_bad_input(vols, tmp_path):
    mr, pet, _ = vols
    shifted = Volume(pet.data, AFFINE + np.array([[0, 0, 0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(GeometryError, match=r"invivo\.align\.resample"):
        R.fused_png(mr, shifted, tmp_path / "x.png")
    with pytest.raises(GeometryError, match="same grid"):
        R.fused_png(mr, Volume(pet.data[:30], AFFINE), tmp_path / "x.png")
    with pytest.raises(ParameterError, match=r"\.png"):
        R.fused_png(mr, pet, tmp_path / "x.jpg")
    with pytest.raises(ParameterError, match="outside the image"):
        R.fused_png(mr, pet, tmp_path / "x.png", slice_mm=(500.0, 0.0, 0.0))
    with pytest.raises(ParameterError, match="overlay_range"):
        R.fused_png(mr, pet, tmp_path / "x.png", overlay_range=(5, 1))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_figures_are_not_overwritten_unless_asked(vols, tmp_path):
    mr, pet, _ = vols
    p = R.fused_png(mr, None, tmp_path / "a.png", mip=False)
    before = p.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        R.fused_png(mr, pet, p)
    assert p.read_bytes() == before
    R.fused_png(mr, pet, p, overwrite=True)
    assert p.read_bytes() != before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.png"]  # no temporary files left


# ---------------------------------------------------------------------------
# map_png
# ---------------------------------------------------------------------------
def test_map_centred_on_mask_and_masked_outside(vols, tmp_path):
    mr, pet, ellipsoid = vols
    mask = np.zeros((N, N, N), bool)
    mask[20:31, 5:16, 24:35] = True  # centre voxel (25, 10, 29)
    r2s = Volume(20.0 + 0.25 * np.indices((N, N, N))[2], AFFINE, Meta(modality="MR", units="s-1"))
    path, fig = R.map_png(r2s, tmp_path / "map.png", underlay=mr, label="R2* (s-1)", mask=mask,
                          return_figure=True)
    assert _png_rgb(path).shape[1] == 900
    c = _world((25, 10, 29))
    assert _ax(fig, "axial").get_title() == f"axial z = {c[2]:.1f} mm"
    assert _ax(fig, "coronal").get_title() == f"coronal y = {c[1]:.1f} mm"
    assert _ax(fig, "sagittal").get_title() == f"sagittal x = {c[0]:.1f} mm"
    im = _image(_ax(fig, "axial"), "map")
    arr = np.ma.asarray(im.get_array())
    expect = np.where(mask, r2s.data, np.nan)[::-1, :, 29].T
    np.testing.assert_array_equal(np.ma.filled(arr.astype(float), np.nan), expect)
    assert arr.mask.sum() == np.isnan(expect).sum() > 0
    # default colour range: 1st-99th percentile inside the mask
    inside = r2s.data[mask]
    assert im.get_clim() == pytest.approx(tuple(np.percentile(inside, (1, 99))))
    assert "R2* (s-1)" in [a.get_ylabel() for a in fig.axes]
    _, fig = R.map_png(r2s, tmp_path / "m2.png", label="R2* (s-1)", vrange=(0, 40), cmap="magma",
                       return_figure=True)
    assert _image(_ax(fig, "axial"), "map").get_clim() == (0.0, 40.0)
    with pytest.raises(ParameterError, match="cmap"):
        R.map_png(r2s, tmp_path / "m3.png", label="x", cmap="no-such-map")
    with pytest.raises(ParameterError, match="mask is empty"):
        R.map_png(r2s, tmp_path / "m3.png", label="x", mask=np.zeros((N, N, N), bool))
    with pytest.raises(GeometryError, match="shape"):
        R.map_png(r2s, tmp_path / "m3.png", label="x", mask=np.ones((N, N, 3), bool))


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------
def _table(value_fn, groups=("CAR-T", "control"), n_subj=3, rois=("tumour", "spleen", "muscle"),
           sessions=(("1", 2.0), ("2", 24.0), ("3", 72.0))):
    rows = []
    for g in groups:
        for s in range(n_subj):
            for si, (ses, t) in enumerate(sessions):
                for roi in rois:
                    rows.append(dict(subject=f"{g}-{s}", group=g, session=ses, time_h=t, modality="PT", roi=roi,
                                     measure="idg_mean", value=value_fn(g, s, si, roi), unit="%ID/g"))
    return pd.DataFrame(rows)


def _lines(ax, prefix):
    return {ln.get_gid()[len(prefix):]: ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)}


def test_tac_constant_table_is_flat_at_the_value(tmp_path):
    table = _table(lambda g, s, si, roi: 2.5)
    copy = table.copy()
    path, fig = R.tac_png(table, tmp_path / "tac.png", measure="idg_mean", return_figure=True)
    pd.testing.assert_frame_equal(table, copy)
    assert _png_rgb(path).shape[1] == 900
    for roi in ("tumour", "spleen", "muscle"):
        ax = _ax(fig, f"roi:{roi}")
        means = _lines(ax, "mean:")
        assert set(means) == {"CAR-T", "control"}
        for ln in means.values():
            np.testing.assert_array_equal(ln.get_xdata(), [2.0, 24.0, 72.0])
            np.testing.assert_array_equal(ln.get_ydata(), [2.5, 2.5, 2.5])
        assert len(_lines(ax, "subject:")) == 6
        assert ax.get_ylabel() == "idg_mean (%ID/g)" and ax.get_xlabel() == "time after injection (h)"


def test_tac_mean_and_sd_per_group(tmp_path):
    # subject s of group g at session si: known values -> mean and sample SD per group and time
    vals = {"A": [1.0, 2.0, 6.0], "B": [10.0, 12.0, 14.0]}
    table = _table(lambda g, s, si, roi: vals[g][s] * (si + 1), groups=("A", "B"), rois=("tumour",))
    table.loc[table["session"] == "2", "time_h"] += np.array([-0.3, 0.0, 0.6, 0.0, 0.0, 0.3])  # jittered times
    _, fig = R.tac_png(table, tmp_path / "tac.png", measure="idg_mean", return_figure=True)
    ax = _ax(fig, "roi:tumour")
    for g, v in vals.items():
        ln = _lines(ax, "mean:")[g]
        np.testing.assert_allclose(ln.get_ydata(), np.mean(v) * np.array([1, 2, 3]), rtol=1e-12)
        # the error bar of each point spans mean +/- SD (ddof=1)
        cont = next(c for c in ax.containers if c.lines[0] is ln)
        segs = cont.lines[2][0].get_segments()
        half = [abs(s[1, 1] - s[0, 1]) / 2 for s in segs]
        np.testing.assert_allclose(half, np.std(v, ddof=1) * np.array([1, 2, 3]), rtol=1e-12)
    # x of session 2 = group mean time
    assert _lines(ax, "mean:")["A"].get_xdata()[1] == pytest.approx(24.1)
    assert _lines(ax, "mean:")["B"].get_xdata()[1] == pytest.approx(24.1)


def test_tac_input_errors(tmp_path):
    table = _table(lambda *a: 1.0, rois=tuple(f"r{i}" for i in range(9)))
    with pytest.raises(ParameterError, match="at most 8"):
        R.tac_png(table, tmp_path / "t.png", measure="idg_mean")
    with pytest.raises(ParameterError, match="suvbw_mean.*idg_mean"):
        R.tac_png(table, tmp_path / "t.png", measure="suvbw_mean")
    with pytest.raises(ParameterError, match="not in the table"):
        R.tac_png(table, tmp_path / "t.png", measure="idg_mean", rois=["liver"])
    with pytest.raises(ParameterError, match="lacks column"):
        R.tac_png(table.drop(columns="unit"), tmp_path / "t.png", measure="idg_mean")
    twice = pd.concat([table, table])
    with pytest.raises(ParameterError, match="several rows"):
        R.tac_png(twice, tmp_path / "t.png", measure="idg_mean", rois=["r0"])
    mixed = table.copy()
    mixed.loc[0, "unit"] = "kBq/mL"
    with pytest.raises(ParameterError, match="several units"):
        R.tac_png(mixed, tmp_path / "t.png", measure="idg_mean", rois=["r0"])
    p = R.tac_png(table, tmp_path / "t.png", measure="idg_mean", rois=[f"r{i}" for i in range(8)])
    assert _png_rgb(p).shape[1] == 900


def test_group_bars_heights_errors_and_points(tmp_path):
    vals = {"A": [1.0, 2.0, 6.0], "B": [10.0, 12.0, 14.0]}
    table = _table(lambda g, s, si, roi: vals[g][s] * (2.0 if roi == "spleen" else 1.0) + si,
                   groups=("A", "B"), rois=("tumour", "spleen"))
    with pytest.raises(ParameterError, match="several sessions"):
        R.group_bars_png(table, tmp_path / "b.png", measure="idg_mean")
    path, fig = R.group_bars_png(table, tmp_path / "b.png", measure="idg_mean", session="2", return_figure=True)
    assert _png_rgb(path).shape[1] == 900
    ax = fig.axes[0]
    assert ax.get_ylabel() == "idg_mean (%ID/g)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tumour", "spleen"]
    for g, v in vals.items():
        bars = [p for p in ax.patches if p.get_gid() == f"bars:{g}"]
        expect = [np.mean(v) + 1, 2 * np.mean(v) + 1]
        np.testing.assert_allclose([b.get_height() for b in bars], expect, rtol=1e-12)
        pts = next(c for c in ax.collections if c.get_gid() == f"points:{g}")
        y = np.sort(pts.get_offsets()[:, 1])
        np.testing.assert_allclose(y, np.sort(np.r_[np.array(v) + 1, 2 * np.array(v) + 1]))
        cont = next(c for c in ax.containers if getattr(c, "get_label", lambda: None)() == g)
        segs = cont.errorbar.lines[2][0].get_segments()
        half = [abs(s[1, 1] - s[0, 1]) / 2 for s in segs]
        np.testing.assert_allclose(half, [np.std(v, ddof=1), 2 * np.std(v, ddof=1)], rtol=1e-12)


def test_histogram_medians_and_counts(tmp_path):
    rng = np.random.default_rng(3)
    before = rng.normal(40.0, 8.0, 3000)
    after = rng.normal(90.0, 20.0, 2000)
    after[:5] = np.nan  # left out
    path, fig = R.histogram_png({"before": before, "after SPIO": after}, tmp_path / "h.png", bins=50,
                                range=(0, 200), return_figure=True)
    assert _png_rgb(path).shape[1] == 900
    ax = fig.axes[0]
    meds = _lines(ax, "median:")
    assert meds["before"].get_xdata()[0] == np.median(before)
    assert meds["after SPIO"].get_xdata()[0] == np.median(after[5:])
    assert ax.get_xlabel() == "R2* (s-1)" and ax.get_ylabel() == "voxels (count)"
    # the step outlines enclose the counts of np.histogram
    steps = [p for p in ax.patches]
    assert len(steps) == 2
    counts, _ = np.histogram(before, bins=50, range=(0, 200))
    y = steps[0].get_path().vertices[:, 1]
    assert y.max() == counts.max()
    with pytest.raises(ParameterError, match="no finite"):
        R.histogram_png({"x": [np.nan]}, tmp_path / "h2.png")
    with pytest.raises(ParameterError, match="mapping"):
        R.histogram_png([1, 2, 3], tmp_path / "h2.png")


def test_recovered_vs_truth_points_and_log_axes(tmp_path):
    t = pd.DataFrame(dict(measure=["cells_pet"] * 4 + ["iron_mean"] * 3 + ["idg_mean"],
                          value=[1.1e4, 1e5, 9e5, 1e7, 10.0, 21.0, 29.0, 3.0],
                          truth=[1e4, 1e5, 1e6, 1e7, 10.0, 20.0, 30.0, np.nan],
                          unit=["cells"] * 4 + ["ug/mL"] * 3 + ["%ID/g"]))
    path, fig = R.recovered_vs_truth_png(t, tmp_path / "r.png", return_figure=True)
    assert _png_rgb(path).shape[1] == 900
    ax, ex = _ax(fig, "scatter"), _ax(fig, "error")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    pts = {c.get_gid(): c.get_offsets() for c in ax.collections}
    assert set(pts) == {"measure:cells_pet", "measure:iron_mean"}  # idg_mean has no truth
    np.testing.assert_array_equal(pts["measure:iron_mean"], [[10, 10], [20, 21], [30, 29]])
    err = {c.get_gid(): c.get_offsets()[:, 1] for c in ex.collections}
    np.testing.assert_allclose(err["error:cells_pet"], [10.0, 0.0, -10.0, 0.0], atol=1e-12)
    ident = _lines(ax, "identity")[""]
    np.testing.assert_array_equal(ident.get_xdata(), ident.get_ydata())
    _, fig = R.recovered_vs_truth_png(t, tmp_path / "r2.png", measures=["iron_mean"], return_figure=True)
    assert _ax(fig, "scatter").get_xscale() == "linear"
    with pytest.raises(ParameterError, match="no rows with both"):
        R.recovered_vs_truth_png(t.assign(truth=np.nan), tmp_path / "r3.png")


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def test_report_html(vols, tmp_path):
    mr, pet, _ = vols
    figs = tmp_path / "figures"
    fused = R.fused_png(mr, pet, figs / "fused pet.png")
    hist = R.histogram_png({"a": np.arange(10.0)}, tmp_path / "hist.png")
    table = pd.DataFrame({"roi": ["tumour", "<b>muscle</b>"], "idg_mean": [5.123456, 0.98765]})
    rep = R.Report("Study <CAR-T> & friends", tmp_path)
    rep.status("3 values outside tolerance", ok=False)
    rep.section("Fused images", "PET over MR; <script>alert(1)</script>")
    rep.figure(fused, "Tumour uptake at 24 h")
    rep.section("Uptake table")
    rep.table(table, "Mean %ID/g per ROI")
    rep.table(pd.DataFrame({"v": np.arange(300.0)}), "long", max_rows=10, float_format=".1f")
    rep.text("First paragraph.\n\nSecond & last.")
    rep.section("Histograms")
    rep.figure(hist, "R2*")
    rep.provenance({"inputs": ["sub-01/ses-01"], "parameters": {"unit": "idg"}})
    out = rep.write()
    assert out == tmp_path / "report.html"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for heading in ("Fused images", "Uptake table", "Histograms", "Provenance"):
        assert f">{heading}</h2>" in page
    # table of contents links to existing section ids
    for target in re.findall(r'<a href="#([^"]+)">', page):
        assert f'id="{target}"' in page
    assert len(re.findall(r'<a href="#', page)) == 4
    # escaped text, table values, status badge
    assert "Study &lt;CAR-T&gt; &amp; friends" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;muscle&lt;/b&gt;" in page and "5.123" in page and "0.9877" in page
    assert "<td>9.0</td>" in page and "<td>10.0</td>" not in page and "first 10 of 300 rows" in page
    assert "<p>Second &amp; last.</p>" in page
    assert 'class="badge bad"' in page and "3 values outside tolerance" in page
    assert '"invivo_version"' in page and "sub-01/ses-01" in page
    # images: relative links that exist from the report's folder
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["figures/fused%20pet.png", "hist.png"]
    for s in srcs:
        assert not Path(s).is_absolute() and (out.parent / urllib.parse.unquote(s)).is_file()
    # no external resources
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_report_overwrite_and_bad_input(tmp_path):
    rep = R.Report("r", tmp_path)
    rep.section("only")
    p = rep.write()
    first = p.read_text()
    rep.text("more")
    with pytest.raises(OutputExistsError, match="overwrite"):
        rep.write()
    assert p.read_text() == first
    rep.write(overwrite=True)
    assert "<p>more</p>" in p.read_text()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.html"]
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    outside.write_bytes(b"")
    with pytest.raises(ParameterError, match="not under the report folder"):
        rep.figure(outside, "x")
    with pytest.raises(ParameterError, match="does not exist"):
        rep.figure(tmp_path / "missing.png", "x")
    with pytest.raises(ParameterError, match="file name"):
        rep.write("sub/report.html")
    with pytest.raises(ParameterError, match="DataFrame"):
        rep.table([1, 2], "x")
    with pytest.raises(ParameterError, match="title"):
        R.Report("", tmp_path)


def _profiles():
    """Two groups x two subjects x two sessions; subject k of group g: value = base[g] * (k + 1) + depth."""
    rows = []
    base = {"excluded": 1.0, "infiltrated": 5.0}
    for g, b in base.items():
        for k in range(2):
            for ses, t in (("d1", 24.0), ("d3", 72.0)):
                for depth in (0.25, 0.75, 1.25):
                    rows.append({"subject": f"{g[:3]}{k}", "group": g, "session": ses, "time_h": t, "map": "idg",
                                 "depth_mm": depth, "mean": b * (k + 1) + depth + (ses == "d3"), "unit": "%ID/g"})
    return pd.DataFrame(rows), base


def test_profile_means_per_group_and_session(tmp_path):
    prof, base = _profiles()
    _, fig = R.profile_png(prof, tmp_path / "p.png", map="idg", rim_mm=1.0, return_figure=True)
    for ses, shift in (("d1", 0.0), ("d3", 1.0)):
        ax = _ax(fig, f"session:{ses}")
        for g, b in base.items():
            ln = _lines(ax, "mean:")[g]
            np.testing.assert_allclose(ln.get_xdata(), [0.25, 0.75, 1.25])
            np.testing.assert_allclose(ln.get_ydata(), 1.5 * b + np.array([0.25, 0.75, 1.25]) + shift, rtol=1e-12)
    with pytest.raises(ParameterError, match="map='dr2star'"):
        R.profile_png(prof, tmp_path / "q.png", map="dr2star")


def test_cells_pet_against_mri_and_detection_limits(tmp_path):
    rows = []
    vals = {("s1", "tumour"): (2e5, 1.8e5), ("s1", "spleen"): (1e5, 1.1e5), ("s1", "lungs"): (3e5, -5e5)}
    for (subj, roi), (pet, mri) in vals.items():
        for m, v in (("cells_pet", pet), ("cells_pet_sd", 1e3), ("cells_pet_min", 3e3),
                     ("cells_mri", mri), ("cells_mri_sd", 2e3), ("cells_mri_min", 6e3)):
            rows.append({"subject": subj, "session": "d1", "roi": roi, "measure": m, "value": v})
    _, fig = R.cells_png(pd.DataFrame(rows), tmp_path / "c.png", return_figure=True)
    ax = fig.axes[0]
    pts = _lines(ax, "roi:")
    assert pts["tumour"].get_xdata()[0] == pytest.approx(1.8e5) and pts["tumour"].get_ydata()[0] == pytest.approx(2e5)
    # the lungs' negative MRI number is drawn at the MRI detection limit, open
    below = _lines(ax, "below:")["lungs"]
    assert below.get_xdata()[0] == pytest.approx(6e3) and below.get_ydata()[0] == pytest.approx(3e5)
    assert "lungs" not in pts or len(pts["lungs"].get_xdata()) == 0
    with pytest.raises(ParameterError, match="cells_mri"):
        R.cells_png(pd.DataFrame(rows[:3]), tmp_path / "d.png")

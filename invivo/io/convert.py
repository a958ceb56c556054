"""DICOM folder -> NIfTI + JSON sidecars, one per series, with BIDS-like names."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import InvivoError, OutputError, OutputExistsError
from .nifti import sidecar_path

__all__ = ["convert", "bids_name"]

log = logging.getLogger(__name__)

_DATATYPE = {"PT": "pet", "NM": "spect", "CT": "ct", "MR": "anat"}  # MR time series go to func


def _clean(text: str | None, default: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "", str(text or ""))
    return s or default


def bids_name(vol, *, echo: int | None = None) -> Path:
    """Relative output path ``sub-<id>/ses-<date>/<datatype>/sub-<id>_ses-<date>_..._<suffix>.nii.gz``."""
    m = vol.meta
    sub = _clean(m.subject.id if m.subject else None, "unknown")
    ses = m.series_datetime.strftime("%Y%m%d") if m.series_datetime else "unknown"
    dtype = _DATATYPE.get(m.modality, "other")
    if m.modality == "MR" and m.frame_start_s and len(m.frame_start_s) > 1 and not (m.echo_times_s and len(m.echo_times_s) > 1):
        dtype = "func"
    parts = [f"sub-{sub}", f"ses-{ses}"]
    if m.tracer and m.tracer.radiopharmaceutical:
        parts.append(f"trc-{_clean(m.tracer.radiopharmaceutical, 'tracer')}")
    parts.append(f"acq-{_clean(m.series_description, 'series')}")
    parts.append(f"run-{m.series_number if m.series_number is not None else 1}")
    if echo is not None:
        parts.append(f"echo-{echo}")
    flav = next((x for x in (m.image_type or ())[2:3]), "")
    if m.modality == "MR" and flav in ("P", "PHASE"):
        parts.append("part-phase")
    if m.modality == "MR":
        if m.echo_times_s and len(m.echo_times_s) > 1:
            suffix = "MEGRE"
        elif m.frame_start_s and len(m.frame_start_s) > 1:
            suffix = "bold"
        else:
            suffix = "mr"
    else:
        suffix = {"PT": "pet", "NM": "spect", "CT": "ct"}.get(m.modality, m.modality.lower())
    return Path(f"sub-{sub}") / f"ses-{ses}" / dtype / ("_".join(parts) + f"_{suffix}.nii.gz")


def convert(path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
            skip_errors: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Convert every image series under ``path`` to NIfTI + sidecar under ``out_dir``.

    All series are loaded and written to a temporary folder first and moved into
    place only when every one succeeded, so a failed conversion leaves nothing
    behind.  With ``skip_errors`` the failing series are reported and the rest written.

    Returns
    -------
    written : list of Path
    failed : list of (series description, error message)
    """
    from . import load_dicom, save_nifti, scan

    out_dir = Path(out_dir)
    table = scan(path)
    table = table[~table["modality"].isin(["RTSTRUCT", "SR", "PR", "KO", "SEG", "REG", "RTPLAN", "RTDOSE"])]
    if not len(table):
        raise InvivoError(f"{path}: no DICOM image series found ({table.attrs.get('skipped_files', 0)} other files); "
                          "point invivo convert at a folder of DICOM images")
    failed: list[tuple[str, str]] = []
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".invivo-convert-", dir=out_dir))
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose a writable --out") from None
    done = False
    planned: list[Path] = []
    try:
        for _, row in table.iterrows():
            desc = f"series {row['series_number']} '{row['description']}' ({row['modality']})"
            folder = row["folder"]
            selector = row["series_uid"]
            try:
                vols = []
                flavour_sel = (selector, row["flavour"])
                try:
                    vols.append((load_dicom(folder, series=flavour_sel), None))
                except InvivoError as exc:
                    if "echo=1" not in str(exc):
                        raise
                    for e in range(1, int(row["n_echoes"]) + 1):
                        vols.append((load_dicom(folder, series=flavour_sel, echo=e), e))
                for vol, echo in vols:
                    rel = bids_name(vol, echo=echo)
                    if rel in planned:
                        rel = rel.with_name(rel.name.replace(".nii.gz", f"_{len(planned)}.nii.gz"))
                    for target in (out_dir / rel, out_dir / sidecar_path(rel)):
                        if target.exists() and not overwrite:
                            raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
                    save_nifti(vol, staging / rel, overwrite=True)
                    planned.append(rel)
            except InvivoError as exc:
                if not skip_errors or isinstance(exc, OutputExistsError):
                    raise type(exc)(f"{desc}: {exc}") from None
                failed.append((desc, str(exc)))
        written = []
        for rel in planned:
            for src in (staging / rel, staging / sidecar_path(rel)):
                dst = out_dir / src.relative_to(staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
            written.append(out_dir / rel)
        done = True
        return written, failed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            shutil.rmtree(out_dir, ignore_errors=True)  # a failed conversion leaves nothing behind

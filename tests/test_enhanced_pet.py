"""Enhanced PET (multi-frame, per-frame functional groups): geometry, frames and the IBSI decay rules."""

from datetime import datetime, timedelta

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import invivo
from invivo import uptake

HL = 6586.2
INJ = datetime(2025, 5, 6, 9, 0, 0)
START = datetime(2025, 5, 6, 10, 0, 0)
DOSE = 200e6
W_KG = 70.0


def _dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _write(path, *, corrected: str, dc_datetime=None, n_k=3, n_t=2, dur_s=300.0, conc=None):
    """Enhanced PET: n_k slices x n_t frames; voxel values = conc[t] Bq/mL stored with slope 0.5."""
    conc = conc if conc is not None else [1000.0 * (t + 1) for t in range(n_t)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.130"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientWeight, ds.PatientSex = "PT", "E1", str(W_KG), "M"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SeriesNumber, ds.SeriesDescription = 1, "enhanced pet"
    ds.SeriesDate, ds.SeriesTime = START.strftime("%Y%m%d"), "120000"  # stored later than the scan (post-processed)
    ds.Units = "BQML"
    ds.DecayCorrected = corrected
    if dc_datetime is not None:
        ds.DecayCorrectionDateTime = _dt(dc_datetime)
    rp = Dataset()
    rp.RadiopharmaceuticalStartDateTime = _dt(INJ)
    rp.RadionuclideTotalDose = str(DOSE)
    rp.RadionuclideHalfLife = str(HL)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    rp.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 5, n_k * n_t
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [2.0, 1.5], "3"
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([pm]), Sequence([po])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, pixels = [], []
    order = [(t, k) for t in range(n_t) for k in range(n_k)][::-1]  # stored in reverse order
    for t, k in order:
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [-10.0, 20.0, 3.0 * k]
        fc = Dataset()
        t0 = START + timedelta(seconds=t * dur_s)
        fc.FrameAcquisitionDateTime = _dt(t0)
        fc.FrameReferenceDateTime = _dt(t0 + timedelta(seconds=dur_s / 2))
        fc.FrameAcquisitionDuration = dur_s * 1000.0
        fc.TemporalPositionIndex = t + 1
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "0.5", "0", "BQML"
        item.PlanePositionSequence = Sequence([pp])
        item.FrameContentSequence = Sequence([fc])
        item.PixelValueTransformationSequence = Sequence([pvt])
        frames.append(item)
        pixels.append(np.full((4, 5), conc[t] / 0.5, dtype=np.uint16) + np.uint16(k))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_geometry_frames_and_values(tmp_path):
    _write(tmp_path / "e" / "pet.dcm", corrected="YES", dc_datetime=START)
    vol = invivo.load(tmp_path / "e")
    assert vol.shape == (5, 4, 3, 2)
    np.testing.assert_allclose(vol.voxel_size_mm, (1.5, 2.0, 3.0))
    np.testing.assert_allclose(vol.world_coordinates([0, 0, 2]), [10.0, -20.0, 6.0])
    for t in range(2):
        for k in range(3):
            np.testing.assert_array_equal(vol.data[:, :, k, t], 1000.0 * (t + 1) + 0.5 * k)
    assert vol.meta.frame_start_s == (0.0, 300.0) and vol.meta.frame_duration_s == (300.0, 300.0)
    assert vol.meta.decay_correction == "START"
    assert vol.meta.series_datetime == START  # the decay-correction datetime, not the later SeriesTime


@pytest.mark.parametrize("corrected,dc,ref", [
    ("YES", START, "start"),        # START at the Decay Correction DateTime (SeriesTime is later: ignored)
    ("YES", INJ, "injection"),      # ADMIN
    ("NO", None, "frame"),          # NONE: each frame's Frame Reference DateTime
])
def test_suv_follows_decay_correction(tmp_path, corrected, dc, ref):
    _write(tmp_path / "e" / "pet.dcm", corrected=corrected, dc_datetime=dc)
    vol = invivo.load(tmp_path / "e")
    suv = uptake.suv(vol)
    for t in range(2):
        if ref == "start":
            elapsed = (START - INJ).total_seconds()
        elif ref == "injection":
            elapsed = 0.0
        else:
            elapsed = (START - INJ).total_seconds() + t * 300.0 + 150.0
        a_ref = DOSE * 2 ** (-elapsed / HL)
        expected = (1000.0 * (t + 1)) * W_KG * 1000.0 / a_ref
        np.testing.assert_allclose(suv.data[0, 0, 0, t], expected, rtol=1e-9)

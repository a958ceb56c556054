"""Spatial transforms between image spaces, and the Volume <-> SimpleITK bridge.

Convention (ITK's): a :class:`Transform` maps points of the *fixed* space to points of
the *moving* space -- the direction resampling needs (for each output voxel, where to
read the moving image).  invivo stores the 4x4 matrix in RAS+ mm (like every affine in
invivo); files hold ITK's LPS form (``.tfm``, ``.txt``, ``.h5``) with the RAS matrix in
a JSON sidecar beside them.  ``M_ras = F M_lps F`` with ``F = diag(-1, -1, 1, 1)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import to_device
from ..errors import GeometryError, ParameterError
from ..volume import LPS_TO_RAS, Meta, Volume

__all__ = ["Transform", "to_sitk", "from_sitk", "read_transform", "write_transform", "TRANSFORM_SUFFIXES"]

TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5", ".mat")
_F = LPS_TO_RAS


@dataclass
class Transform:
    """An affine point transform, fixed space -> moving space, as a 4x4 RAS+ mm matrix.

    Parameters
    ----------
    matrix : (4, 4) array
        ``[x_moving, 1] = matrix @ [x_fixed, 1]`` in RAS+ mm.
    kind : str, optional
        ``"rigid"``, ``"affine"`` or ``"identity"``; inferred from the matrix when not given.
    info : dict
        Provenance: how the transform was made (registration settings, metric, ...).

    Examples
    --------
    >>> t = Transform.from_parameters(translation_mm=(1.0, 0.0, 0.0))
    >>> t.apply_points([[0.0, 0.0, 0.0]]).tolist()
    [[1.0, 0.0, 0.0]]
    >>> (t @ t.inverse()).is_identity()
    True
    """

    matrix: np.ndarray
    kind: str | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
        if m.shape != (4, 4):
            raise ParameterError(f"a 3D transform needs a 4x4 matrix, got shape {m.shape}")
        if not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ParameterError("transform matrix must be finite with last row [0, 0, 0, 1]")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise ParameterError("transform matrix is singular")
        self.matrix = m
        if self.kind is None:
            self.kind = "identity" if np.allclose(m, np.eye(4), atol=1e-12) else ("rigid" if _is_rigid(m) else "affine")
        elif self.kind not in ("rigid", "affine", "identity"):
            raise ParameterError(f"transform kind must be rigid, affine or identity, got {self.kind!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def identity(cls) -> "Transform":
        return cls(np.eye(4))

    @classmethod
    def from_parameters(cls, rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0), *,
                        centre_mm=(0.0, 0.0, 0.0)) -> "Transform":
        """Rigid transform ``x -> R (x - c) + c + t`` in RAS mm, ``R = Rz Ry Rx`` (degrees about R, A, S)."""
        ax, ay, az = np.deg2rad(np.asarray(rotation_deg, dtype=float))
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        r = rz @ ry @ rx
        c = np.asarray(centre_mm, dtype=float)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=float)
        return cls(m)

    # ------------------------------------------------------------------ algebra
    def __matmul__(self, other: "Transform") -> "Transform":
        """``(a @ b)(x) = a(b(x))``: apply ``b`` first."""
        if not isinstance(other, Transform):
            return NotImplemented
        return Transform(self.matrix @ other.matrix,
                         info={"composed": [self.info, other.info]} if (self.info or other.info) else {})

    def compose(self, *others: "Transform") -> "Transform":
        """``self(others[0](others[1](...)))``: chain transforms, the last applied first."""
        out = self
        for t in others:
            out = out @ t
        return out

    def inverse(self) -> "Transform":
        return Transform(np.linalg.inv(self.matrix), info={"inverse_of": self.info} if self.info else {})

    def is_identity(self, atol: float = 1e-9) -> bool:
        return bool(np.allclose(self.matrix, np.eye(4), atol=atol))

    @property
    def matrix_lps(self) -> np.ndarray:
        """The same transform acting on LPS points (ITK's frame)."""
        return _F @ self.matrix @ _F

    def rotation_deg(self) -> float:
        """Rotation angle of the linear part's closest rotation (degrees)."""
        u, _, vt = np.linalg.svd(self.matrix[:3, :3])
        r = u @ vt
        return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))

    def apply_points(self, points_ras_mm) -> np.ndarray:
        """Map points (N, 3) of RAS mm from the fixed space to the moving space."""
        p = np.asarray(points_ras_mm, dtype=np.float64)
        if p.shape[-1] != 3:
            raise ParameterError(f"points must have shape (N, 3) in RAS mm, got {p.shape}")
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    # ------------------------------------------------------------------ SimpleITK
    def to_sitk(self):
        """A ``SimpleITK.AffineTransform`` (LPS) with the same point mapping."""
        import SimpleITK as sitk

        m = self.matrix_lps
        t = sitk.AffineTransform(3)
        t.SetMatrix(m[:3, :3].ravel().tolist())
        t.SetTranslation(m[:3, 3].tolist())
        return t

    @classmethod
    def from_sitk(cls, tx, *, kind: str | None = None) -> "Transform":
        """From any linear SimpleITK 3D transform (Euler, Versor, Similarity, Affine, composite of them)."""
        if tx.GetDimension() != 3:
            raise ParameterError(f"transform is {tx.GetDimension()}D; invivo works with 3D transforms")
        m_lps = _linear_lps(tx)
        return cls(_F @ m_lps @ _F, kind=kind)

    # ------------------------------------------------------------------ files
    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return write_transform(self, path, overwrite=overwrite)


def _is_rigid(m: np.ndarray, tol: float = 1e-6) -> bool:
    r = m[:3, :3]
    return bool(np.allclose(r.T @ r, np.eye(3), atol=tol) and np.linalg.det(r) > 0)


def _linear_lps(tx) -> np.ndarray:
    """4x4 LPS matrix of a linear SimpleITK transform (probed by points: works for any matrix-offset kind)."""
    import SimpleITK as sitk

    name = tx.GetName()
    if name in ("DisplacementFieldTransform", "BSplineTransform") or "BSpline" in name:
        raise ParameterError(f"transform is {name} (non-linear); invivo reads rigid and affine transforms")
    try:
        o = np.array(tx.TransformPoint((0.0, 0.0, 0.0)))
        cols = [np.array(tx.TransformPoint(tuple(e))) - o for e in np.eye(3)]
    except RuntimeError as exc:  # pragma: no cover - SimpleITK refuses a transform
        raise ParameterError(f"cannot evaluate transform {name}: {exc}") from None
    m = np.eye(4)
    m[:3, :3] = np.column_stack(cols)
    m[:3, 3] = o
    # verify linearity on a far point (a non-linear transform would not reproduce it)
    p = np.array([37.0, -23.0, 51.0])
    if not np.allclose(np.array(tx.TransformPoint(tuple(p))), m[:3, :3] @ p + o, atol=1e-6):
        raise ParameterError(f"transform {name} is not affine; invivo reads rigid and affine transforms")
    return m


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_transform(transform: Transform, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an ITK transform file (``.tfm``/``.txt``/``.h5``, LPS) and a JSON sidecar with the RAS matrix.

    Both are written atomically; SimpleITK's ``ReadTransform`` reads the file back to the
    same point mapping.
    """
    import SimpleITK as sitk

    from .. import __version__
    from ..io.nifti import atomic_write

    path = Path(path)
    if path.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise ParameterError(f"transform file {path} must end in one of {', '.join(TRANSFORM_SUFFIXES)}")
    tx = transform.to_sitk()
    side = {
        "Convention": "fixed-space point -> moving-space point (ITK); the file holds the LPS form",
        "MatrixRAS": transform.matrix.tolist(),
        "MatrixLPS": transform.matrix_lps.tolist(),
        "Kind": transform.kind,
        "GeneratedBy": [{"Name": "invivo", "Version": __version__}],
        "Info": transform.info,
    }
    text = json.dumps(side, indent=2, default=_json_default, allow_nan=False)
    atomic_write({path: lambda tmp: sitk.WriteTransform(tx, str(tmp)),
                  _sidecar(path): lambda tmp: tmp.write_text(text)}, overwrite=overwrite)
    return path


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def read_transform(path: str | os.PathLike) -> Transform:
    """Read an ITK transform file (any linear 3D kind), or an invivo JSON sidecar (``MatrixRAS``).

    Raises
    ------
    ParameterError
        The file is missing, unreadable, non-linear or not 3D.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise ParameterError(f"transform file {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(path.read_text())
            return Transform(np.asarray(d["MatrixRAS"], dtype=float), kind=d.get("Kind", "affine"),
                             info=d.get("Info", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise ParameterError(f"transform sidecar {path} is not an invivo transform JSON ({exc})") from None
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unreadable"
        raise ParameterError(f"cannot read transform file {path}: {first}; give an ITK .tfm/.txt/.h5 file") from None
    if tx.GetDimension() != 3:
        raise ParameterError(f"transform file {path} holds a {tx.GetDimension()}D transform; a 3D one is needed")
    info = {}
    side = _sidecar(path)
    if side.exists():
        try:
            info = json.loads(side.read_text()).get("Info", {})
        except ValueError:
            info = {}
    try:
        t = Transform.from_sitk(tx)
    except ParameterError as exc:
        raise ParameterError(f"transform file {path}: {exc}") from None
    t.info = info
    return t


# ---------------------------------------------------------------------- Volume <-> SimpleITK
def to_sitk(volume: Volume, *, frame: int | None = None, dtype=np.float32):
    """A 3D ``SimpleITK.Image`` (LPS geometry) of a Volume, or of one frame/echo of a 4D one.

    Raises
    ------
    GeometryError
        The affine has shear (SimpleITK images need orthogonal axes).
    """
    import SimpleITK as sitk

    data = to_device(volume.data, "cpu")  # host: SimpleITK works in host memory
    if data.ndim == 4:
        if frame is None:
            raise ParameterError("a 4D Volume needs frame= to become a 3D SimpleITK image")
        data = data[..., frame]
    if data.ndim != 3:
        raise GeometryError(f"expected a 3D image, got {data.ndim}D data of shape {data.shape}")
    a = _F @ volume.affine
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise GeometryError("the affine has a zero-length voxel axis")
    direction = a[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError("the image affine has shear; resample it onto an orthogonal grid first")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif dtype is not None and data.dtype.kind == "f" and data.dtype != dtype:
        data = data.astype(dtype)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin(a[:3, 3].tolist())
    return img


def sitk_affine(img) -> np.ndarray:
    """RAS+ voxel -> mm affine of a SimpleITK image."""
    d = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d * np.array(img.GetSpacing(), dtype=float)
    a[:3, 3] = img.GetOrigin()
    return _F @ a


def from_sitk(img, meta: Meta | None = None) -> Volume:
    """A Volume from a 3D ``SimpleITK.Image`` (LPS geometry converted to RAS)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(arr), sitk_affine(img), meta if meta is not None else Meta())

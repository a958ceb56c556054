"""Registration workflows: dynamic PET through a summed late image, longitudinal studies chained through MR."""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..errors import ParameterError
from ..volume import Volume
from .register import Registration, register
from .transforms import Transform

__all__ = ["summed_image", "register_dynamic", "register_longitudinal", "Longitudinal"]


def summed_image(dynamic: Volume, *, frames=None, late_fraction: float = 0.5) -> Volume:
    """Duration-weighted mean of some frames of a 4D series (a 3D Volume on the same grid).

    Parameters
    ----------
    dynamic : Volume
        4D (I, J, K, T).
    frames : sequence of int, optional
        Frame indices to sum.  Default: the late frames, those starting at or after the
        time when the last ``late_fraction`` of the acquisition's duration begins (early
        frames, dominated by blood, fail to register to anatomy far more often).
    late_fraction : float
        In (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from invivo import Meta, Volume
    >>> v = Volume(np.stack([np.full((2, 2, 2), x) for x in (1.0, 2.0, 4.0)], -1), np.eye(4),
    ...            Meta(frame_start_s=(0.0, 60.0, 120.0), frame_duration_s=(60.0, 60.0, 120.0)))
    >>> float(summed_image(v).data[0, 0, 0]), summed_image(v).meta.extra["summed_frames"]
    (4.0, [2])
    """
    if not isinstance(dynamic, Volume) or dynamic.data.ndim != 4:
        raise ParameterError("summed_image needs a 4D Volume (frames on the last axis)")
    n_t = dynamic.shape[3]
    starts = dynamic.meta.frame_start_s
    durs = dynamic.meta.frame_duration_s
    if starts is None or durs is None or len(starts) != n_t:
        starts, durs = tuple(float(i) for i in range(n_t)), (1.0,) * n_t
    if frames is None:
        if not (0 < late_fraction <= 1):
            raise ParameterError(f"late_fraction must be in (0, 1], got {late_fraction!r}")
        t_end = starts[-1] + durs[-1]
        cut = t_end - late_fraction * (t_end - starts[0])
        frames = [i for i in range(n_t) if starts[i] >= cut - 1e-9] or [n_t - 1]
    frames = [int(f) for f in frames]
    if not frames or any(not (0 <= f < n_t) for f in frames):
        raise ParameterError(f"frames must be indices in 0..{n_t - 1}, got {frames}")
    xp = get_array_module(dynamic.data)
    w = xp.asarray(np.array([durs[f] for f in frames], dtype=np.float64))
    data = (dynamic.data[..., frames] * w).sum(axis=-1) / w.sum()
    meta = dynamic.meta.copy(frame_start_s=None, frame_duration_s=None)
    meta.extra["summed_frames"] = frames
    return Volume(data, dynamic.affine, meta)


def register_dynamic(fixed: Volume, dynamic: Volume, *, frames=None, late_fraction: float = 0.5,
                     **kwargs) -> Registration:
    """Register a dynamic (4D) PET to ``fixed`` through its summed late frames.

    The transform applies to every frame: ``reg.resample()`` returns the whole series on
    the fixed grid.  Other keywords go to :func:`register`.
    """
    summed = summed_image(dynamic, frames=frames, late_fraction=late_fraction)
    reg = register(fixed, summed, **kwargs)
    reg.settings["summed_frames"] = summed.meta.extra["summed_frames"]
    reg.transform.info.setdefault("registration", {})["summed_frames"] = summed.meta.extra["summed_frames"]
    reg.moving = dynamic
    return reg


class Longitudinal:
    """Result of :func:`register_longitudinal`.

    Attributes
    ----------
    mr : list of Registration or None
        Session MR -> baseline MR (``None`` for the baseline itself).
    pet : list of Registration or None
        Session PET -> its own session's MR.
    pet_to_baseline : list of Transform or None
        The chained transform: baseline-space point -> that session's PET point.
    """

    def __init__(self, mr, pet, pet_to_baseline, baseline):
        self.mr, self.pet, self.pet_to_baseline, self.baseline = mr, pet, pet_to_baseline, baseline

    def resample_pet(self, session: int, pet: Volume, **kwargs) -> Volume:
        """Session ``session``'s PET (3D or 4D) on the baseline MR grid."""
        from .resample import resample

        t = self.pet_to_baseline[session]
        if t is None:
            raise ParameterError(f"session {session} has no PET registered")
        return resample(pet, self.baseline, t, **kwargs)


def register_longitudinal(mr_sessions, pet_sessions=None, *, baseline: int = 0, **kwargs) -> Longitudinal:
    """Align a longitudinal study: each session's MR to the baseline MR, each PET through its own MR.

    Parameters
    ----------
    mr_sessions : list of Volume
        One 3D MR per session (a multi-echo MR: pass one echo).
    pet_sessions : list of (Volume or None), optional
        The PET (3D, or 4D: registered through its summed late frames) of each session.
    baseline : int
        Index of the reference session.
    **kwargs
        Passed to :func:`register` (MR -> MR is rigid unless ``transform`` says otherwise).

    Returns
    -------
    Longitudinal
        The chained transform of session k's PET is ``P_k @ T_k``: a baseline point goes
        to session k's MR by ``T_k``, then to its PET by ``P_k``.
    """
    n = len(mr_sessions)
    if n == 0:
        raise ParameterError("register_longitudinal needs at least one MR session")
    if not (0 <= baseline < n):
        raise ParameterError(f"baseline must be a session index in 0..{n - 1}, got {baseline}")
    if pet_sessions is not None and len(pet_sessions) != n:
        raise ParameterError(f"{len(pet_sessions)} PET sessions for {n} MR sessions: give one entry (or None) per session")
    base = mr_sessions[baseline]
    mr_regs = [None if k == baseline else register(base, mr_sessions[k], **kwargs) for k in range(n)]
    pet_regs, chained = [None] * n, [None] * n
    for k in range(n):
        pet = None if pet_sessions is None else pet_sessions[k]
        if pet is None:
            continue
        reg = (register_dynamic(mr_sessions[k], pet, **kwargs) if pet.data.ndim == 4
               else register(mr_sessions[k], pet, **kwargs))
        pet_regs[k] = reg
        to_session = Transform.identity() if mr_regs[k] is None else mr_regs[k].transform
        chained[k] = reg.transform @ to_session
    return Longitudinal(mr_regs, pet_regs, chained, base)

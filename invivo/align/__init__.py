"""PET/SPECT/CT -> MR co-registration, resampling and transforms (SimpleITK's registration framework).

ITK's convention throughout: a :class:`Transform` maps *fixed*-space points to
*moving*-space points (RAS mm in invivo, LPS in the ITK files it writes)::

    from invivo.align import register, resample
    reg = register(mr, pet)                   # rigid, Mattes mutual information
    pet_on_mr = resample(pet, mr, reg.transform)
    reg.transform.write("pet_to_mr.tfm")
"""

from .register import TRANSFORMS, Registration, register
from .resample import INTERPOLATIONS, resample
from .transforms import Transform, read_transform, write_transform
from .workflows import register_dynamic, register_longitudinal, summed_image

__all__ = ["register", "Registration", "resample", "Transform", "read_transform", "write_transform",
           "TRANSFORMS", "INTERPOLATIONS", "register_dynamic", "register_longitudinal", "summed_image"]

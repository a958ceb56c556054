"""Synthetic data with known truth: an analytic mouse phantom, its PET/MR/CT renderers and a DICOM writer.

Tests, ``invivo demo``, the benchmarks and the validation scripts in ``phantoms/``
all build their inputs here::

    from invivo.synth import mouse_phantom, render_pet, write_dicom
    ph = mouse_phantom()
    pet, truth = render_pet(ph, percent_id_per_g={"liver": 15.0, "tumour": 8.0},
                            injected_activity_bq=3.7e6, scan_delay_s=3 * 86400)
    paths, stored = write_dicom(pet, "out/pet", return_stored=True)
"""

from .dicom import write_dicom
from .displaced import body_points, grid, random_rigid, render_modality, render_phantom, rigid_matrix
from .nema import NEMA_NU4_GEOMETRY, gaussian_blur, nema_nu4_phantom, sphere_phantom
from .phantom import Ellipsoid, Phantom, mouse_phantom, render_ct, render_mr, render_pet
from .spio import SpioPhantom, Vial, render_spio_mr, render_spio_pair, rician_mean, rician_signal, spio_vial_phantom

__all__ = ["write_dicom", "mouse_phantom", "render_pet", "render_mr", "render_ct", "Phantom", "Ellipsoid",
           "spio_vial_phantom", "render_spio_mr", "render_spio_pair", "rician_signal", "rician_mean", "SpioPhantom",
           "Vial", "rigid_matrix", "random_rigid", "grid", "render_phantom", "render_modality", "body_points"]
__all__ += ["nema_nu4_phantom", "sphere_phantom", "gaussian_blur", "NEMA_NU4_GEOMETRY"]

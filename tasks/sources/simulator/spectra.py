"""End-member spectra (surface reflectance, 12 L2A bands in contract order) and atmosphere."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Endmember(IntEnum):
    VEG = 0  #: vigorous green vegetation
    VEG_DARK = 1  #: low-chlorophyll or dense dark canopy (conifers, stressed crops)
    DRY = 2  #: senescent vegetation, straw, litter
    SOIL = 3  #: bare soil (scaled per parcel by its brightness)
    WATER = 4
    URBAN = 5  #: roofs, asphalt, concrete
    FLOWER = 6  #: yellow rapeseed flowers


#                     B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B11    B12
ENDMEMBER_SPECTRA = np.array(
    [
        [0.025, 0.035, 0.080, 0.035, 0.110, 0.320, 0.420, 0.450, 0.470, 0.440, 0.220, 0.100],
        [0.020, 0.028, 0.055, 0.030, 0.080, 0.210, 0.270, 0.290, 0.305, 0.290, 0.160, 0.075],
        [0.060, 0.075, 0.110, 0.150, 0.190, 0.230, 0.250, 0.270, 0.280, 0.280, 0.380, 0.300],
        [0.060, 0.080, 0.115, 0.165, 0.195, 0.215, 0.235, 0.255, 0.268, 0.270, 0.340, 0.290],
        [0.055, 0.060, 0.050, 0.030, 0.025, 0.015, 0.012, 0.010, 0.009, 0.008, 0.005, 0.003],
        [0.100, 0.110, 0.125, 0.140, 0.150, 0.160, 0.170, 0.180, 0.185, 0.180, 0.220, 0.200],
        [0.030, 0.040, 0.190, 0.130, 0.230, 0.330, 0.400, 0.430, 0.450, 0.420, 0.240, 0.120],
    ],
    dtype=np.float32,
)
#: Top of thick clouds, before a per-date brightness factor.
CLOUD_SPECTRUM = np.array(
    [0.46, 0.46, 0.45, 0.45, 0.46, 0.47, 0.47, 0.47, 0.47, 0.40, 0.32, 0.22], np.float32
)
#: Additive path radiance of thin haze at unit intensity (falls with wavelength).
HAZE_SPECTRUM = np.array(
    [0.09, 0.08, 0.06, 0.045, 0.04, 0.034, 0.03, 0.027, 0.026, 0.02, 0.01, 0.005], np.float32
)
#: Sensor noise, reflectance units (1 sigma).
NOISE_SIGMA = np.array(
    [0.006, 0.004, 0.004, 0.004, 0.005, 0.005, 0.005, 0.005, 0.005, 0.008, 0.006, 0.006], np.float32
)

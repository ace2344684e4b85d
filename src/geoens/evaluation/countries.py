"""Country of a point, offline: the nearest GeoNames place of the ``reverse_geocoder`` package.

``reverse_geocoder`` (LGPL-2.1; data GeoNames ``cities1000``, CC BY 4.0, shipped in the wheel: nothing is
downloaded at run time) answers with the country code of the nearest populated place (>= 1000 people),
searched in a k-d tree of Earth-centred coordinates, in its single-process mode. Known errors: near a border
the nearest place can lie across it, and at sea or in empty land (deserts, Antarctica, open ocean) the answer
is the nearest coastal or remote place's country, whichever that is (docs/DECISIONS.md).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import numpy.typing as npt
import reverse_geocoder

from geoens.core.types import BoolArray

#: Where country accuracy's boundaries come from (printed beside the number).
COUNTRY_SOURCE = "reverse_geocoder 1.5.1 (nearest GeoNames place >= 1000 people)"


def country_codes(lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """ISO 3166-1 alpha-2 code of the nearest GeoNames place of each point (degrees)."""
    la = np.asarray(lat, dtype=np.float64).ravel()
    lo = np.asarray(lon, dtype=np.float64).ravel()
    if la.size == 0:
        return np.zeros(0, dtype="<U2")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its loading steps
        found = reverse_geocoder.search(
            list(zip(la.tolist(), lo.tolist(), strict=True)), mode=1, verbose=False
        )
    return np.asarray([str(f["cc"]) for f in found], dtype="<U2")


def same_country(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> BoolArray:
    """Whether each pair of points has the same country code (a NaN point: False)."""
    a1, o1 = np.asarray(lat1, np.float64), np.asarray(lon1, np.float64)
    a2, o2 = np.asarray(lat2, np.float64), np.asarray(lon2, np.float64)
    ok = np.isfinite(a1) & np.isfinite(o1) & np.isfinite(a2) & np.isfinite(o2)
    out = np.zeros(a1.shape, dtype=bool)
    if ok.any():
        out[ok] = country_codes(a1[ok], o1[ok]) == country_codes(a2[ok], o2[ok])
    return out

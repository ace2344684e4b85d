"""Array type aliases shared by the numeric modules (one home, imported everywhere they are used)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: float64 arrays (areas, scores, coordinates).
FloatArray = npt.NDArray[np.float64]
#: float32 arrays (predictor probabilities as stored).
F32Array = npt.NDArray[np.float32]
#: int64 arrays (labels, indices, counts).
IntArray = npt.NDArray[np.int64]
#: int32 arrays (atom index rasters).
I32Array = npt.NDArray[np.int32]
#: bool arrays (masks, flags).
BoolArray = npt.NDArray[np.bool_]
#: uint64 arrays (S2 cell ids).
U64Array = npt.NDArray[np.uint64]
#: uint8 arrays (8-bit images).
U8Array = npt.NDArray[np.uint8]

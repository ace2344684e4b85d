"""The land under a world map: land and sea shaded, the coastline drawn, from the run's own LS mask.

Every map figure of a run (the probability maps, ``geoens search``'s region PNG) paints its values over
:func:`shade_land` and draws :func:`draw_coastline` on top, so a region can be read against the
continents. The land is where the LS mask has a bucket (LandScan's nodata is the sea), at the figure's
display resolution; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from geoens.core.types import BoolArray

#: Grey levels (0 black, 1 white) of land and sea under a map's values, and the coastline's style.
LAND_GREY: Final[float] = 0.78
SEA_GREY: Final[float] = 0.95
COAST_COLOUR: Final[str] = "#4aa8d8"
COAST_WIDTH: Final[float] = 0.5
#: The whole globe in plate carree, as ``imshow``'s extent (west, east, south, north).
WORLD_EXTENT: Final[tuple[float, float, float, float]] = (-180.0, 180.0, -90.0, 90.0)


def shade_land(ax: Any, land: BoolArray) -> None:
    """Shade ``land`` (north row first, global) grey and the sea lighter on ``ax``: the map's background.

    Args:
        ax: A matplotlib ``Axes`` whose data coordinates are longitude and latitude.
        land: ``True`` on land pixels of a global raster.

    """
    ax.imshow(
        np.where(land, LAND_GREY, SEA_GREY),
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        extent=WORLD_EXTENT,
        interpolation="nearest",
    )
    ax.set_xlim(WORLD_EXTENT[0], WORLD_EXTENT[1])
    ax.set_ylim(WORLD_EXTENT[2], WORLD_EXTENT[3])


def draw_coastline(ax: Any, land: BoolArray) -> None:
    """Draw the coastline of ``land`` on ``ax``, over whatever the map painted (call it last)."""
    if land.any() and not land.all():
        ax.contour(
            land.astype(np.float32),
            levels=[0.5],
            colors=COAST_COLOUR,
            linewidths=COAST_WIDTH,
            origin="upper",
            extent=WORLD_EXTENT,
        )

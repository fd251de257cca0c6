"""Tissue masks: which parts of a slide are tissue, and how much of a patch is tissue.

HEST ships tissue contours for every sample (``tissue_seg/{id}_contours.geojson``, polygons in
level-0 pixels, holes included). Two formats exist: the current one stores holes as polygon
interiors; the older one (a list of Features, one MultiPolygon per tissue piece whose polygons
are exterior rings only) lists the indices of the polygons that are holes under the Feature's
``hole`` property. Both are read, and holes are subtracted (never filled as tissue). They are
rasterised onto a coarse grid (default 4 um/px, so a
112 um patch spans 28 x 28 mask pixels). Without contours the mask comes from a thumbnail at the
same resolution: Otsu's threshold on HSV saturation (stained tissue is coloured, glass is grey or
white), which is what HEST and CLAM use as their fallback.

The mask is small (a 20 mm slide at 4 um/px is 5,000 x 5,000 bytes) and its side is capped, so
its memory does not grow with the slide's pixel count. Fractions are area-exact with respect to
the mask: partial mask pixels at the patch border count by their overlap.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mint.data.wsi import WSI
from mint.errors import MintError

log = logging.getLogger(__name__)

DEFAULT_MASK_UM = 4.0
MAX_MASK_SIDE = 8192


@dataclass
class TissueMask:
    """Boolean tissue mask; one mask pixel is `scale` level-0 pixels on a side."""

    mask: np.ndarray  # uint8 0/1, (h, w)
    scale: float
    source: str  # "geojson", "otsu" or "full"

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Fraction of the level-0 box (x, y, w, h) that is tissue; outside the mask is not."""
        fx0, fy0 = x / self.scale, y / self.scale
        fx1, fy1 = (x + w) / self.scale, (y + h) / self.scale
        mh, mw = self.mask.shape
        ix0, iy0 = max(0, math.floor(fx0)), max(0, math.floor(fy0))
        ix1, iy1 = min(mw, math.ceil(fx1)), min(mh, math.ceil(fy1))
        area = (fx1 - fx0) * (fy1 - fy0)
        if ix1 <= ix0 or iy1 <= iy0 or area <= 0:
            return 0.0
        wx = _overlap(np.arange(ix0, ix1), fx0, fx1)
        wy = _overlap(np.arange(iy0, iy1), fy0, fy1)
        sub = self.mask[iy0:iy1, ix0:ix1].astype(np.float32)
        return float(wy @ sub @ wx) / area

    def fractions(self, boxes: np.ndarray) -> np.ndarray:
        """Fractions for an (N, 4) array of level-0 boxes (x, y, w, h)."""
        return np.array([self.fraction(*b) for b in np.asarray(boxes, np.float64)], np.float32)


def _overlap(idx: np.ndarray, a: float, b: float) -> np.ndarray:
    """Length of [i, i+1) ∩ [a, b) for each pixel index i."""
    return np.clip(np.minimum(idx + 1, b) - np.maximum(idx, a), 0, 1).astype(np.float32)


def _mask_scale(wsi: WSI, mask_um: float) -> float:
    scale = max(mask_um / wsi.pixel_size_um, 1.0)
    return max(scale, max(wsi.width, wsi.height) / MAX_MASK_SIDE)


def _iter_polygons(obj) -> list:
    """Shapely polygons from any GeoJSON shape: FeatureCollection, Feature list, geometry."""
    from shapely.geometry import shape

    if isinstance(obj, list):
        return [p for item in obj for p in _iter_polygons(item)]
    if not isinstance(obj, dict):
        return []
    kind = obj.get("type")
    if kind == "FeatureCollection":
        return _iter_polygons(obj.get("features", []))
    if kind == "Feature":
        holes = (obj.get("properties") or {}).get("hole")
        if (
            isinstance(holes, list)
            and holes
            and (obj.get("geometry") or {}).get("type") == ("MultiPolygon")
        ):
            return _old_format_feature(obj["geometry"], holes)
        return _iter_polygons(obj.get("geometry"))
    if kind == "GeometryCollection":
        return _iter_polygons(obj.get("geometries", []))
    if kind in ("Polygon", "MultiPolygon"):
        geom = shape(obj)
        return list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    return []


def _old_format_feature(geometry: dict, holes: list) -> list:
    """HEST's older contour format: polygons listed in `holes` are cut out of the others."""
    import shapely
    from shapely.geometry import Polygon

    hole_set = {int(i) for i in holes}
    tissue, cut = [], []
    for i, coords in enumerate(geometry.get("coordinates", [])):
        poly = shapely.make_valid(Polygon(coords[0], coords[1:]))
        (cut if i in hole_set else tissue).append(poly)
    geom = shapely.union_all(tissue)
    if cut:
        geom = geom.difference(shapely.union_all(cut))
    return _polygons_of(geom)


def _polygons_of(geom) -> list:
    """The non-empty polygons of any shapely geometry (multi-parts and collections flattened)."""
    if geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons_of(g)]


def mask_from_geojson(path: Path, wsi: WSI, mask_um: float = DEFAULT_MASK_UM) -> TissueMask:
    """Rasterise tissue contours (level-0 pixel coordinates) at `mask_um` per mask pixel."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MintError(f"{wsi.sample_id} {path}: cannot read tissue contours: {exc}") from None
    try:
        polygons = [p for p in _iter_polygons(obj) if not p.is_empty]
    except Exception as exc:  # malformed coordinates
        raise MintError(f"{wsi.sample_id} {path}: malformed tissue contours: {exc}") from None
    scale = _mask_scale(wsi, mask_um)
    h, w = math.ceil(wsi.height / scale), math.ceil(wsi.width / scale)
    mask = np.zeros((h, w), np.uint8)
    shift = 4  # fixed-point bits: polygon vertices keep 1/16 mask-pixel precision

    def ring(coords) -> np.ndarray:
        # Corner coordinates -> OpenCV's pixel-centre coordinates, in fixed point.
        pts = (np.asarray(coords, np.float64)[:, :2] / scale - 0.5) * (1 << shift)
        return np.round(pts).astype(np.int32).reshape(-1, 1, 2)

    for poly in polygons:
        rings = [ring(poly.exterior.coords)] + [ring(r.coords) for r in poly.interiors]
        # One call per polygon: OpenCV's even-odd fill turns the interior rings into holes.
        cv2.fillPoly(mask, rings, 1, lineType=cv2.LINE_8, shift=shift)
    return TissueMask(mask=mask, scale=scale, source="geojson")


def mask_from_thumbnail(wsi: WSI, mask_um: float = DEFAULT_MASK_UM) -> TissueMask:
    """Otsu on saturation of a downscaled slide, cleaned with a small opening and closing."""
    img, scale = wsi.downscaled(mask_um, max_side=MAX_MASK_SIDE)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(hsv[..., 1], 5)
    val = hsv[..., 2]
    if int(sat.max()) - int(sat.min()) < 10:
        # A flat slide (blank or all tissue of one colour): Otsu would split noise. Call it
        # tissue only if it is clearly coloured.
        mask = (sat > 20).astype(np.uint8)
    else:
        thr, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = ((sat > max(thr, 8)) & (val > 20)).astype(np.uint8)  # val: drop black borders
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return TissueMask(mask=mask, scale=scale, source="otsu")


def tissue_mask(wsi: WSI, contours: Path | None, mask_um: float = DEFAULT_MASK_UM) -> TissueMask:
    """The sample's tissue mask: contours when the file exists, else the thumbnail mask."""
    if contours is not None and Path(contours).is_file():
        tm = mask_from_geojson(Path(contours), wsi, mask_um)
        if tm.mask.any():
            return tm
        log.warning("%s %s: no tissue polygons; using a thumbnail mask", wsi.sample_id, contours)
    else:
        log.info("%s: no tissue contours; using a thumbnail (Otsu) mask", wsi.sample_id)
    return mask_from_thumbnail(wsi, mask_um)

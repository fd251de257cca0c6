"""Procedural H&E-like tissue that can be rendered anywhere, at any resolution, tile by tile.

Why procedural: the demo must run offline in seconds, yet morphology has to *predict*
expression, so that a model trained on the synthetic HEST really learns something. A slide is a
pure function of micrometre coordinates:

* a smooth **cell-type map** (value noise per type, arg-max wins; scale ~ a few hundred um),
* a **tissue mask** (noise plus a fall-off towards the slide edge, so there is background),
* **nuclei** on a jittered grid per cell type (one candidate per grid cell, hashed from its
  integer coordinates), drawn only where the cell type under the nucleus centre matches,
* type-specific structure: wavy eosinophilic fibres (stroma), empty adipocytes with thin
  membranes (adipose), glands with lumens and a ring of epithelial nuclei (gland),
* colour by Beer-Lambert mixing of a haematoxylin and an eosin optical density with per-pixel
  hashed noise.

Everything is hashed from global coordinates, so tiles are seamless, any region can be rendered
without the rest of the slide (memory stays flat), and the same slide at 0.25 or 1.0 um/px shows
the same tissue. Nuclei centres are also available as a list (`SlideModel.cells`) so Xenium
cells, their polygons and their transcripts agree with the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CELL_TYPES: list[str] = ["tumor", "stroma", "immune", "adipose", "gland"]
TUMOR, STROMA, IMMUNE, ADIPOSE, GLAND = range(5)
K = len(CELL_TYPES)

# Stain optical-density directions (R, G, B), tuned so that pure haematoxylin is purple-blue
# and pure eosin is pink; OD magnitudes below are per structure.
H_VEC = np.array([0.55, 0.79, 0.29], np.float32)
E_VEC = np.array([0.09, 0.90, 0.43], np.float32)


@dataclass(frozen=True)
class NucleusStyle:
    """How the nuclei of one cell type look (sizes in micrometres)."""

    spacing_um: float  # jittered-grid cell size: at most one nucleus per grid cell
    presence: float  # probability that a grid cell holds a nucleus
    radius_um: float  # mean semi-major axis
    radius_sd: float
    aspect: tuple[float, float]  # range of minor/major
    h_density: float  # haematoxylin OD at the nucleus
    vesicular: float  # 0 = solid dark, 1 = pale centre with dark rim and a nucleolus
    cell_radius_um: float  # cell (cytoplasm) radius used for Xenium cell polygons


STYLES: list[NucleusStyle] = [
    NucleusStyle(9.0, 0.92, 3.7, 0.7, (0.65, 0.95), 1.7, 0.8, 5.5),  # tumor: big, pleomorphic
    NucleusStyle(15.0, 0.55, 4.8, 0.6, (0.22, 0.32), 2.2, 0.0, 5.0),  # stroma: spindle
    NucleusStyle(6.4, 0.90, 2.3, 0.2, (0.85, 1.0), 2.6, 0.0, 3.2),  # immune: small, dark
    NucleusStyle(24.0, 0.35, 4.0, 0.4, (0.3, 0.45), 1.9, 0.0, 6.0),  # adipose: rare, flat
    NucleusStyle(6.6, 0.95, 2.9, 0.3, (0.5, 0.7), 2.0, 0.3, 4.0),  # gland: basal ring
]


@dataclass(frozen=True)
class NuclearVariant:
    """A change of every nucleus's look that no cell type and no expression depends on.

    Why: the synthetic expression is a function of the local cell-type mix only, so a nuclear
    variant that is drawn independently of that mix is morphology that expression cannot
    explain. The demo's morphology task (`mint.synth.morphology`) asks a model to tell these
    variants apart; a fine-tune that forgets them loses that task. The default changes nothing:
    slides of the synthetic HEST render exactly as before.

    `size` scales every nucleus's axes; `clumps` is the contrast of coarse chromatin clumps
    (blobs about 1.5 um across) inside the nuclei; 0 keeps the fine, even chromatin.
    """

    size: float = 1.0
    clumps: float = 0.0


ADIPOCYTE_SPACING_UM = 46.0
FIBRE_PERIOD_UM = 6.0
FIBRE_LATTICE_UM = 70.0
GLAND_SPACING_UM = 95.0


# --------------------------------------------------------------------------- hashing / noise
def _u32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).astype(np.uint32)


def _key(seed: int, channel: int) -> np.uint32:
    """A 32-bit key for an independent noise channel of one slide."""
    h = (int(seed) * 0x9E3779B97F4A7C15 + int(channel) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    h = (h * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 29
    return np.uint32(h & 0xFFFFFFFF)


def _hash2(i, j, key: np.uint32) -> np.ndarray:
    """Integer hash of lattice coordinates (vectorised, wraps modulo 2**32)."""
    h = (_u32(i) * np.uint32(0x9E3779B1)) ^ (_u32(j) * np.uint32(0x85EBCA77)) ^ key
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def _u01(i, j, key: np.uint32) -> np.ndarray:
    return _hash2(i, j, key).astype(np.float32) * np.float32(2.0**-32)


def _smooth(t):
    return t * t * (3.0 - 2.0 * t)


def _noise_points(x: np.ndarray, y: np.ndarray, scale: float, key: np.uint32) -> np.ndarray:
    """Value noise in [-1, 1] at arbitrary points (um), lattice spacing `scale`."""
    gx, gy = np.asarray(x, np.float64) / scale, np.asarray(y, np.float64) / scale
    ix, iy = np.floor(gx), np.floor(gy)
    sx, sy = _smooth(gx - ix), _smooth(gy - iy)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    v00, v10 = _u01(ix, iy, key), _u01(ix + 1, iy, key)
    v01, v11 = _u01(ix, iy + 1, key), _u01(ix + 1, iy + 1, key)
    v = (v00 * (1 - sx) + v10 * sx) * (1 - sy) + (v01 * (1 - sx) + v11 * sx) * sy
    return (2.0 * v - 1.0).astype(np.float32)


def _axis_weights(c: np.ndarray, scale: float) -> tuple[np.ndarray, int, int]:
    g = np.asarray(c, np.float64) / scale
    i = np.floor(g)
    s = _smooth(g - i)
    i = i.astype(np.int64)
    i0 = int(i.min())
    n = int(i.max()) - i0 + 2
    w = np.zeros((len(g), n), np.float64)
    r = np.arange(len(g))
    w[r, i - i0] = 1 - s
    w[r, i - i0 + 1] = s
    return w, i0, n


def _noise_grid(xs: np.ndarray, ys: np.ndarray, scale: float, key: np.uint32) -> np.ndarray:
    """Value noise on the grid ys x xs (um): separable, so it costs two small matrix products."""
    wx, ix0, nx = _axis_weights(xs, scale)
    wy, iy0, ny = _axis_weights(ys, scale)
    jj, ii = np.meshgrid(np.arange(iy0, iy0 + ny), np.arange(ix0, ix0 + nx), indexing="ij")
    v = 2.0 * _u01(ii, jj, key).astype(np.float64) - 1.0
    return (wy @ v @ wx.T).astype(np.float32)


def _pixel_noise(gx: np.ndarray, gy: np.ndarray, key: np.uint32) -> np.ndarray:
    """Per-pixel white noise in [-1, 1] on the grid gy x gx (integer level-0 pixel indices)."""
    h = (_u32(gx)[None, :] * np.uint32(0x9E3779B1)) ^ (_u32(gy)[:, None] * np.uint32(0x85EBCA77))
    h ^= key
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(2.0**-31) - np.float32(1.0)


# Channels of the noise keys.
_CH_TYPE, _CH_TISSUE, _CH_FIBRE, _CH_NUC, _CH_ADIPO, _CH_GLAND, _CH_PIX = (
    0,
    100,
    200,
    300,
    400,
    500,
    600,
)
_CH_CLUMPS = 700


# --------------------------------------------------------------------------- the slide model
@dataclass
class SlideModel:
    """The tissue of one slide as a function of micrometre coordinates.

    `type_bias` shifts the cell-type scores, i.e. the composition of the slide. With
    `with_background=False` everything is tissue (EVA patches). `stain` scales the
    haematoxylin and eosin densities (stain variation between slides).
    """

    seed: int
    width_um: float
    height_um: float
    type_bias: np.ndarray = field(default_factory=lambda: np.zeros(K, np.float32))
    region_scale_um: float = 230.0
    with_background: bool = True
    stain: tuple[float, float] = (1.0, 1.0)
    nuclei: NuclearVariant = field(default_factory=NuclearVariant)

    def __post_init__(self) -> None:
        self.type_bias = np.asarray(self.type_bias, np.float32).reshape(K)
        self._keys = {
            name: _key(self.seed, ch)
            for name, ch in [("tissue", _CH_TISSUE), ("fibre", _CH_FIBRE), ("pix", _CH_PIX)]
        }

    # ---- cell-type scores and tissue
    def _scores(self, noise_fn, a, b) -> np.ndarray:
        s = self.region_scale_um
        out = []
        for k in range(K):
            v = noise_fn(a, b, s, _key(self.seed, _CH_TYPE + k))
            v = v + 0.5 * noise_fn(a, b, s / 2.3, _key(self.seed, _CH_TYPE + 10 + k))
            v = v + 0.18 * noise_fn(a, b, s / 9.0, _key(self.seed, _CH_TYPE + 20 + k))
            out.append(v + self.type_bias[k])
        return np.stack(out)

    def _tissue_score(self, noise_fn, a, b, r2) -> np.ndarray:
        t = 0.75 * noise_fn(a, b, 420.0, self._keys["tissue"])
        t = t + 0.3 * noise_fn(a, b, 130.0, _key(self.seed, _CH_TISSUE + 1))
        return t + 1.05 - 1.5 * r2

    def types_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.argmax(self._scores(_noise_points, x, y), axis=0).astype(np.int8)

    def tissue_points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if not self.with_background:
            return np.ones(np.shape(x), bool)
        r2 = ((x - self.width_um / 2) / (self.width_um / 2)) ** 2 + (
            (y - self.height_um / 2) / (self.height_um / 2)
        ) ** 2
        return self._tissue_score(_noise_points, x, y, r2) > 0

    def _scores_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """`_scores` on a grid, all cell types at once (batched separable products)."""
        s = self.region_scale_um
        out = np.zeros((K, len(ys), len(xs)), np.float32)
        for scale, amp, ch in ((s, 1.0, 0), (s / 2.3, 0.5, 10), (s / 9.0, 0.18, 20)):
            wx, ix0, nx = _axis_weights(xs, scale)
            wy, iy0, ny = _axis_weights(ys, scale)
            jj, ii = np.meshgrid(np.arange(iy0, iy0 + ny), np.arange(ix0, ix0 + nx), indexing="ij")
            v = np.stack([_u01(ii, jj, _key(self.seed, _CH_TYPE + ch + k)) for k in range(K)])
            small = amp * (2.0 * v.astype(np.float64) - 1.0) @ wx.T  # (K, ny, W), tiny
            out += (wy @ small).astype(np.float32)
        out += self.type_bias[:, None, None]
        return out

    def types_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return np.argmax(self._scores_grid(xs, ys), axis=0).astype(np.int8)

    def tissue_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        if not self.with_background:
            return np.ones((len(ys), len(xs)), bool)
        ux = ((np.asarray(xs) - self.width_um / 2) / (self.width_um / 2)) ** 2
        uy = ((np.asarray(ys) - self.height_um / 2) / (self.height_um / 2)) ** 2
        r2 = (uy[:, None] + ux[None, :]).astype(np.float32)
        return self._tissue_score(_noise_grid, xs, ys, r2) > 0

    # ---- structures
    def fibre_angle(self, x, y) -> np.ndarray:
        """Direction of the stromal fibres at points (um): that of the nearest fibre-lattice node."""
        i = np.round(np.asarray(x) / FIBRE_LATTICE_UM).astype(np.int64)
        j = np.round(np.asarray(y) / FIBRE_LATTICE_UM).astype(np.int64)
        return (np.float32(np.pi) * _u01(i, j, self._keys["fibre"])).astype(np.float32)

    def _fibres(self, x: np.ndarray, y: np.ndarray, pixel_size_um: float) -> np.ndarray:
        """Wavy eosinophilic fibres in [-1, 1]: plane waves of one direction per lattice node,
        blended bilinearly, so the local period stays ~FIBRE_PERIOD_UM everywhere (no moire);
        faded out where the pixels cannot resolve them."""
        amp = float(np.clip((FIBRE_PERIOD_UM / pixel_size_um - 2.5) / 2.5, 0.0, 1.0))
        if amp == 0.0:
            return np.zeros(x.shape, np.float32)
        g = 2 * np.pi / FIBRE_PERIOD_UM
        gx, gy = x / FIBRE_LATTICE_UM, y / FIBRE_LATTICE_UM
        i0, j0 = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
        sx, sy = _smooth(gx - i0), _smooth(gy - j0)
        wob = 2.0 * _noise_points(x, y, 30.0, _key(self.seed, _CH_FIBRE + 1))
        out = np.zeros(x.shape, np.float32)
        for di, dj, w in (
            (0, 0, (1 - sx) * (1 - sy)),
            (1, 0, sx * (1 - sy)),
            (0, 1, (1 - sx) * sy),
            (1, 1, sx * sy),
        ):
            th = np.pi * _u01(i0 + di, j0 + dj, self._keys["fibre"])
            ph = 2 * np.pi * _u01(i0 + di, j0 + dj, _key(self.seed, _CH_FIBRE + 2))
            out += (w * np.sin(g * (x * np.cos(th) + y * np.sin(th)) + ph + wob)).astype(np.float32)
        return amp * out

    def _adipocyte_edge(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Second-nearest minus nearest adipocyte centre distance (um); small = membrane."""
        s = ADIPOCYTE_SPACING_UM
        key = _key(self.seed, _CH_ADIPO)
        key2 = _key(self.seed, _CH_ADIPO + 1)
        cx, cy = np.floor(x / s).astype(np.int64), np.floor(y / s).astype(np.int64)
        d1 = np.full(x.shape, np.inf, np.float32)
        d2 = np.full(x.shape, np.inf, np.float32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                i, j = cx + dx, cy + dy
                px = (i + 0.1 + 0.8 * _u01(i, j, key)) * s
                py = (j + 0.1 + 0.8 * _u01(i, j, key2)) * s
                d = np.hypot(x - px, y - py).astype(np.float32)
                d2 = np.minimum(d2, np.maximum(d1, d))
                d1 = np.minimum(d1, d)
        return d2 - d1

    def _gland(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distance to the nearest gland centre, lumen radius, angle from the centre)."""
        s = GLAND_SPACING_UM
        keys = [_key(self.seed, _CH_GLAND + c) for c in range(3)]
        cx, cy = np.floor(x / s).astype(np.int64), np.floor(y / s).astype(np.int64)
        best = np.full(x.shape, np.inf, np.float32)
        rad = np.zeros(x.shape, np.float32)
        ang = np.zeros(x.shape, np.float32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                i, j = cx + dx, cy + dy
                gx = (i + 0.3 + 0.4 * _u01(i, j, keys[0])) * s
                gy = (j + 0.3 + 0.4 * _u01(i, j, keys[1])) * s
                r_l = 14.0 + 10.0 * _u01(i, j, keys[2])
                ddx, ddy = x - gx, y - gy
                d = np.hypot(ddx, ddy).astype(np.float32)
                # distance relative to the lumen edge: nearest gland wall wins
                better = (d - r_l) < (best - rad)
                best = np.where(better, d, best)
                rad = np.where(better, r_l, rad)
                ang = np.where(better, np.arctan2(ddy, ddx), ang).astype(np.float32)
        return best, rad, ang

    def _allowed(self, k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if k == ADIPOSE:
            return self._adipocyte_edge(x, y) < 4.0
        if k == GLAND:
            d, r_l, _ = self._gland(x, y)
            return (d > r_l + 2.5) & (d < r_l + 8.0)
        return np.ones(np.shape(x), bool)

    # ---- nuclei on the jittered grid of type k
    def _raw_nuclei(self, k: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Candidate nucleus of grid cells (i, j) of type k, before the presence checks.

        Returns float32 (..., 8): x, y, a, b, cos, sin, density, hashed presence (0/1).
        """
        st = STYLES[k]
        s = st.spacing_um
        kk = [_key(self.seed, _CH_NUC + 10 * k + c) for c in range(7)]
        a = st.radius_um + st.radius_sd * (2.0 * _u01(i, j, kk[0]) - 1.0) * 1.5
        if self.nuclei.size != 1.0:
            a = a * np.float32(self.nuclei.size)
        a = np.clip(a, 0.8, 0.48 * s)
        lo, hi = st.aspect
        b = a * (lo + (hi - lo) * _u01(i, j, kk[1]))
        # centre anywhere in the cell; radius <= s/2, so a pixel only needs the 2 x 2 nearest cells
        ux = (i + _u01(i, j, kk[2])) * s
        uy = (j + _u01(i, j, kk[3])) * s
        present = _u01(i, j, kk[4]) < st.presence
        if k == STROMA:
            theta = self.fibre_angle(ux, uy)
        elif k == GLAND:
            theta = self._gland(ux.ravel(), uy.ravel())[2].reshape(ux.shape)
        else:
            theta = np.float32(np.pi) * _u01(i, j, kk[5])
        dens = st.h_density * (0.8 + 0.4 * _u01(i, j, kk[6]))
        out = np.stack([ux, uy, a, b, np.cos(theta), np.sin(theta), dens, present], -1)
        return out.astype(np.float32)

    def _check_presence(self, kinds: list[int], raws: list[np.ndarray]) -> None:
        """Keep a candidate only where the tissue under its centre is of its type (in place).

        All types are checked in one batch: the type map is the expensive part.
        """
        flat = [r.reshape(-1, 8) for r in raws]
        if not flat or sum(len(f) for f in flat) == 0:
            return
        x = np.concatenate([f[:, 0] for f in flat]).astype(np.float64)
        y = np.concatenate([f[:, 1] for f in flat]).astype(np.float64)
        ty = self.types_points(x, y)
        ts = self.tissue_points(x, y)
        o = 0
        for k, f in zip(kinds, flat, strict=True):
            n = len(f)
            ok = (ty[o : o + n] == k) & ts[o : o + n] & self._allowed(k, x[o : o + n], y[o : o + n])
            f[:, 7] *= ok
            o += n

    def _nuclei_at(self, k: int, x: np.ndarray, y: np.ndarray, grid: np.ndarray, i0: int, j0: int):
        """For pixels (x, y in um) of type k: (normalised elliptic radius^2, >= 1 outside; OD).

        `grid` holds the checked candidates of cells i0.., j0.. (from `_raw_nuclei`).
        """
        s = STYLES[k].spacing_um
        gx, gy = x / s, y / s
        ci, cj = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
        ni = grid.shape[1]
        flat = grid.reshape(-1, 8)
        sx = np.where(gx - ci < 0.5, -1, 1)
        sy = np.where(gy - cj < 0.5, -1, 1)
        best = np.full(x.shape, 4.0, np.float32)
        dens = np.zeros(x.shape, np.float32)
        for oy in (0, 1):
            for ox in (0, 1):
                p = flat[(cj + oy * sy - j0) * ni + (ci + ox * sx - i0)]
                dx = x - p[:, 0]
                dy = y - p[:, 1]
                u = (dx * p[:, 4] + dy * p[:, 5]) / p[:, 2]
                v = (dy * p[:, 4] - dx * p[:, 5]) / p[:, 3]
                d = u * u + v * v
                d[p[:, 7] == 0] = 4.0
                better = d < best
                best[better] = d[better]
                dens[better] = p[better, 6]
        return best, dens

    def cells(self) -> dict[str, np.ndarray]:
        """Every nucleus (= cell) on the slide: x, y (um), type, a, b, cos, sin, cell radius (um).

        Identical to what the renderer draws, so Xenium cells sit on visible nuclei.
        """
        raws = []
        for k in range(K):
            s = STYLES[k].spacing_um
            ni, nj = int(math.ceil(self.width_um / s)), int(math.ceil(self.height_um / s))
            jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
            raws.append(self._raw_nuclei(k, ii.ravel(), jj.ravel()))
        self._check_presence(list(range(K)), raws)
        parts = []
        for k, r in enumerate(raws):
            keep = (r[:, 7] > 0) & (r[:, 0] < self.width_um) & (r[:, 1] < self.height_um)
            r = r[keep]
            parts.append(
                {
                    "x": r[:, 0],
                    "y": r[:, 1],
                    "a": r[:, 2],
                    "b": r[:, 3],
                    "cos": r[:, 4],
                    "sin": r[:, 5],
                    "type": np.full(len(r), k, np.int8),
                    "cell_radius": np.maximum(STYLES[k].cell_radius_um, r[:, 2] + 1.0).astype(
                        np.float32
                    ),
                }
            )
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    # ---- composition (ground truth for expression)
    def composition(
        self, x: np.ndarray, y: np.ndarray, radius_um: float, n: int = 61
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cell-type fractions (N, K) and tissue fraction (N,) inside discs of `radius_um`.

        Sampled on a fixed sunflower pattern of `n` points, the same map that decides the pixels.
        """
        x = np.asarray(x, np.float64).reshape(-1)
        y = np.asarray(y, np.float64).reshape(-1)
        t = np.arange(n) + 0.5
        r = radius_um * np.sqrt(t / n)
        ang = t * (math.pi * (3 - math.sqrt(5)))
        px = (x[:, None] + r * np.cos(ang)).ravel()
        py = (y[:, None] + r * np.sin(ang)).ravel()
        ty = self.types_points(px, py).reshape(len(x), n)
        ts = self.tissue_points(px, py).reshape(len(x), n)
        frac = np.stack([((ty == k) & ts).mean(1) for k in range(K)], axis=1)
        return frac.astype(np.float32), ts.mean(1).astype(np.float32)

    # ---- rendering
    def render(self, x0: int, y0: int, h: int, w: int, pixel_size_um: float) -> np.ndarray:
        """Level-0 pixels rows y0..y0+h, columns x0..x0+w of this slide at `pixel_size_um`."""
        ps = float(pixel_size_um)
        gxs = np.arange(x0, x0 + w, dtype=np.int64)
        gys = np.arange(y0, y0 + h, dtype=np.int64)
        xs = (gxs + 0.5) * ps
        ys = (gys + 0.5) * ps
        types = self.types_grid(xs, ys)
        tissue = self.tissue_grid(xs, ys)
        hd = np.full((h, w), 0.012, np.float32)
        ed = np.full((h, w), 0.035, np.float32)
        n1 = _pixel_noise(gxs, gys, self._keys["pix"])
        kinds, raws, origins, sels = [], [], [], []
        for k in range(K):
            sel = (types == k) & tissue
            if not sel.any():
                continue
            s = STYLES[k].spacing_um
            i0, j0 = int(np.floor(xs[0] / s)) - 1, int(np.floor(ys[0] / s)) - 1
            i1, j1 = int(np.floor(xs[-1] / s)) + 2, int(np.floor(ys[-1] / s)) + 2
            jj, ii = np.meshgrid(np.arange(j0, j1 + 1), np.arange(i0, i1 + 1), indexing="ij")
            kinds.append(k)
            raws.append(self._raw_nuclei(k, ii, jj))
            origins.append((i0, j0))
            sels.append(sel)
        self._check_presence(kinds, raws)
        for k, raw, (i0, j0), sel in zip(kinds, raws, origins, sels, strict=True):
            rows, cols = np.nonzero(sel)
            x, y = xs[cols].astype(np.float32), ys[rows].astype(np.float32)
            d, dens = self._nuclei_at(k, x, y, raw, i0, j0)
            hk, ek = self._render_type(k, x, y, n1[rows, cols], d, dens, ps)
            hd[rows, cols] = hk
            ed[rows, cols] = ek
        ed *= 1.0 + 0.12 * n1
        hs, es = self.stain
        od = (hd * np.float32(hs))[..., None] * H_VEC + (ed * np.float32(es))[..., None] * E_VEC
        return (255.0 * np.exp(-od) + 0.5).clip(0, 255).astype(np.uint8)

    def _render_type(self, k: int, x, y, noise, d, dens, ps: float):
        st = STYLES[k]
        inside = d < 1.0
        if k == TUMOR:
            e = np.full(x.shape, 0.42, np.float32)
            h = np.full(x.shape, 0.22, np.float32)
        elif k == STROMA:
            e = (0.62 + 0.3 * self._fibres(x, y, ps)).astype(np.float32)
            h = np.full(x.shape, 0.06, np.float32)
        elif k == IMMUNE:
            e = np.full(x.shape, 0.30, np.float32)
            h = np.full(x.shape, 0.16, np.float32)
        elif k == ADIPOSE:
            edge = self._adipocyte_edge(x, y)
            memb = np.exp(-((edge / 1.2) ** 2)).astype(np.float32)
            e = 0.03 + 0.75 * memb
            h = 0.01 + 0.05 * memb
        else:  # GLAND
            dist, r_l, _ = self._gland(x, y)
            lumen = dist < r_l
            epi = (~lumen) & (dist < r_l + 10.0)
            e = np.where(lumen, 0.08, np.where(epi, 0.36, 0.5)).astype(np.float32)
            h = np.where(lumen, 0.01, np.where(epi, 0.12, 0.05)).astype(np.float32)
        if inside.any():
            di = d[inside]
            prof = 1.0 - st.vesicular * 0.6 * (1.0 - di)  # pale centre for vesicular nuclei
            if st.vesicular > 0:
                prof = prof + st.vesicular * 1.2 * (di < 0.05)  # nucleolus
            chrom = 0.8 + 0.35 * noise[inside]
            if self.nuclei.clumps > 0:
                blobs = _noise_points(x[inside], y[inside], 1.5, _key(self.seed, _CH_CLUMPS))
                chrom = chrom * (1.0 + self.nuclei.clumps * blobs)
            edge = np.clip((1.0 - di) * 10.0, 0.0, 1.0)  # soft rim (anti-aliasing)
            hn = dens[inside] * prof * chrom
            h[inside] = h[inside] * (1 - edge) + hn * edge
            e[inside] = e[inside] * (1 - edge) + 0.25 * edge
        return h, e

    def tile_fn(self, pixel_size_um: float, block: int = 1024):
        """A `tile_fn(y0, x0, h, w)` for `write_pyramidal_tiff`.

        Renders `block`-wide pieces and serves tiles from them: per-call overheads (noise
        lattices, nucleus candidates) are paid once per block instead of once per tile.
        """
        cache: dict[str, object] = {"key": None, "img": None}
        width_px = int(round(self.width_um / pixel_size_um))

        def fn(y0: int, x0: int, h: int, w: int) -> np.ndarray:
            bx = (x0 // block) * block
            if x0 + w > bx + block:  # a tile straddling blocks: render it directly
                return self.render(x0, y0, h, w, pixel_size_um)
            key = (y0, h, bx)
            if cache["key"] != key:
                bw = min(block, max(width_px - bx, x0 + w - bx))
                cache["img"] = self.render(bx, y0, h, bw, pixel_size_um)
                cache["key"] = key
            return cache["img"][:, x0 - bx : x0 - bx + w]  # type: ignore[index]

        return fn


def random_slide_model(seed: int, width_um: float, height_um: float) -> SlideModel:
    """A slide with a random composition and stain intensity, fully determined by `seed`."""
    rng = np.random.default_rng([int(seed), 7])
    bias = rng.normal(0.0, 0.35, K).astype(np.float32)
    stain = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
    return SlideModel(
        seed=int(seed), width_um=width_um, height_um=height_um, type_bias=bias, stain=stain
    )


def render_patch(
    cell_type: int, size_px: int, pixel_size_um: float, rng: np.random.Generator
) -> np.ndarray:
    """A uint8 (size, size, 3) patch of mostly one cell type (used for the synthetic EVA task)."""
    if not 0 <= int(cell_type) < K:
        raise ValueError(f"cell_type {cell_type} not in 0..{K - 1} ({CELL_TYPES})")
    bias = np.full(K, -0.2, np.float32)
    bias[int(cell_type)] = 2.2
    bias += rng.normal(0, 0.1, K).astype(np.float32)
    stain = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
    model = SlideModel(
        seed=int(rng.integers(2**31 - 1)),
        width_um=1e6,
        height_um=1e6,
        type_bias=bias,
        with_background=False,
        stain=stain,
    )
    x0 = int(rng.integers(0, 10**6))
    y0 = int(rng.integers(0, 10**6))
    return model.render(x0, y0, int(size_px), int(size_px), float(pixel_size_um))

/* Bilinear resampling of 8-bit images by a scale and a translation, for mint.data.wsi.resample
(every patch that is not a whole-pixel crop goes through it).

Why a resampler of our own: OpenCV's warpAffine, which did this before, works out two source
coordinates per output pixel in a general affine loop: ~105 us per 224 px patch on 4 channels
(RGBA; its 3-channel warp is ~2.5x slower still), 45% of a patch's cost at 1 um/px, plus the
RGB -> RGBA -> RGB conversions around it. A scale plus a translation is separable: each output
column has one pair of source columns and one weight, each output row one pair of rows. So this
interpolates each needed source row horizontally once (into 16-bit sums), then blends two such
rows per output row, on RGB directly: 2.0x (0.3 um/px slides) to 3.5x (1 um/px) the speed of
OpenCV's warp with the conversions, 4-8.5x its RGB warp (benchmarks/resample.py).

Geometry is the warp's (the caller's contract): output pixel (u, v) samples the source at
centre coordinates (ax + u * rx, ay + v * ry), the border repeated outside the source. Weights
are quantised to 1/8192 of a pixel horizontally and 1/32768 vertically, with two roundings:
every output is within 0.53 of the exact (float64) bilinear value (0.5 is the rounding of a
uint8 itself; bound about 0.5 + 255/16384 + 3/256). On x86 (SSSE3) the horizontal pass gathers
the two samples of 8 output values with two byte shuffles from a 32-byte window and weighs them
with two multiply-adds, and the vertical pass blends 8 values per instruction. The plain C path
computes the same integers (bit-identical, tested); it is 7-9x slower than the vector path and
slower than OpenCV's warp, so mint.data.wsi uses this module only where the vector path runs
(SIMD). The plain path serves the calls whose groups of 8 outputs span more than the window
(shrinking by about 3.3x or more on RGB, which mint.data.wsi never asks for: it averages whole
blocks first) and the tests.

Safety: every write stays inside `dst`, and every read inside the memory from the first to the
last byte of `src` (a vector load may read the bytes between the rows of a view, which the
shuffle drops; a load that would pass the last byte reads a padded copy of that row instead).
The spans of `src` and `dst` (first to last byte) must not overlap. The GIL is released while resampling, so reader threads
resample in parallel. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SSSE3 1
#include <tmmintrin.h>
#else
#define HAVE_SSSE3 0
#endif

/* Interpolated rows hold 128 x the value (a signed 16-bit sum). Horizontal weights are in
   1/8192 and applied in two parts, weight = 64 x high + low (high < 128, low < 64), so that both
   products fit the signed bytes and 16-bit sums of SSSE3's multiply-add; vertical weights are
   in 1/32768, the precision of its rounding multiply. */
#define HBITS 7
#define XBITS 13
#define XLOW 6
#define YBITS 15
#define GROUP 8    /* output values per vector group of the horizontal pass */
#define WINDOW 32  /* source bytes a group may span (two 16-byte loads) */

/* Per call plan of one axis: for output index i, the two source indices and the weight of the
   second in 1/2^bits (the first weighs the rest). A weight of 0 gets the first index twice
   (then any split of the weight gives the same sum; the vector path uses half and half, which
   fits its signed bytes). */
typedef struct {
    Py_ssize_t *i0, *i1;
    int *w;
} axis_t;

static int plan_axis(axis_t *a, Py_ssize_t n_out, Py_ssize_t n_src, double start, double step,
                     int bits) {
    a->i0 = malloc(sizeof(Py_ssize_t) * n_out);
    a->i1 = malloc(sizeof(Py_ssize_t) * n_out);
    a->w = malloc(sizeof(int) * n_out);
    if (!a->i0 || !a->i1 || !a->w) return -1;
    for (Py_ssize_t i = 0; i < n_out; i++) {
        const double s = start + (double)i * step;
        double fl = floor(s);
        int w = (int)lround((s - fl) * (double)(1 << bits));
        if (w == 1 << bits) {
            fl += 1.0;
            w = 0;
        }
        /* clamp in double first: a far-off coordinate must not overflow the integer */
        const double lo = fl < 0.0 ? 0.0 : (fl > (double)(n_src - 1) ? (double)(n_src - 1) : fl);
        const double hi1 = fl + 1.0;
        const double hi = hi1 < 0.0 ? 0.0 : (hi1 > (double)(n_src - 1) ? (double)(n_src - 1) : hi1);
        a->i0[i] = (Py_ssize_t)lo;
        a->i1[i] = (Py_ssize_t)hi;
        if (a->i0[i] == a->i1[i] || w == 0) {
            a->i1[i] = a->i0[i];
            w = 0;
        }
        a->w[i] = w;
    }
    return 0;
}

static void free_axis(axis_t *a) {
    free(a->i0);
    free(a->i1);
    free(a->w);
}

/* One source row interpolated horizontally: out[u * ch + c] = 128 x value, rounded. */
static void hrow_scalar(const uint8_t *row, const axis_t *ax, Py_ssize_t ow, int ch, int16_t *out) {
    for (Py_ssize_t u = 0; u < ow; u++) {
        const uint8_t *p0 = row + ax->i0[u] * ch, *p1 = row + ax->i1[u] * ch;
        const int w1 = ax->w[u], w0 = (1 << XBITS) - w1;
        const int h0 = w0 >> XLOW, h1 = w1 >> XLOW;
        const int l0 = w0 & ((1 << XLOW) - 1), l1 = w1 & ((1 << XLOW) - 1);
        for (int c = 0; c < ch; c++)
            out[u * ch + c] = (int16_t)(p0[c] * h0 + p1[c] * h1 +
                                        ((p0[c] * l0 + p1[c] * l1 + (1 << (XLOW - 1))) >> XLOW));
    }
}

/* Two interpolated rows blended with weight wy (1/32768) on the second: h0 + round((h1 - h0)
   x wy / 32768), then / 128 rounded: the vector path's arithmetic (its rounding multiply is
   (x * wy + 2^14) >> 15, with an arithmetic shift). */
static void vrow_scalar(const int16_t *h0, const int16_t *h1, int wy, Py_ssize_t n, uint8_t *dst) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const int32_t d = (int32_t)h1[i] - h0[i];
        const int32_t r = h0[i] + ((d * wy + (1 << (YBITS - 1))) >> YBITS);
        dst[i] = (uint8_t)((r + (1 << (HBITS - 1))) >> HBITS);
    }
}

#if HAVE_SSSE3
/* The horizontal pass in groups of GROUP output values: group g reads the source bytes
   [base[g], base[g] + WINDOW) of the row (two 16-byte loads), shuffles each value's two
   samples next to each other and multiply-adds them with their weights. */
typedef struct {
    Py_ssize_t n;        /* groups */
    Py_ssize_t reach;    /* bytes past the row's start the loads may touch */
    Py_ssize_t *base;    /* first source byte of each group */
    __m128i *lo, *hi;    /* shuffle masks for the first and the second load */
    __m128i *wh, *wl;    /* weight pairs: high and low parts */
    void *mem;
} groups_t;

/* The groups for a plan; -1 when out of memory, 1 when some group spans more than WINDOW
   bytes (a shrink by about 3.3x or more on RGB: the caller then takes the plain C path). */
static int plan_groups(groups_t *g, const axis_t *ax, Py_ssize_t ow, int ch) {
    const Py_ssize_t nv = ow * ch;
    g->n = (nv + GROUP - 1) / GROUP;
    g->base = malloc(sizeof(Py_ssize_t) * g->n);
    g->mem = malloc(sizeof(__m128i) * 4 * g->n + 16);
    if (!g->base || !g->mem) return -1;
    __m128i *m = (__m128i *)(((uintptr_t)g->mem + 15) & ~(uintptr_t)15);
    g->lo = m;
    g->hi = m + g->n;
    g->wh = m + 2 * g->n;
    g->wl = m + 3 * g->n;
    g->reach = 0;
    for (Py_ssize_t k = 0; k < g->n; k++) {
        uint8_t lo[16], hi[16];
        int8_t wh[16], wl[16];
        Py_ssize_t base = -1;
        for (int j = 0; j < GROUP; j++) {
            const Py_ssize_t v = k * GROUP + j < nv ? k * GROUP + j : nv - 1; /* tail: repeat */
            const Py_ssize_t b = ax->i0[v / ch] * ch + v % ch;
            if (base < 0 || b < base) base = b;
        }
        for (int j = 0; j < GROUP; j++) {
            const Py_ssize_t v = k * GROUP + j < nv ? k * GROUP + j : nv - 1;
            const Py_ssize_t u = v / ch, c = v % ch;
            const Py_ssize_t b0 = ax->i0[u] * ch + c - base, b1 = ax->i1[u] * ch + c - base;
            if (b0 >= WINDOW || b1 >= WINDOW) return 1;
            lo[2 * j] = b0 < 16 ? (uint8_t)b0 : 0x80;
            hi[2 * j] = b0 < 16 ? 0x80 : (uint8_t)(b0 - 16);
            lo[2 * j + 1] = b1 < 16 ? (uint8_t)b1 : 0x80;
            hi[2 * j + 1] = b1 < 16 ? 0x80 : (uint8_t)(b1 - 16);
            const int w1 = ax->w[u], w0 = (1 << XBITS) - w1;
            wh[2 * j] = (int8_t)(w1 ? w0 >> XLOW : 1 << (HBITS - 1));
            wh[2 * j + 1] = (int8_t)(w1 ? w1 >> XLOW : 1 << (HBITS - 1));
            wl[2 * j] = (int8_t)(w0 & ((1 << XLOW) - 1));
            wl[2 * j + 1] = (int8_t)(w1 & ((1 << XLOW) - 1));
        }
        g->base[k] = base;
        memcpy(&g->lo[k], lo, 16);
        memcpy(&g->hi[k], hi, 16);
        memcpy(&g->wh[k], wh, 16);
        memcpy(&g->wl[k], wl, 16);
        if (base + WINDOW > g->reach) g->reach = base + WINDOW;
    }
    return 0;
}

static void free_groups(groups_t *g) {
    free(g->base);
    free(g->mem);
}

/* `out` holds n * GROUP values (the tail group's extra values are scratch). */
__attribute__((target("ssse3"))) static void hrow_ssse3(const uint8_t *row, const groups_t *g,
                                                       int16_t *out) {
    const __m128i round = _mm_set1_epi16(1 << (XLOW - 1));
    for (Py_ssize_t k = 0; k < g->n; k++) {
        const uint8_t *p = row + g->base[k];
        const __m128i a = _mm_loadu_si128((const __m128i *)p);
        const __m128i b = _mm_loadu_si128((const __m128i *)(p + 16));
        const __m128i pairs = _mm_or_si128(_mm_shuffle_epi8(a, g->lo[k]), _mm_shuffle_epi8(b, g->hi[k]));
        const __m128i hi = _mm_maddubs_epi16(pairs, g->wh[k]);
        const __m128i lo = _mm_srli_epi16(_mm_add_epi16(_mm_maddubs_epi16(pairs, g->wl[k]), round), XLOW);
        _mm_storeu_si128((__m128i *)(out + k * GROUP), _mm_add_epi16(hi, lo));
    }
}

__attribute__((target("ssse3"))) static void vrow_ssse3(const int16_t *h0, const int16_t *h1, int wy,
                                                       Py_ssize_t n, uint8_t *dst) {
    const __m128i m = _mm_set1_epi16((int16_t)wy), half = _mm_set1_epi16(1 << (HBITS - 1));
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m128i a0 = _mm_loadu_si128((const __m128i *)(h0 + i));
        const __m128i a1 = _mm_loadu_si128((const __m128i *)(h0 + i + 8));
        const __m128i b0 = _mm_loadu_si128((const __m128i *)(h1 + i));
        const __m128i b1 = _mm_loadu_si128((const __m128i *)(h1 + i + 8));
        __m128i r0 = _mm_add_epi16(a0, _mm_mulhrs_epi16(_mm_sub_epi16(b0, a0), m));
        __m128i r1 = _mm_add_epi16(a1, _mm_mulhrs_epi16(_mm_sub_epi16(b1, a1), m));
        r0 = _mm_srli_epi16(_mm_add_epi16(r0, half), HBITS);
        r1 = _mm_srli_epi16(_mm_add_epi16(r1, half), HBITS);
        _mm_storeu_si128((__m128i *)(dst + i), _mm_packus_epi16(r0, r1));
    }
    vrow_scalar(h0 + i, h1 + i, wy, n - i, dst + i);
}

static int have_ssse3(void) { return __builtin_cpu_supports("ssse3"); }

/* The vector path's groups for a row plan: 0 when it serves the plan (`g` filled), 1 when the
   plain path must (simd off, no SSSE3, or a group spanning more than WINDOW bytes), -1 when out
   of memory. `g` must start zeroed and be freed by the caller in every case. */
static int vector_plan(groups_t *g, const axis_t *ax, Py_ssize_t ow, int ch, int simd) {
    if (!simd || !have_ssse3()) return 1;
    return plan_groups(g, ax, ow, ch);
}
#endif

/* Resample; 0, or -1 when out of memory. */
static int resample(const uint8_t *src, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t sstride,
                    const uint8_t *src_end, uint8_t *dst, Py_ssize_t oh, Py_ssize_t ow,
                    Py_ssize_t dstride, int ch, double ax_, double ay_, double rx, double ry,
                    int simd) {
    axis_t ax = {0}, ay = {0};
    int16_t *hbuf = NULL;
    uint8_t *pad = NULL;
    int rc = -1;
    const Py_ssize_t nv = ow * ch;
    if (plan_axis(&ax, ow, sw, ax_, rx, XBITS) || plan_axis(&ay, oh, sh, ay_, ry, YBITS)) goto done;
#if HAVE_SSSE3
    groups_t g = {0};
    const int r = vector_plan(&g, &ax, ow, ch, simd);
    if (r < 0) goto done_groups;
    simd = r == 0;
    const Py_ssize_t per_row = simd ? g.n * GROUP : nv;
#else
    simd = 0;
    const Py_ssize_t per_row = nv;
#endif
    /* Two interpolated rows, tagged with their source row. Output rows use nondecreasing
       source rows (step_y > 0), so the row with the smaller tag is never needed again once a
       new row is: it is the one replaced (never the first row of this output row, which is
       either cached with the larger tag or computed just before). */
    hbuf = malloc(sizeof(int16_t) * 2 * per_row);
    if (!hbuf) goto done_groups;
    int16_t *hr[2] = {hbuf, hbuf + per_row};
    Py_ssize_t tag[2] = {-1, -1};
    for (Py_ssize_t v = 0; v < oh; v++) {
        const Py_ssize_t rows[2] = {ay.i0[v], ay.i1[v]};
        int slot[2];
        for (int t = 0; t < 2; t++) {
            const Py_ssize_t j = rows[t];
            if (tag[0] == j) {
                slot[t] = 0;
                continue;
            }
            if (tag[1] == j) {
                slot[t] = 1;
                continue;
            }
            const int next = tag[0] < tag[1] ? 0 : 1;
            const uint8_t *row = src + j * sstride;
#if HAVE_SSSE3
            if (simd) {
                if (row + g.reach > src_end) { /* the loads would pass the source's end */
                    if (!pad && !(pad = calloc(1, (size_t)(g.reach > sw * ch ? g.reach : sw * ch))))
                        goto done_groups;
                    memcpy(pad, row, (size_t)(sw * ch));
                    row = pad;
                }
                hrow_ssse3(row, &g, hr[next]);
            } else
#endif
                hrow_scalar(row, &ax, ow, ch, hr[next]);
            tag[next] = j;
            slot[t] = next;
        }
        uint8_t *out = dst + v * dstride;
        const int16_t *h0 = hr[slot[0]], *h1 = hr[slot[1]];
#if HAVE_SSSE3
        if (simd) {
            vrow_ssse3(h0, h1, ay.w[v], nv, out);
            continue;
        }
#endif
        vrow_scalar(h0, h1, ay.w[v], nv, out);
    }
    rc = 0;
done_groups:
#if HAVE_SSSE3
    free_groups(&g);
#endif
done:
    free(pad);
    free(hbuf);
    free_axis(&ax);
    free_axis(&ay);
    return rc;
}

/* (height, width, channels) and the row stride of an 8-bit image buffer whose pixels and
   samples are packed (rows may be apart, as in a view of part of a larger image). */
static int image_layout(Py_buffer *b, const char *name, Py_ssize_t *h, Py_ssize_t *w, int *ch,
                        Py_ssize_t *stride) {
    if (b->itemsize != 1 || (b->format && strcmp(b->format, "B") != 0) ||
        (b->ndim != 2 && b->ndim != 3)) {
        PyErr_Format(PyExc_ValueError, "%s must be a uint8 image (h, w) or (h, w, c)", name);
        return -1;
    }
    *h = b->shape[0];
    *w = b->shape[1];
    const Py_ssize_t c = b->ndim == 3 ? b->shape[2] : 1;
    if (c < 1 || c > 4) {
        PyErr_Format(PyExc_ValueError, "%s has %zd channels (1 to 4 supported)", name, c);
        return -1;
    }
    *ch = (int)c;
    /* a stride along an axis of length 1 means nothing (numpy may report any value) */
    const Py_ssize_t *s = b->strides;
    const Py_ssize_t row = *h > 1 ? s[0] : *w * c;
    if ((b->ndim == 3 && c > 1 && s[2] != 1) || (*w > 1 && s[1] != c) || row < *w * c) {
        PyErr_Format(PyExc_ValueError, "%s must have packed pixels and rows in order", name);
        return -1;
    }
    *stride = row;
    return 0;
}

static PyObject *py_bilinear(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"src", "dst", "x", "y", "step_x", "step_y", "simd", NULL};
    PyObject *so, *dobj;
    double x, y, rx, ry;
    int simd = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOdddd|p:bilinear", kwlist, &so, &dobj, &x, &y,
                                     &rx, &ry, &simd))
        return NULL;
    Py_buffer src, dst;
    if (PyObject_GetBuffer(so, &src, PyBUF_RECORDS_RO) != 0) return NULL;
    if (PyObject_GetBuffer(dobj, &dst, PyBUF_RECORDS) != 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t sh, sw, ss, oh, ow, ds;
    int sc, dc;
    if (image_layout(&src, "src", &sh, &sw, &sc, &ss) || image_layout(&dst, "dst", &oh, &ow, &dc, &ds))
        goto done;
    if (sc != dc) {
        PyErr_Format(PyExc_ValueError, "src has %d channels, dst %d", sc, dc);
        goto done;
    }
    {
        /* the resampler reads rows of src while it writes dst: they must be apart */
        const char *s0 = src.buf, *s1 = s0 + (sh > 0 && sw > 0 ? (sh - 1) * ss + sw * sc : 0);
        const char *d0 = dst.buf, *d1 = d0 + (oh > 0 && ow > 0 ? (oh - 1) * ds + ow * dc : 0);
        if (s0 < d1 && d0 < s1) {
            PyErr_SetString(PyExc_ValueError, "src and dst overlap");
            goto done;
        }
    }
    if (sh < 1 || sw < 1) {
        PyErr_SetString(PyExc_ValueError, "src is empty");
        goto done;
    }
    /* the last sampling points too: a coordinate must never become inf (or NaN weights) */
    if (!isfinite(x) || !isfinite(y) || !(rx > 0) || !(ry > 0) ||
        !isfinite(x + (double)ow * rx) || !isfinite(y + (double)oh * ry)) {
        PyErr_SetString(PyExc_ValueError,
                        "x, y must be finite and step_x, step_y positive, with finite last points");
        goto done;
    }
    if (oh > 0 && ow > 0) {
        const uint8_t *end = (const uint8_t *)src.buf + (sh - 1) * ss + sw * sc;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = resample((const uint8_t *)src.buf, sh, sw, ss, end, (uint8_t *)dst.buf, oh, ow, ds,
                      sc, x, y, rx, ry, simd);
        Py_END_ALLOW_THREADS
        if (rc) {
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_INCREF(dobj);
    result = dobj;
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *py_vector_path(PyObject *self, PyObject *args) {
    Py_ssize_t sw, ow;
    int ch;
    double x, rx;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnidd:vector_path", &sw, &ow, &ch, &x, &rx)) return NULL;
    /* out_width sizes the plan's tables (bilinear() takes it from a real buffer; here it is a
       bare number, so it is bounded) */
    if (sw < 1 || ow < 1 || ow > (1 << 24) || ch < 1 || ch > 4 || !isfinite(x) || !(rx > 0) ||
        !isfinite(x + (double)ow * rx)) {
        PyErr_SetString(PyExc_ValueError, "src_width >= 1, out_width 1-16777216, channels 1-4, "
                                          "x finite, step_x > 0");
        return NULL;
    }
    int serves = 0;
#if HAVE_SSSE3
    axis_t ax = {0};
    groups_t g = {0};
    int r = plan_axis(&ax, ow, sw, x, rx, XBITS) ? -1 : vector_plan(&g, &ax, ow, ch, 1);
    free_groups(&g);
    free_axis(&ax);
    if (r < 0) return PyErr_NoMemory();
    serves = r == 0;
#else
    (void)x;
#endif
    return PyBool_FromLong(serves);
}

static PyMethodDef methods[] = {
    {"bilinear", (PyCFunction)(void (*)(void))py_bilinear, METH_VARARGS | METH_KEYWORDS,
     "bilinear(src, dst, x, y, step_x, step_y, simd=True) -> dst\n\n"
     "Fill the uint8 image `dst` (h, w) or (h, w, c), c <= 4, with `src` (same channels) "
     "resampled bilinearly: output pixel (u, v) samples the source at centre coordinates "
     "(x + u * step_x, y + v * step_y), the border repeated outside it. Pixels and samples must "
     "be packed; rows may be apart (views of larger images); src and dst must not overlap. "
     "simd=False takes the plain C path (the same result). Releases the GIL."},
    {"vector_path", py_vector_path, METH_VARARGS,
     "vector_path(src_width, out_width, channels, x, step_x) -> bool\n\n"
     "Whether bilinear() takes the vector path for rows of `out_width` pixels of `channels` "
     "sampled from a source `src_width` pixels wide at x + u * step_x (the plan it makes; "
     "False on machines without the vector path, i.e. where SIMD is False)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_resample", "Bilinear resampler (see mint/data/_resample.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__resample(void) {
    PyObject *m = PyModule_Create(&module);
#if HAVE_SSSE3
    const int simd = have_ssse3();
#else
    const int simd = 0;
#endif
    /* SIMD: whether bilinear() takes the vector path on this machine */
    if (m && PyModule_AddObject(m, "SIMD", PyBool_FromLong(simd)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* TIFF LZW tile decoder for mint.data.tiff_tiles (the direct slide reader's hot loop).

Why a decoder of our own: HEST writes its slides as LZW tiles with the horizontal predictor
(libvips tiffsave), and decoding them was 65-80% of what tiling a patch cost. imagecodecs'
decoder copies every new table string into a side buffer and the output byte by byte (~1,000 us
a 256 px RGB tile here); libtiff's is ~1.4x as fast. This one keeps each table entry as a
(start, length) view of the output already written (an entry is always the previous code's
string plus the first byte of the next, which lie side by side in the output) and copies short
strings with fixed 8-byte moves: 2.5-3.8x imagecodecs' speed on HEST-format tiles
(benchmarks/lzw.py). Semantics follow libtiff's new-style decoder (LZWDecode in tif_lzw.c):
MSB-first codes, "early change" of the code width at 511 / 1023 / 2047 entries, CLEAR = 256,
EOI = 257, a stream that does not start with CLEAR is corrupt, at most 5119 table entries
(4095 + 1024 of slack for encoders late with CLEAR), output stopped when the tile is full.
Old-style (LSB, pre-TIFF 6) streams are left to imagecodecs by the caller.

Safety: every read stays inside `src`, every write inside `dst`, for any input (the fast
copies run only with 8 bytes of slack past the string); corrupt streams return an error
code. The GIL is released while decoding, so reader threads decode in parallel. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LZW_CLEAR 256
#define LZW_EOI 257
#define LZW_FIRST 258
/* libtiff's table (CSIZE): 4095 codes plus slack for encoders that are late with CLEAR */
#define LZW_TABLE 5119

#define ERR_CORRUPT -1 /* a code past the table, or a stream that does not start with CLEAR */
#define ERR_TABLE -2   /* table full without CLEAR */
#define ERR_SIZE -3    /* an output of 4 GiB or more (table offsets are 32-bit) */

static inline uint64_t load8(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void store8(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Copy n bytes from dst + s to dst + p (s < p) in 8-byte moves; may write up to 7 bytes past
   p + n (the caller guarantees room), which the next strings overwrite. Moves read before
   they write, so a string ending at p (s + n == p) copies correctly; bytes read at or past p
   only land past n. */
static inline void copy_fast(uint8_t *dst, Py_ssize_t p, Py_ssize_t s, Py_ssize_t n) {
    Py_ssize_t k = 0;
    do {
        store8(dst + p + k, load8(dst + s + k));
        k += 8;
    } while (k < n);
}

/* A table entry: its string is dst[start, start + length), or the byte `first` itself for
   codes below 256. One 8-byte record, so that a code costs one cache line. */
typedef struct {
    uint32_t start;
    uint16_t length;
    uint8_t first;
} entry_t;

/* Decode `src` into `dst`; returns the number of bytes written (< ndst when the stream ends
   early) or a negative error code. */
static Py_ssize_t lzw_decode(const uint8_t *src, Py_ssize_t nsrc, uint8_t *dst, Py_ssize_t ndst) {
    entry_t e[LZW_TABLE];
    Py_ssize_t p = 0, start_old = 0;
    int width = 9;
    uint32_t table = LZW_FIRST;
    int32_t old = -1; /* the previous code; -1 before the first code after CLEAR */
    int cleared = 0;  /* a CLEAR has been read (libtiff refuses any other first code) */

    if (ndst > (Py_ssize_t)UINT32_MAX) return ERR_SIZE;
    for (int i = 0; i < 256; i++) {
        e[i].start = 0;
        e[i].length = 1;
        e[i].first = (uint8_t)i;
    }
    /* Bits are read 64 at a time from the byte holding the next code (no refill branch to
       mispredict) while 8 bytes remain; the last bytes one at a time. */
    uint64_t bitpos = 0;
    const uint64_t srcbits = (uint64_t)nsrc * 8;
    while (p < ndst) {
        uint32_t code;
        const uint64_t at = bitpos >> 3;
        if (at + 8 <= (uint64_t)nsrc) {
            const uint8_t *b = src + at; /* big-endian load: compilers turn it into one bswap */
            const uint64_t v = (uint64_t)b[0] << 56 | (uint64_t)b[1] << 48 | (uint64_t)b[2] << 40 |
                               (uint64_t)b[3] << 32 | (uint64_t)b[4] << 24 | (uint64_t)b[5] << 16 |
                               (uint64_t)b[6] << 8 | (uint64_t)b[7];
            code = (uint32_t)((v << (bitpos & 7)) >> (64 - width));
        } else {
            if (bitpos + (uint64_t)width > srcbits) break; /* stream ends without EOI */
            code = 0;
            for (uint64_t b = bitpos; b < bitpos + (uint64_t)width; b++)
                code = (code << 1) | ((src[b >> 3] >> (7 - (b & 7))) & 1);
        }
        bitpos += (uint64_t)width;
        Py_ssize_t n;
        if (code < table && (code >> 1) != (LZW_CLEAR >> 1)) {
            /* a byte or an entry: its string is dst[start, start + length) */
            const entry_t c = e[code];
            Py_ssize_t s = c.start;
            n = c.length;
            if (p + n + 8 <= ndst) {
                copy_fast(dst, p, s, n);
                dst[p] = c.first; /* a byte's own value (its start is a dummy) */
            } else {
                if (n > ndst - p) n = ndst - p;
                dst[p] = c.first;
                for (Py_ssize_t i = 1; i < n; i++) dst[p + i] = dst[s + i];
            }
            if (old < 0) { /* the first code after CLEAR (a byte: table is 258): no entry to add */
                if (!cleared) return ERR_CORRUPT;
                old = (int32_t)code;
                start_old = p;
                p += n;
                continue;
            }
        } else if (code == LZW_CLEAR) {
            cleared = 1;
            table = LZW_FIRST;
            width = 9;
            old = -1;
            continue;
        } else if (code == LZW_EOI) {
            break;
        } else if (code == table && old >= 0) {
            /* the entry this code adds: the previous string plus its own first byte */
            Py_ssize_t lold = e[old].length;
            n = lold + 1;
            if (p + n + 8 <= ndst) {
                copy_fast(dst, p, start_old, lold);
                dst[p + lold] = e[old].first;
            } else {
                if (n > ndst - p) n = ndst - p;
                for (Py_ssize_t i = 0; i < n; i++) dst[p + i] = i < lold ? dst[start_old + i] : e[old].first;
            }
        } else {
            return ERR_CORRUPT;
        }
        if (table >= LZW_TABLE) return ERR_TABLE;
        /* new entry: the previous string and the first byte of this one, side by side in dst */
        e[table].start = (uint32_t)start_old;
        e[table].length = (uint16_t)(e[old].length + 1);
        e[table].first = e[old].first;
        table++;
        start_old = p;
        p += n;
        old = (int32_t)code;
        if (table >= 511) { /* early change, as libtiff: one entry before the width is full */
            if (table == 511)
                width = 10;
            else if (table == 1023)
                width = 11;
            else if (table == 2047)
                width = 12;
        }
    }
    return p;
}

/* Undo TIFF's horizontal predictor (Predictor = 2) on 8-bit samples: each sample was stored
   less the same sample of the pixel to its left. RGB gets running sums in registers (the
   generic loop's store-to-load chain cost 2.5x as much). */
static void undo_predictor(uint8_t *buf, Py_ssize_t rows, Py_ssize_t width, Py_ssize_t samples) {
    const Py_ssize_t stride = width * samples;
    for (Py_ssize_t y = 0; y < rows; y++) {
        uint8_t *row = buf + y * stride;
        if (samples == 3) {
            uint8_t r = row[0], g = row[1], b = row[2];
            for (Py_ssize_t i = 3; i < stride; i += 3) {
                row[i] = r = (uint8_t)(r + row[i]);
                row[i + 1] = g = (uint8_t)(g + row[i + 1]);
                row[i + 2] = b = (uint8_t)(b + row[i + 2]);
            }
        } else {
            for (Py_ssize_t i = samples; i < stride; i++) row[i] = (uint8_t)(row[i] + row[i - samples]);
        }
    }
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    Py_ssize_t width = 0, samples = 0;
    int predictor = 0;
    if (!PyArg_ParseTuple(args, "y*w*|nnp:decode", &src, &dst, &width, &samples, &predictor))
        return NULL;
    Py_ssize_t got;
    PyObject *result = NULL;
    if (predictor && (width <= 0 || samples <= 0 || width > PY_SSIZE_T_MAX / samples ||
                      dst.len % (width * samples) != 0)) {
        PyErr_SetString(PyExc_ValueError, "predictor: dst is not whole rows of width x samples");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    got = lzw_decode((const uint8_t *)src.buf, src.len, (uint8_t *)dst.buf, dst.len);
    if (got == dst.len && predictor)
        undo_predictor((uint8_t *)dst.buf, dst.len / (width * samples), width, samples);
    Py_END_ALLOW_THREADS
    if (got == ERR_CORRUPT)
        PyErr_SetString(PyExc_ValueError, "LZW stream is corrupt (a code outside the table)");
    else if (got == ERR_TABLE)
        PyErr_SetString(PyExc_ValueError, "LZW stream is corrupt (table full without CLEAR)");
    else if (got == ERR_SIZE)
        PyErr_SetString(PyExc_ValueError, "LZW output of 4 GiB or more is not supported");
    else
        result = PyLong_FromSsize_t(got);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", py_decode, METH_VARARGS,
     "decode(src, dst, width=0, samples=0, predictor=False) -> int\n\n"
     "Decode the TIFF LZW stream `src` (new style, MSB first) into the writable contiguous "
     "buffer `dst` and return the number of bytes written (fewer than len(dst) when the stream "
     "ends early). With `predictor`, a completely filled `dst` of rows of `width` pixels of "
     "`samples` 8-bit samples has TIFF's horizontal predictor undone. ValueError for a corrupt "
     "stream. Releases the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lzw", "TIFF LZW tile decoder (see mint/data/_lzw.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__lzw(void) { return PyModule_Create(&module); }

/* safetensors.h - reading (mmap, zero-copy) and writing safetensors model files.
 *
 * Format: an 8-byte little-endian u64 N, then N bytes of a JSON object (the header), then the
 * data area. Each header key except "__metadata__" names a tensor:
 *   {"dtype": "F32", "shape": [3, 4], "data_offsets": [BEGIN, END]}
 * with BEGIN/END byte offsets relative to the start of the data area, little-endian values,
 * row-major. "__metadata__", if present, is an object of string values.
 *
 * Every function that can fail returns 0 / -1 and fills a qs_err whose message names the file
 * and, where there is one, the tensor. */
#ifndef QSCOPE_SAFETENSORS_H
#define QSCOPE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

enum qs_dtype {
    QS_DT_F32,
    QS_DT_F16,
    QS_DT_BF16,
    QS_DT_F64,
    QS_DT_I64,
    QS_DT_I32,
    QS_DT_I16,
    QS_DT_I8,
    QS_DT_U8,
    QS_DT_BOOL,
};
#define QS_DT_COUNT (QS_DT_BOOL + 1)

/* Bytes per element (BOOL is 1); 0 for an out-of-range value. */
size_t qs_dtype_size(enum qs_dtype t);
/* "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL" (the spec's names);
 * "?" for an out-of-range value. */
const char *qs_dtype_name(enum qs_dtype t);
/* Looks up a spec name (case-sensitive). Returns 0 and sets *t, or -1 if unknown. */
int qs_dtype_from_name(const char *name, enum qs_dtype *t);

#define QS_ST_MAXDIM 8

struct qs_st_tensor {
    char *name;
    enum qs_dtype dtype;
    int ndim;                    /* 0 for a scalar (numel 1) */
    int64_t shape[QS_ST_MAXDIM]; /* shape[ndim..] are 0 */
    int64_t numel;
    const void *data; /* points into the mapping (read-only, maybe unaligned) */
    size_t nbytes;    /* numel * qs_dtype_size(dtype) */
};

/* Opaque: the mapping, the tensors (sorted by data offset) and the __metadata__ pairs. */
struct qs_st_file;

/* Maps PATH read-only and validates everything: size >= 8; header length within the file (and at
 * most 100 MB); the header a JSON object; each tensor entry with a known dtype, a shape of at
 * most 8 non-negative integer dims, data_offsets [begin, end] with begin <= end <= size of the
 * data area and end - begin == numel * dtype size; no two tensors sharing a byte; no duplicate
 * names; __metadata__ (optional) an object of strings. Bytes not covered by any tensor are
 * allowed. On success *out owns the mapping (free with qs_st_close); on failure *out is NULL and
 * e says e.g. "m.safetensors: tensor '0.weight': shape [3,4] needs 48 bytes but data_offsets
 * span 40". */
int qs_st_open(const char *path, struct qs_st_file **out, qs_err *e);

/* Whether the file behind f's mapping is still the one that was mapped: same device, inode,
 * size, mtime and ctime (to the nanosecond), and no read of the mapping faulted. 0 if so (and
 * for an in-memory file); -1 with "PATH changed on disk since it was loaded; load it again"
 * otherwise. Call it before each use of tensors that point into the mapping. */
int qs_st_check(const struct qs_st_file *f, qs_err *e);

/* Runs fn(u, e) with reads of every qs_st_open mapping guarded: a read of a page that vanished
 * (the file was truncated meanwhile) makes it return -1 with "PATH changed on disk since it was
 * loaded; load it again" instead of raising SIGBUS (per thread: guards nest, and each thread has
 * its own). A fault in a thread running unguarded reads zeros and still makes the guard running
 * at that time fail. fn must not hold locks or half-built state that a jump out of it would
 * strand: what it allocated may leak, and the file is marked broken (qs_st_check refuses it). */
int qs_st_guard(int (*fn)(void *u, qs_err *e), void *u, qs_err *e);

/* The same validation on an in-memory buffer, without copying: buf must outlive *out. LABEL
 * (NULL -> "<memory>") stands for the file name in messages and in qs_st_path. */
int qs_st_open_mem(const void *buf, size_t len, const char *label, struct qs_st_file **out,
                   qs_err *e);

/* Unmaps and frees; NULL is fine. Tensor pointers obtained from f are invalid afterwards. */
void qs_st_close(struct qs_st_file *f);

int qs_st_count(const struct qs_st_file *f);
/* Tensor i (0 <= i < count) in file order of data offsets (ties: header order); NULL if out of
 * range. Owned by f. */
const struct qs_st_tensor *qs_st_get(const struct qs_st_file *f, int i);
/* Tensor by exact name, or NULL. O(log n). */
const struct qs_st_tensor *qs_st_find(const struct qs_st_file *f, const char *name);

/* __metadata__ value for KEY, or NULL (first one if the header repeats a key). Owned by f. */
const char *qs_st_meta(const struct qs_st_file *f, const char *key);
int qs_st_meta_count(const struct qs_st_file *f);
/* Key / value of metadata pair i in header order; NULL if out of range. */
const char *qs_st_meta_key(const struct qs_st_file *f, int i);
const char *qs_st_meta_value(const struct qs_st_file *f, int i);
/* The path (or label) the file was opened with. */
const char *qs_st_path(const struct qs_st_file *f);

/* out: (numel) floats. Converts any dtype but BOOL (F16/BF16 exactly, F64 and integers by C
 * conversion to the nearest float); the data may be unaligned. Error (naming the tensor, not the
 * file: prefix it with qs_err_prefix) for BOOL. */
int qs_st_to_f32(const struct qs_st_tensor *t, float *out, qs_err *e);

/* Zero-copy view of an F32 tensor whose data is 4-byte aligned; NULL otherwise (then use
 * qs_st_to_f32). Valid until the file is closed. */
const float *qs_st_f32_view(const struct qs_st_tensor *t);
/* Drops the resident pages of t's bytes from the mapping of f (madvise DONTNEED): a loader that
 * has converted t to its own F32 copy calls it so that the file's pages do not stay in the
 * process's memory beside the copy (a BF16 model would otherwise peak at its F32 weights plus
 * the whole file). The bytes stay readable: a later access reads them from the file again. No
 * effect on a file opened from memory. */
void qs_st_release(const struct qs_st_file *f, const struct qs_st_tensor *t);
/* The same for the n bytes at p (within f's mapping; the pages they touch, whole). */
void qs_st_release_bytes(const struct qs_st_file *f, const void *p, size_t n);

/* 1 if every element is finite (always for integer and BOOL tensors); otherwise 0 and, if
 * bad_index is non-NULL, the flat index of the first NaN/Inf. */
int qs_st_check_finite(const struct qs_st_tensor *t, int64_t *bad_index);

/* One tensor to write: data holds numel elements of dtype, little-endian, row-major. */
struct qs_st_out {
    const char *name;
    enum qs_dtype dtype;
    int ndim;
    int64_t shape[QS_ST_MAXDIM];
    const void *data;
};

/* Writes the n tensors (each in its own dtype, laid out contiguously in the given order) and
 * nmeta __metadata__ string pairs (nmeta may be 0, the arrays then NULL) to PATH through
 * qs_outfile: a regular file (or a new one) is written to a temporary, fsync'ed and renamed over
 * PATH; a device (/dev/null) is written in place and never replaced; every write error, ENOSPC
 * included, is reported and leaves no partial file. The header is padded with
 * spaces to a multiple of 8 bytes, so the data area starts 8-aligned; a tensor is aligned to its
 * element size if those before it keep it so (put wider dtypes first). Rejects NULL/duplicate/
 * "__metadata__" names, bad dtypes, ndim outside 0..8, negative dims. */
int qs_st_write(const char *path, const struct qs_st_out *t, int n, const char *const *meta_keys,
                const char *const *meta_vals, int nmeta, qs_err *e);

#endif

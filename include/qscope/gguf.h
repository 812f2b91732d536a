/* gguf.h - reading llama.cpp's GGUF model files (versions 2 and 3; mmap, zero-copy).
 *
 * Layout (all little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value count; the
 * key/value pairs (key: u64 length + bytes; u32 value type; the value: a scalar, a string
 * (u64 length + bytes) or an array (u32 element type, u64 count, the elements; no nested
 * arrays)); the tensor infos (name string, u32 n_dims (1..4), n_dims u64 dims fastest-varying
 * first, u32 ggml type, u64 offset); padding to the alignment (general.alignment, a u32 power of
 * two, default 32); the data area, where each tensor starts at its offset (a multiple of the
 * alignment) and takes ne[0]/block * type size * ne[1] * ... bytes (ggml.h).
 *
 * Every failing function returns -1 and fills a qs_err whose message names the file and, where
 * there is one, the key or tensor. */
#ifndef QSCOPE_GGUF_H
#define QSCOPE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "qscope/common.h"

enum qs_gguf_vtype {
    QS_GGUF_U8 = 0,
    QS_GGUF_I8 = 1,
    QS_GGUF_U16 = 2,
    QS_GGUF_I16 = 3,
    QS_GGUF_U32 = 4,
    QS_GGUF_I32 = 5,
    QS_GGUF_F32 = 6,
    QS_GGUF_BOOL = 7,
    QS_GGUF_STRING = 8,
    QS_GGUF_ARRAY = 9,
    QS_GGUF_U64 = 10,
    QS_GGUF_I64 = 11,
    QS_GGUF_F64 = 12,
};
#define QS_GGUF_NVTYPES 13
#define QS_GGUF_MAXDIM 4
#define QS_GGUF_MAXNAME 63 /* ggml's GGML_MAX_NAME - 1 */

struct qs_gguf_tensor {
    char *name;
    int type; /* ggml type number (enum qs_ggml_type) */
    int ndim;
    int64_t ne[QS_GGUF_MAXDIM]; /* ne[0] fastest varying; ne[ndim..] = 1 */
    int64_t numel;
    uint64_t offset;  /* in the data area */
    const void *data; /* into the mapping (read only, aligned to the file's alignment) */
    size_t nbytes;
};

struct qs_gguf_file;

/* Maps PATH read-only and validates everything: the magic, version 2 or 3, the counts against
 * the bytes that remain, every string and array length, key types (known, no nested arrays,
 * bools 0 or 1), no duplicate keys or tensor names, non-empty names (tensor names at most 63
 * bytes), general.alignment (if present: a u32 power of two), n_dims 1..4, every dim >= 1 and
 * the element count within int64, ne[0] a multiple of the type's block, a known ggml type, each
 * offset a multiple of the alignment, the data inside the file, no two tensors sharing a byte.
 * Unknown or unsupported ggml types are refused by qs_gguf_to_f32, not here, when their sizes
 * are known (IQ types, TQ, MXFP4...); type numbers ggml never assigned are refused here. */
int qs_gguf_open(const char *path, struct qs_gguf_file **out, qs_err *e);
/* The same on a buffer (not copied; it must outlive *out). LABEL names it in messages. */
int qs_gguf_open_mem(const void *buf, size_t len, const char *label, struct qs_gguf_file **out,
                     qs_err *e);
/* NULL is fine. */
void qs_gguf_close(struct qs_gguf_file *f);

/* 0 while the mapped file is still the one opened (device, inode, size, mtimes), else -1 with
 * "PATH changed on disk since it was loaded; load it again". Always 0 for a buffer. */
int qs_gguf_check(const struct qs_gguf_file *f, qs_err *e);

const char *qs_gguf_path(const struct qs_gguf_file *f);
int qs_gguf_version(const struct qs_gguf_file *f);
uint32_t qs_gguf_alignment(const struct qs_gguf_file *f);

int qs_gguf_count(const struct qs_gguf_file *f);
/* Tensor i in file order of the tensor infos; NULL out of range. */
const struct qs_gguf_tensor *qs_gguf_get(const struct qs_gguf_file *f, int i);
const struct qs_gguf_tensor *qs_gguf_find(const struct qs_gguf_file *f, const char *name);

int qs_gguf_kv_count(const struct qs_gguf_file *f);
const char *qs_gguf_kv_key(const struct qs_gguf_file *f, int i);
/* Index of KEY, or -1. */
int qs_gguf_kv_find(const struct qs_gguf_file *f, const char *key);
/* Value type of pair i (enum qs_gguf_vtype); for arrays also the element type and count. */
int qs_gguf_kv_type(const struct qs_gguf_file *f, int i, int *arr_type, uint64_t *arr_n);

/* Typed getters: 1 and *out when KEY is present with a fitting type, 0 when absent, -1 with
 * "PATH: key 'K' is a string, not an integer" otherwise. Integers: any integer type (a u64 above
 * INT64_MAX is refused); floats: F32 or F64 (or an integer); strings: owned by f, NUL-terminated
 * (an embedded NUL ends the C string). */
int qs_gguf_get_int(const struct qs_gguf_file *f, const char *key, int64_t *out, qs_err *e);
int qs_gguf_get_float(const struct qs_gguf_file *f, const char *key, double *out, qs_err *e);
int qs_gguf_get_str(const struct qs_gguf_file *f, const char *key, const char **out, qs_err *e);

/* ggml name of a type number for messages ("q4_K", "iq2_xxs", "type 77"). Static or buf. */
const char *qs_gguf_type_name(int type, char *buf, size_t n);

/* Decodes the whole tensor into out (numel floats): F32, F16, BF16 exactly, the block types
 * with ggml's dequantization (bit for bit). Other types (IQ*, TQ*, Q8_1, Q8_K, MXFP4, NVFP4,
 * Q1_0, Q2_0, the integer types, F64) are refused with a message naming the type and listing
 * the supported ones. Error messages name the tensor, not the file. */
int qs_gguf_to_f32(const struct qs_gguf_tensor *t, float *out, qs_err *e);

/* ---- writing ---------------------------------------------------------------------------- */

/* One key/value pair to write: type QS_GGUF_U32, QS_GGUF_F32 or QS_GGUF_STRING. */
struct qs_gguf_kv_out {
    const char *key;
    int type;
    uint32_t u32;
    float f32;
    const char *str;
};
/* One tensor to write: nbytes of ggml type `type` with dims ne[0..ndim) (fastest first). */
struct qs_gguf_tensor_out {
    const char *name;
    int type;
    int ndim;
    int64_t ne[QS_GGUF_MAXDIM];
    const void *data;
    size_t nbytes;
};
/* Writes a GGUF v3 file to PATH through qs_outfile (a temporary renamed into place; every write
 * error reported; no partial file left), alignment 32, tensors in the given order. Checks
 * names, types, sizes (nbytes must match the type's block layout) and duplicates first. */
int qs_gguf_write(const char *path, const struct qs_gguf_kv_out *kv, int nkv,
                  const struct qs_gguf_tensor_out *t, int nt, qs_err *e);

#endif

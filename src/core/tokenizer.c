/* tokenizer.c - Hugging Face tokenizer.json BPE: byte-level (GPT-2, LLaMA-3, Qwen2) and
 * SentencePiece-style (LLaMA-2, TinyLlama), in the order `tokenizers` applies its steps: added
 * tokens, normalizer, pre-tokenizer, BPE model.
 *
 * Split patterns are compiled with Oniguruma: it is the engine Hugging Face `tokenizers` uses
 * (through the onig crate), so a model's own pattern (\p{L}, \p{N}, \s, (?i:...), lookahead)
 * splits exactly as it does there, for patterns we have not seen too; a hand-written splitter
 * would need Unicode category tables of its own and one code path per model family. NFC comes
 * from utf8proc for the same reason (Unicode composition tables). Both are small Debian
 * libraries (libonig-dev, libutf8proc-dev). */
#include "qscope/tokenizer.h"

#include <cjson/cJSON.h>
#include <oniguruma.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

/* ---- string -> id hash map (open addressing, keys are owned copies) ---------------------- */

struct strmap {
    char **key;
    size_t *klen;
    uint32_t *val;
    size_t cap, n;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void strmap_free(struct strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->key[i]);
    free(m->key);
    free(m->klen);
    free(m->val);
}

static int strmap_init(struct strmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n + 16)
        cap *= 2;
    m->cap = cap;
    m->n = 0;
    m->key = calloc(cap, sizeof *m->key);
    m->klen = calloc(cap, sizeof *m->klen);
    m->val = calloc(cap, sizeof *m->val);
    return m->key && m->klen && m->val ? 0 : -1;
}

/* Index of s in m, or of the empty slot where it would go. */
static size_t strmap_slot(const struct strmap *m, const char *s, size_t n)
{
    size_t i = (size_t)hash_bytes(s, n) & (m->cap - 1);
    while (m->key[i] && !(m->klen[i] == n && !memcmp(m->key[i], s, n)))
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* 1 and *v when present. */
static int strmap_get(const struct strmap *m, const char *s, size_t n, uint32_t *v)
{
    size_t i = strmap_slot(m, s, n);
    if (!m->key[i])
        return 0;
    *v = m->val[i];
    return 1;
}

/* The map is sized at init for every key it will hold; a duplicate keeps the first id. */
static int strmap_put(struct strmap *m, const char *s, size_t n, uint32_t v)
{
    size_t i = strmap_slot(m, s, n);
    if (m->key[i])
        return 0;
    if (2 * (m->n + 1) > m->cap)
        return -1;
    if (!(m->key[i] = malloc(n + 1)))
        return -1;
    memcpy(m->key[i], s, n);
    m->key[i][n] = 0;
    m->klen[i] = n;
    m->val[i] = v;
    m->n++;
    return 0;
}

/* ---- (left id, right id) -> (rank, merged id) ------------------------------------------- */

struct pairmap {
    uint64_t *key; /* left << 32 | right, plus 1 so that 0 marks an empty slot */
    uint32_t *rank, *id;
    size_t cap;
};

static size_t pair_slot(const struct pairmap *m, uint64_t k)
{
    size_t i = (size_t)((k * 0x9e3779b97f4a7c15ull) >> 20) & (m->cap - 1);
    while (m->key[i] && m->key[i] != k)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int pair_get(const struct pairmap *m, uint32_t a, uint32_t b, uint32_t *rank, uint32_t *id)
{
    if (!m->cap)
        return 0;
    size_t i = pair_slot(m, ((uint64_t)a << 32 | b) + 1);
    if (!m->key[i])
        return 0;
    *rank = m->rank[i];
    *id = m->id[i];
    return 1;
}

/* ---- the tokenizer ------------------------------------------------------------------------ */

enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE };
enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { META_ALWAYS, META_FIRST, META_NEVER };

struct norm {
    int type;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b */
};

struct pre {
    int type;
    OnigRegex re;      /* SPLIT, BYTELEVEL with use_regex */
    int removed;       /* SPLIT: behavior Removed (else Isolated) */
    int prefix_space;  /* BYTELEVEL: add_prefix_space */
    char repl[8];      /* METASPACE: the replacement (UTF-8) */
    int scheme, split; /* METASPACE */
};

struct added {
    char *s;
    size_t len;
    uint32_t id;
};

struct qs_tokenizer {
    struct strmap vocab;
    struct pairmap merges;
    int vocab_n;
    int byte_level, byte_fallback, ignore_merges, fuse_unk, sp;
    int64_t unk;          /* -1: none */
    int64_t byte_id[256]; /* byte-level: the token of the byte's mapped character; else <0xNN> */
    struct norm *norm;
    int nnorm;
    struct pre *pre;
    int npre;
    struct added *added;
    int nadded;
};

/* GPT-2's split pattern (ByteLevel with use_regex). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static pthread_once_t onig_once = PTHREAD_ONCE_INIT;
static void qs_onig_init(void)
{
    OnigEncoding enc = ONIG_ENCODING_UTF8;
    onig_initialize(&enc, 1);
}

void qs_tokenizer_free(struct qs_tokenizer *t)
{
    if (!t)
        return;
    strmap_free(&t->vocab);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.id);
    for (int i = 0; i < t->nnorm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    free(t->norm);
    for (int i = 0; i < t->npre; i++)
        if (t->pre[i].re)
            onig_free(t->pre[i].re);
    free(t->pre);
    for (int i = 0; i < t->nadded; i++)
        free(t->added[i].s);
    free(t->added);
    free(t);
}

const char *qs_tokenizer_kind(const struct qs_tokenizer *t)
{
    return t->byte_level ? "byte-level BPE" : t->sp ? "SentencePiece BPE" : "BPE";
}

int qs_tokenizer_vocab(const struct qs_tokenizer *t)
{
    return t->vocab_n;
}

/* UTF-8 encoding of code point c into b (at most 4 bytes); its length. */
static int utf8_put(uint32_t c, char *b)
{
    if (c < 0x80) {
        b[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        b[0] = (char)(0xc0 | c >> 6);
        b[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        b[0] = (char)(0xe0 | c >> 12);
        b[1] = (char)(0x80 | (c >> 6 & 0x3f));
        b[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    b[0] = (char)(0xf0 | c >> 18);
    b[1] = (char)(0x80 | (c >> 12 & 0x3f));
    b[2] = (char)(0x80 | (c >> 6 & 0x3f));
    b[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * for U+0100 onwards in byte order. */
static uint32_t byte_char(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return (uint32_t)b;
    int k = 0;
    for (int i = 0; i < b; i++)
        if (!((i >= '!' && i <= '~') || (i >= 0xa1 && i <= 0xac) || (i >= 0xae && i <= 0xff)))
            k++;
    return 256u + (uint32_t)k;
}

/* Length of the UTF-8 sequence starting at s[0] (1 for a stray byte); n bytes remain. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t l = s[0] < 0x80         ? 1
               : (s[0] >> 5) == 6  ? 2
               : (s[0] >> 4) == 14 ? 3
               : (s[0] >> 3) == 30 ? 4
                                   : 1;
    if (l > n)
        return 1;
    for (size_t i = 1; i < l; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 1;
    return l;
}

static const char *json_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_bool(const cJSON *o, const char *k, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int compile(const char *path, const char *pat, OnigRegex *re, qs_err *e)
{
    OnigErrorInfo ei;
    int r = onig_new(re, (const OnigUChar *)pat, (const OnigUChar *)pat + strlen(pat),
                     ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &ei);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &ei);
        *re = NULL;
        return qs_errf(e, "%s: split pattern does not compile: %s", path, (const char *)msg);
    }
    return 0;
}

/* Appends the normalizer N (an object, or a Sequence of them) to t. */
static int add_norm(struct qs_tokenizer *t, const cJSON *n, const char *path, qs_err *e)
{
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *type = json_str(n, "type");
    if (!type)
        return qs_errf(e, "%s: normalizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
        {
            if (add_norm(t, it, path, e) < 0)
                return -1;
        }
        return 0;
    }
    struct norm nn = {0};
    if (!strcmp(type, "NFC")) {
        nn.type = NORM_NFC;
    } else if (!strcmp(type, "Prepend")) {
        const char *p = json_str(n, "prepend");
        if (!p)
            return qs_errf(e, "%s: Prepend normalizer without 'prepend'", path);
        nn.type = NORM_PREPEND;
        nn.a = qs_strdup(p);
    } else if (!strcmp(type, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *a = json_str(pat, "String"), *b = json_str(n, "content");
        if (!a || !b || !*a)
            return qs_errf(e,
                           "%s: Replace normalizer: only a non-empty String pattern and a "
                           "content are supported",
                           path);
        nn.type = NORM_REPLACE;
        nn.a = qs_strdup(a);
        nn.b = qs_strdup(b);
        if (!strcmp(a, " ") && !strcmp(b, "\xe2\x96\x81"))
            t->sp = 1;
    } else {
        return qs_errf(e, "%s: normalizer %s is not supported (NFC, Prepend, Replace, Sequence)",
                       path, type);
    }
    struct norm *g = realloc(t->norm, (size_t)(t->nnorm + 1) * sizeof *g);
    if (!g || (nn.type == NORM_PREPEND && !nn.a) || (nn.type == NORM_REPLACE && (!nn.a || !nn.b))) {
        if (g)
            t->norm = g;
        free(nn.a);
        free(nn.b);
        return qs_errf(e, "%s: out of memory", path);
    }
    t->norm = g;
    t->norm[t->nnorm++] = nn;
    return 0;
}

static int add_pre(struct qs_tokenizer *t, const cJSON *p, const char *path, qs_err *e)
{
    if (!p || cJSON_IsNull(p))
        return 0;
    const char *type = json_str(p, "type");
    if (!type)
        return qs_errf(e, "%s: pre_tokenizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"))
        {
            if (add_pre(t, it, path, e) < 0)
                return -1;
        }
        return 0;
    }
    struct pre pp = {0};
    if (!strcmp(type, "ByteLevel")) {
        pp.type = PRE_BYTELEVEL;
        pp.prefix_space = json_bool(p, "add_prefix_space", 1);
        if (json_bool(p, "use_regex", 1) && compile(path, GPT2_PATTERN, &pp.re, e) < 0)
            return -1;
        t->byte_level = 1;
    } else if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *rx = json_str(pat, "Regex"), *str = json_str(pat, "String");
        const char *beh = json_str(p, "behavior");
        if (json_bool(p, "invert", 0))
            return qs_errf(e, "%s: Split with invert is not supported", path);
        if (!beh || (strcmp(beh, "Isolated") && strcmp(beh, "Removed")))
            return qs_errf(e, "%s: Split behavior %s is not supported (Isolated, Removed)", path,
                           beh ? beh : "(none)");
        pp.type = PRE_SPLIT;
        pp.removed = !strcmp(beh, "Removed");
        if (rx) {
            if (compile(path, rx, &pp.re, e) < 0)
                return -1;
        } else if (str && *str) { /* a literal: escape it into a pattern */
            size_t L = strlen(str);
            char *q = malloc(2 * L + 1), *o = q;
            if (!q)
                return qs_errf(e, "%s: out of memory", path);
            for (size_t i = 0; i < L; i++) {
                if (strchr("\\^$.|?*+()[]{}", str[i]))
                    *o++ = '\\';
                *o++ = str[i];
            }
            *o = 0;
            int rc = compile(path, q, &pp.re, e);
            free(q);
            if (rc < 0)
                return -1;
        } else {
            return qs_errf(e, "%s: Split without a Regex or String pattern", path);
        }
    } else if (!strcmp(type, "Digits")) { /* Rust's char::is_numeric is \p{N} */
        pp.type = PRE_SPLIT;
        const char *dp = json_bool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+";
        if (compile(path, dp, &pp.re, e) < 0)
            return -1;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = json_str(p, "replacement"), *sch = json_str(p, "prepend_scheme");
        pp.type = PRE_METASPACE;
        snprintf(pp.repl, sizeof pp.repl, "%s", r ? r : "\xe2\x96\x81");
        pp.split = json_bool(p, "split", 1);
        pp.scheme = !sch ? (json_bool(p, "add_prefix_space", 1) ? META_ALWAYS : META_NEVER)
                    : !strcmp(sch, "first") ? META_FIRST
                    : !strcmp(sch, "never") ? META_NEVER
                                            : META_ALWAYS;
        t->sp = 1;
    } else {
        return qs_errf(e,
                       "%s: pre_tokenizer %s is not supported (ByteLevel, Split, Digits, "
                       "Metaspace, Sequence)",
                       path, type);
    }
    struct pre *g = realloc(t->pre, (size_t)(t->npre + 1) * sizeof *g);
    if (!g) {
        if (pp.re)
            onig_free(pp.re);
        return qs_errf(e, "%s: out of memory", path);
    }
    t->pre = g;
    t->pre[t->npre++] = pp;
    return 0;
}

/* The BPE model: vocab, merges, byte tables. */
static int load_model(struct qs_tokenizer *t, const cJSON *m, const char *path, qs_err *e)
{
    const char *type = json_str(m, "type");
    if (!type || strcmp(type, "BPE"))
        return qs_errf(e, "%s: model type %s is not supported (BPE only)", path,
                       type ? type : "(none)");
    const cJSON *voc = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *mer = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsObject(voc) || !cJSON_IsArray(mer))
        return qs_errf(e, "%s: BPE model without a vocab object and a merges array", path);
    int nv = cJSON_GetArraySize(voc), nm = cJSON_GetArraySize(mer);
    if (strmap_init(&t->vocab, (size_t)nv + 1024) < 0)
        return qs_errf(e, "%s: out of memory", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, voc)
    {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= 1 << 30)
            return qs_errf(e, "%s: vocab entry with a bad id", path);
        uint32_t id = (uint32_t)it->valuedouble;
        if (strmap_put(&t->vocab, it->string, strlen(it->string), id) < 0)
            return qs_errf(e, "%s: out of memory", path);
        if ((int)id + 1 > t->vocab_n)
            t->vocab_n = (int)id + 1;
    }
    t->byte_fallback = json_bool(m, "byte_fallback", 0);
    t->ignore_merges = json_bool(m, "ignore_merges", 0);
    t->fuse_unk = json_bool(m, "fuse_unk", 0);
    if (t->byte_fallback)
        t->sp = 1;
    t->unk = -1;
    const char *unk = json_str(m, "unk_token");
    uint32_t v;
    if (unk && strmap_get(&t->vocab, unk, strlen(unk), &v))
        t->unk = v;
    size_t cap = 16;
    while (cap < 2 * (size_t)nm + 16)
        cap *= 2;
    t->merges.cap = cap;
    t->merges.key = calloc(cap, sizeof *t->merges.key);
    t->merges.rank = calloc(cap, sizeof *t->merges.rank);
    t->merges.id = calloc(cap, sizeof *t->merges.id);
    if (!t->merges.key || !t->merges.rank || !t->merges.id)
        return qs_errf(e, "%s: out of memory", path);
    uint32_t rank = 0;
    cJSON_ArrayForEach(it, mer)
    {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(it)) { /* "a b": the split is at the first space after the first char */
            const char *s = it->valuestring, *sp = strchr(s + (*s ? 1 : 0), ' ');
            if (!sp)
                return qs_errf(e, "%s: merge %u ('%.40s') has no space", path, rank, s);
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else {
            return qs_errf(e, "%s: merge %u is neither \"a b\" nor [a, b]", path, rank);
        }
        uint32_t ia, ib, im;
        char *ab = malloc(la + lb + 1);
        if (!ab)
            return qs_errf(e, "%s: out of memory", path);
        memcpy(ab, a, la);
        memcpy(ab + la, b, lb);
        int ok = strmap_get(&t->vocab, a, la, &ia) && strmap_get(&t->vocab, b, lb, &ib) &&
                 strmap_get(&t->vocab, ab, la + lb, &im);
        free(ab);
        if (!ok)
            return qs_errf(e, "%s: merge %u joins tokens that are not in the vocabulary", path,
                           rank);
        uint64_t k = ((uint64_t)ia << 32 | ib) + 1;
        size_t i = pair_slot(&t->merges, k);
        if (!t->merges.key[i]) { /* a repeated pair keeps its first (lowest) rank */
            t->merges.key[i] = k;
            t->merges.rank[i] = rank;
            t->merges.id[i] = im;
        }
        rank++;
    }
    for (int b = 0; b < 256; b++) {
        char s[16];
        int l;
        if (t->byte_level)
            l = utf8_put(byte_char(b), s);
        else
            l = snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_id[b] = strmap_get(&t->vocab, s, (size_t)l, &v) ? (int64_t)v : -1;
    }
    return 0;
}

static int load_added(struct qs_tokenizer *t, const cJSON *arr, const char *path, qs_err *e)
{
    int n = cJSON_GetArraySize(arr);
    if (n <= 0)
        return 0;
    if (!(t->added = calloc((size_t)n, sizeof *t->added)))
        return qs_errf(e, "%s: out of memory", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        const char *c = json_str(it, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!c || !*c || !cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= 1 << 30)
            return qs_errf(e, "%s: added token without content or id", path);
        struct added *a = &t->added[t->nadded];
        if (!(a->s = qs_strdup(c)))
            return qs_errf(e, "%s: out of memory", path);
        a->len = strlen(c);
        a->id = (uint32_t)id->valuedouble;
        t->nadded++;
        if ((int)a->id + 1 > t->vocab_n)
            t->vocab_n = (int)a->id + 1;
    }
    return 0;
}

int qs_tokenizer_load(const char *path, struct qs_tokenizer **out, qs_err *e)
{
    *out = NULL;
    pthread_once(&onig_once, qs_onig_init);
    struct stat st;
    int fd = qs_open_regular(path, "tokenizer", &st, e);
    if (fd < 0)
        return -1;
    size_t sz = (size_t)st.st_size;
    char what[300];
    snprintf(what, sizeof what, "%s: the tokenizer", path);
    /* the text, its parsed tree (several times the text) and the tables */
    size_t need;
    if (qs_size_mul(sz, 8, &need) < 0 || qs_mem_check(need, what, e) < 0) {
        close(fd);
        return -1;
    }
    char *text = malloc(sz + 1);
    size_t got = 0;
    while (text && got < sz) {
        ssize_t r = read(fd, text + got, sz - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!text || got != sz) {
        free(text);
        return qs_errf(e, "%s: %s", path, text ? "read error" : "out of memory");
    }
    text[sz] = 0;
    cJSON *root = cJSON_ParseWithLength(text, sz);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qs_errf(e, "%s: not a JSON object", path);
    }
    struct qs_tokenizer *t = qs_calloc(1, sizeof *t);
    int rc = t ? 0 : qs_errf(e, "%s: out of memory", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!rc && !cJSON_IsObject(model))
        rc = qs_errf(e, "%s: no 'model' object (not a Hugging Face tokenizer.json)", path);
    if (!rc)
        rc = add_norm(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, e);
    if (!rc)
        rc = add_pre(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, e);
    if (!rc)
        rc = load_model(t, model, path, e);
    if (!rc)
        rc = load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path, e);
    cJSON_Delete(root);
    if (rc < 0) {
        qs_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* ---- encoding ----------------------------------------------------------------------------- */

struct ids {
    uint32_t *v;
    size_t n, cap;
};

static int ids_push(struct ids *o, uint32_t id)
{
    if (o->n == o->cap) {
        size_t c = o->cap ? 2 * o->cap : 1024;
        uint32_t *g = realloc(o->v, c * sizeof *g);
        if (!g)
            return -1;
        o->v = g;
        o->cap = c;
    }
    o->v[o->n++] = id;
    return 0;
}

/* A growable byte string. */
struct buf {
    char *s;
    size_t n, cap;
};

static int buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1)
            c *= 2;
        char *g = realloc(b->s, c);
        if (!g)
            return -1;
        b->s = g;
        b->cap = c;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

/* Pre-tokenized pieces: (offset, length) into one buffer. */
struct pieces {
    struct buf text;
    size_t *off, *len;
    size_t n, cap;
};

static int piece_add(struct pieces *p, const char *s, size_t n)
{
    if (!n)
        return 0;
    if (p->n == p->cap) {
        size_t c = p->cap ? 2 * p->cap : 64;
        size_t *o = realloc(p->off, c * sizeof *o);
        if (!o)
            return -1;
        p->off = o;
        size_t *l = realloc(p->len, c * sizeof *l);
        if (!l)
            return -1;
        p->len = l;
        p->cap = c;
    }
    p->off[p->n] = p->text.n;
    p->len[p->n] = n;
    p->n++;
    return buf_add(&p->text, s, n);
}

static void pieces_free(struct pieces *p)
{
    free(p->text.s);
    free(p->off);
    free(p->len);
}

/* Isolated: matches and the text between them are pieces; Removed: only the text between. */
static int split_re(OnigRegex re, int removed, const char *s, size_t n, struct pieces *out)
{
    OnigRegion *rg = onig_region_new();
    if (!rg)
        return -1;
    const OnigUChar *b = (const OnigUChar *)s, *end = b + n;
    size_t pos = 0, last = 0;
    int rc = 0;
    while (pos <= n) {
        int r = onig_search(re, b, end, b + pos, end, rg, ONIG_OPTION_NONE);
        if (r < 0)
            break;
        size_t ms = (size_t)rg->beg[0], me = (size_t)rg->end[0];
        if (me == ms) { /* an empty match splits nothing: step over one character */
            if (ms >= n)
                break;
            pos = ms + utf8_len(b + ms, n - ms);
            continue;
        }
        if (piece_add(out, s + last, ms - last) < 0 ||
            (!removed && piece_add(out, s + ms, me - ms) < 0)) {
            rc = -1;
            break;
        }
        last = pos = me;
    }
    onig_region_free(rg, 1);
    if (!rc && piece_add(out, s + last, n - last) < 0)
        rc = -1;
    return rc;
}

/* Runs one pre-tokenizer over every piece of in; first: the piece starts the whole input. */
static int pre_step(const struct pre *p, const struct pieces *in, int first_seg, struct pieces *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.s + in->off[i];
        size_t n = in->len[i];
        if (p->type == PRE_SPLIT) {
            if (split_re(p->re, p->removed, s, n, out) < 0)
                return -1;
        } else if (p->type == PRE_BYTELEVEL) {
            struct buf tmp = {0};
            if (p->prefix_space && s[0] != ' ') {
                if (buf_add(&tmp, " ", 1) < 0 || buf_add(&tmp, s, n) < 0) {
                    free(tmp.s);
                    return -1;
                }
                s = tmp.s;
                n = tmp.n;
            }
            int rc = p->re ? split_re(p->re, 0, s, n, out) : piece_add(out, s, n);
            free(tmp.s);
            if (rc < 0)
                return -1;
        } else { /* Metaspace: ' ' -> replacement, prefix, split before each replacement */
            struct buf tmp = {0};
            size_t rl = strlen(p->repl);
            int rc = 0;
            int pre = p->scheme == META_ALWAYS || (p->scheme == META_FIRST && first_seg && i == 0);
            if (pre && !(n >= rl && !memcmp(s, p->repl, rl)) && s[0] != ' ')
                rc = buf_add(&tmp, p->repl, rl);
            for (size_t k = 0; k < n && !rc; k++)
                rc = s[k] == ' ' ? buf_add(&tmp, p->repl, rl) : buf_add(&tmp, s + k, 1);
            size_t st = 0;
            for (size_t k = 0; k < tmp.n && !rc; k++)
                if (p->split && k > st && k + rl <= tmp.n && !memcmp(tmp.s + k, p->repl, rl)) {
                    rc = piece_add(out, tmp.s + st, k - st);
                    st = k;
                }
            if (!rc)
                rc = piece_add(out, tmp.s + st, tmp.n - st);
            free(tmp.s);
            if (rc < 0)
                return -1;
        }
    }
    return 0;
}

/* BPE over one piece: symbols merged lowest rank first, leftmost among equals (a binary heap
 * of candidate pairs, re-checked when popped, as `tokenizers` does). */
struct cand {
    uint32_t rank;
    uint32_t pos;
};

static int cand_less(struct cand a, struct cand b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(struct cand *h, size_t *n, struct cand c)
{
    size_t i = (*n)++;
    h[i] = c;
    while (i && cand_less(h[i], h[(i - 1) / 2])) {
        struct cand t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static struct cand heap_pop(struct cand *h, size_t *n)
{
    struct cand top = h[0];
    h[0] = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(h[l], h[m]))
            m = l;
        if (r < *n && cand_less(h[r], h[m]))
            m = r;
        if (m == i)
            break;
        struct cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

static int bpe_piece(const struct qs_tokenizer *t, const char *s, size_t n, struct ids *out,
                     qs_err *e)
{
    uint32_t v;
    /* the piece as the vocabulary spells it (byte-level: each byte as its character) */
    struct buf w = {0};
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++) {
            char c[4];
            int l = utf8_put(byte_char((unsigned char)s[i]), c);
            if (buf_add(&w, c, (size_t)l) < 0) {
                free(w.s);
                return qs_errf(e, "out of memory");
            }
        }
    }
    const char *ws = t->byte_level ? w.s : s;
    size_t wn = t->byte_level ? w.n : n;
    if (t->ignore_merges && strmap_get(&t->vocab, ws, wn, &v)) {
        free(w.s);
        return ids_push(out, v) < 0 ? qs_errf(e, "out of memory") : 0;
    }
    free(w.s);
    /* initial symbols */
    uint32_t *id = malloc((n + 1) * sizeof *id);
    int64_t *nx = malloc((n + 1) * sizeof *nx), *pv = malloc((n + 1) * sizeof *pv);
    struct cand *h = malloc((2 * n + 2) * sizeof *h);
    size_t ns = 0, nh = 0;
    int rc = 0;
    if (!id || !nx || !pv || !h) {
        rc = qs_errf(e, "out of memory");
        goto done;
    }
    int last_unk = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t l = t->byte_level ? 1 : utf8_len(u, n - i);
        int64_t got = -1;
        if (t->byte_level)
            got = t->byte_id[u[0]];
        else if (strmap_get(&t->vocab, s + i, l, &v))
            got = v;
        if (got >= 0) {
            id[ns++] = (uint32_t)got;
            last_unk = 0;
        } else {
            int fb = t->byte_fallback;
            for (size_t k = 0; fb && k < l; k++)
                fb = t->byte_id[u[k]] >= 0;
            if (fb) {
                for (size_t k = 0; k < l; k++)
                    id[ns++] = (uint32_t)t->byte_id[u[k]];
                last_unk = 0;
            } else if (t->unk >= 0) {
                if (!(t->fuse_unk && last_unk))
                    id[ns++] = (uint32_t)t->unk;
                last_unk = 1;
            } else {
                rc =
                    qs_errf(e, "the tokenizer has no token for byte 0x%02x and no unk_token", u[0]);
                goto done;
            }
        }
        i += l;
    }
    for (size_t i = 0; i < ns; i++) {
        nx[i] = i + 1 < ns ? (int64_t)i + 1 : -1;
        pv[i] = (int64_t)i - 1;
    }
    uint32_t rk, mid;
    for (size_t i = 0; i + 1 < ns; i++)
        if (pair_get(&t->merges, id[i], id[i + 1], &rk, &mid))
            heap_push(h, &nh, (struct cand){rk, (uint32_t)i});
    while (nh) {
        struct cand c = heap_pop(h, &nh);
        size_t p = c.pos;
        if (nx[p] == -2 || nx[p] < 0) /* merged away, or the last symbol */
            continue;
        size_t q = (size_t)nx[p];
        if (!pair_get(&t->merges, id[p], id[q], &rk, &mid) || rk != c.rank)
            continue; /* stale: one side changed since this pair was queued */
        id[p] = mid;
        nx[p] = nx[q];
        if (nx[q] >= 0)
            pv[nx[q]] = (int64_t)p;
        nx[q] = -2;
        if (pv[p] >= 0 && pair_get(&t->merges, id[pv[p]], id[p], &rk, &mid))
            heap_push(h, &nh, (struct cand){rk, (uint32_t)pv[p]});
        if (nx[p] >= 0 && pair_get(&t->merges, id[p], id[nx[p]], &rk, &mid))
            heap_push(h, &nh, (struct cand){rk, (uint32_t)p});
    }
    for (size_t i = 0; ns && i != (size_t)-1;) {
        if (ids_push(out, id[i]) < 0) {
            rc = qs_errf(e, "out of memory");
            break;
        }
        i = nx[i] >= 0 ? (size_t)nx[i] : (size_t)-1;
    }
done:
    free(id);
    free(nx);
    free(pv);
    free(h);
    return rc;
}

/* One stretch of text between added tokens: normalize, pre-tokenize, BPE. */
static int encode_segment(const struct qs_tokenizer *t, const char *s, size_t n, int first,
                          struct ids *out, qs_err *e)
{
    struct buf cur = {0};
    if (buf_add(&cur, s, n) < 0)
        return qs_errf(e, "out of memory");
    for (int k = 0; k < t->nnorm; k++) {
        const struct norm *nm = &t->norm[k];
        struct buf nx = {0};
        int rc = 0;
        if (nm->type == NORM_NFC) {
            utf8proc_uint8_t *d = NULL;
            utf8proc_ssize_t l =
                utf8proc_map((const utf8proc_uint8_t *)cur.s, (utf8proc_ssize_t)cur.n, &d,
                             UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (l < 0) {
                free(cur.s);
                return qs_errf(e, "NFC normalizer: %s", utf8proc_errmsg(l));
            }
            rc = buf_add(&nx, (const char *)d, (size_t)l);
            free(d);
        } else if (nm->type == NORM_PREPEND) {
            if (cur.n)
                rc = buf_add(&nx, nm->a, strlen(nm->a)) < 0 || buf_add(&nx, cur.s, cur.n) < 0;
        } else {
            size_t la = strlen(nm->a), lb = strlen(nm->b);
            for (size_t i = 0; i < cur.n && !rc;) {
                if (i + la <= cur.n && !memcmp(cur.s + i, nm->a, la)) {
                    rc = buf_add(&nx, nm->b, lb);
                    i += la;
                } else {
                    rc = buf_add(&nx, cur.s + i, 1);
                    i++;
                }
            }
        }
        free(cur.s);
        if (rc) {
            free(nx.s);
            return qs_errf(e, "out of memory");
        }
        cur = nx;
    }
    struct pieces pc = {0};
    int rc = cur.n && piece_add(&pc, cur.s, cur.n) < 0 ? -1 : 0;
    free(cur.s);
    for (int k = 0; k < t->npre && !rc; k++) {
        struct pieces nx = {0};
        rc = pre_step(&t->pre[k], &pc, first, &nx);
        pieces_free(&pc);
        pc = nx;
    }
    if (rc) {
        pieces_free(&pc);
        return qs_errf(e, "out of memory");
    }
    for (size_t i = 0; i < pc.n && !rc; i++)
        rc = bpe_piece(t, pc.text.s + pc.off[i], pc.len[i], out, e);
    pieces_free(&pc);
    return rc;
}

/* The added token starting at s (longest first), or -1. */
static int added_at(const struct qs_tokenizer *t, const char *s, size_t n)
{
    int best = -1;
    for (int k = 0; k < t->nadded; k++)
        if (t->added[k].len <= n && !memcmp(s, t->added[k].s, t->added[k].len) &&
            (best < 0 || t->added[k].len > t->added[best].len))
            best = k;
    return best;
}

int qs_tokenizer_encode(const struct qs_tokenizer *t, const char *text, size_t len, uint32_t **ids,
                        size_t *n, qs_err *e)
{
    *ids = NULL;
    *n = 0;
    for (size_t i = 0; i < len;) {
        size_t l = utf8_len((const unsigned char *)text + i, len - i);
        if (l == 1 && (unsigned char)text[i] >= 0x80)
            return qs_errf(e, "the text is not UTF-8 (byte 0x%02x at offset %zu)",
                           (unsigned char)text[i], i);
        i += l;
    }
    /* at worst, per byte of text: one id (4 bytes), the normalized and pre-tokenized copies of a
     * segment (a few bytes), and BPE's symbol arrays and pair heap for a piece as long as the
     * segment (SentencePiece-style tokenizers have no pre-tokenizer: 36 bytes) */
    size_t need;
    if (qs_size_mul(len, 48, &need) < 0 || qs_mem_check(need, "tokenizing the text", e) < 0)
        return -1;
    unsigned char first[256] = {0};
    for (int k = 0; k < t->nadded; k++)
        first[(unsigned char)t->added[k].s[0]] = 1;
    struct ids out = {0};
    size_t seg = 0;
    int rc = 0, nseg = 0;
    for (size_t i = 0; i <= len && !rc; i++) {
        int k = i < len && first[(unsigned char)text[i]] ? added_at(t, text + i, len - i) : -1;
        if (k < 0 && i < len)
            continue;
        if (i > seg)
            rc = encode_segment(t, text + seg, i - seg, nseg++ == 0 && seg == 0, &out, e);
        if (!rc && k >= 0) {
            if (ids_push(&out, t->added[k].id) < 0)
                rc = qs_errf(e, "out of memory");
            i += t->added[k].len - 1;
        }
        seg = i + 1;
    }
    if (rc) {
        free(out.v);
        return -1;
    }
    *ids = out.v;
    *n = out.n;
    return 0;
}

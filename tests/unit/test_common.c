/* test_common.c - the shared guards of issue 11: checked sizes, the memory check, refusing
 * non-regular files without blocking, output files that never replace a device node and report
 * every write error, cleaning strings from files before printing. */
#include "qscope/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "test.h"

static void test_size_mul_overflow(void)
{
    size_t r = 1;
    CHECK(qs_size_mul(3, 4, &r) == 0 && r == 12);
    CHECK(qs_size_mul(SIZE_MAX / 2 + 1, 2, &r) < 0 && r == 0);
    CHECK(qs_size_mul3((size_t)300000000, 4 * 768, 768, &r) == 0);
    CHECK(qs_size_mul3(SIZE_MAX / 4, 3, 2, &r) < 0);
    CHECK(qs_size_add(SIZE_MAX, 1, &r) < 0);
    int i = 1;
    CHECK(qs_int_mul(65536, 65536, &i) < 0 && i == 0);
    CHECK(qs_int_mul(-1, 3, &i) < 0);
    CHECK(qs_int_mul(46340, 46340, &i) == 0 && i == 2147395600);
}

static void test_mem_check_names_figure(void)
{
    qs_err e = {{0}};
    CHECK(qs_mem_check(1000, "tiny", &e) == 0); /* small requests always pass */
    setenv("QSCOPE_MEM_LIMIT", "100000000", 1);
    CHECK(qs_mem_available() <= 100000000u);
    CHECK(qs_mem_check((size_t)10 << 30, "quantized weights", &e) < 0);
    CHECK(strstr(e.msg, "quantized weights needs 10.7 GB") != NULL);
    CHECK(strstr(e.msg, "available") != NULL);
    CHECK(qs_alloc((size_t)1 << 40, 16, "cache", &e) == NULL);
    CHECK(strstr(e.msg, "cache") != NULL);
    CHECK(qs_alloc(SIZE_MAX / 2, 4, "cache", &e) == NULL && strstr(e.msg, "overflows"));
    unsetenv("QSCOPE_MEM_LIMIT");
    void *p = qs_alloc(16, 4, "small", &e);
    CHECK(p != NULL);
    free(p);
}

static void tmpdir(char *buf, size_t n)
{
    snprintf(buf, n, "/tmp/qs-test-common.XXXXXX");
    if (!mkdtemp(buf))
        buf[0] = 0;
}

static void test_open_regular_refuses_fifo_and_dir(void)
{
    char d[64], p[128];
    tmpdir(d, sizeof d);
    CHECK(d[0]);
    snprintf(p, sizeof p, "%s/fifo", d);
    CHECK(mkfifo(p, 0600) == 0);
    qs_err e = {{0}};
    /* no writer: a blocking open would hang here forever */
    CHECK(qs_open_regular(p, "model", NULL, &e) < 0);
    CHECK(strstr(e.msg, "not a regular file (a FIFO)") != NULL);
    CHECK(qs_fopen_regular(d, "script", &e) == NULL);
    CHECK(strstr(e.msg, "is a directory, not a script") != NULL);
    unlink(p);
    snprintf(p, sizeof p, "%s/f", d);
    FILE *f = fopen(p, "w");
    fputs("x", f);
    fclose(f);
    struct stat st;
    int fd = qs_open_regular(p, "data", &st, &e);
    CHECK(fd >= 0 && st.st_size == 1);
    CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK));
    close(fd);
    unlink(p);
    rmdir(d);
}

static void test_outfile_regular_and_devices(void)
{
    char d[64], p[128], full[128], null[128];
    tmpdir(d, sizeof d);
    snprintf(p, sizeof p, "%s/out.txt", d);
    qs_err e = {{0}};
    qs_outfile o;
    /* regular: the old content survives an aborted write, a committed one replaces it */
    FILE *f = fopen(p, "w");
    fputs("old", f);
    fclose(f);
    CHECK(qs_out_open(&o, p, &e) == 0);
    fputs("new", o.f);
    qs_out_abort(&o);
    char buf[16] = "";
    f = fopen(p, "r");
    CHECK(f && fgets(buf, sizeof buf, f));
    fclose(f);
    CHECK_STR(buf, "old");
    CHECK(qs_out_open(&o, p, &e) == 0);
    fputs("new", o.f);
    CHECK(qs_out_commit(&o, &e) == 0);
    f = fopen(p, "r");
    CHECK(f && fgets(buf, sizeof buf, f));
    fclose(f);
    CHECK_STR(buf, "new");
    unlink(p);
    /* device nodes (made here, so the real /dev is never touched): written in place, never
     * replaced; a full device's ENOSPC is an error */
    snprintf(full, sizeof full, "%s/full", d);
    snprintf(null, sizeof null, "%s/null", d);
    if (mknod(full, S_IFCHR | 0666, makedev(1, 7)) == 0 &&
        mknod(null, S_IFCHR | 0666, makedev(1, 3)) == 0) {
        CHECK(qs_out_open(&o, full, &e) == 0);
        for (int i = 0; i < 10000; i++)
            fputs("0123456789", o.f);
        CHECK(qs_out_commit(&o, &e) < 0);
        CHECK(strstr(e.msg, "No space left") != NULL);
        struct stat st;
        CHECK(stat(full, &st) == 0 && S_ISCHR(st.st_mode));
        CHECK(qs_out_open(&o, null, &e) == 0);
        fputs("x", o.f);
        CHECK(qs_out_commit(&o, &e) == 0);
        CHECK(stat(null, &st) == 0 && S_ISCHR(st.st_mode));
        unlink(full);
        unlink(null);
    } else {
        fprintf(stderr, "  (mknod not permitted: device-node cases skipped)\n");
    }
    CHECK(qs_out_open(&o, d, &e) < 0 && strstr(e.msg, "is a directory"));
    /* no leftover temporaries */
    CHECK(rmdir(d) == 0);
}

static void test_clean_str(void)
{
    char buf[64];
    CHECK_STR(qs_clean_str("fc\x1b[31mred", buf, sizeof buf, 0), "fc?[31mred");
    CHECK_STR(qs_clean_str("a\xc2\x9b"
                           "2J",
                           buf, sizeof buf, 0),
              "a?2J"); /* C1 CSI */
    CHECK_STR(qs_clean_str("caf\xc3\xa9", buf, sizeof buf, 0), "caf\xc3\xa9");
    CHECK_STR(qs_clean_str("abcdefgh", buf, sizeof buf, 4), "abcd...");
    CHECK_STR(qs_clean_str("line\nbreak\x7f", buf, sizeof buf, 0), "line?break?");
    char small[8];
    qs_clean_str("0123456789", small, sizeof small, 0);
    CHECK(strlen(small) < sizeof small);
}

/* qs_dims_str: shapes in error messages; qs_rel_err: ||x - ref|| / ||ref|| in double. */
static void test_dims_str_and_rel_err(void)
{
    char buf[48];
    const int64_t d[3] = {4096, 32000, -1};
    CHECK_STR(qs_dims_str(d, 2, buf, sizeof buf), "4096,32000");
    CHECK_STR(qs_dims_str(d, 3, buf, sizeof buf), "4096,32000,-1");
    CHECK_STR(qs_dims_str(d, 0, buf, sizeof buf), "");
    const int64_t big[4] = {INT64_MAX, INT64_MIN, 1, 2};
    char small[40];
    qs_dims_str(big, 4, small, sizeof small); /* only whole numbers, never past the buffer */
    CHECK_STR(small, "9223372036854775807");
    const float ref[2] = {3.0f, 4.0f}, x[2] = {3.0f, 4.5f}, zero[2] = {0};
    CHECK(qs_rel_err(ref, x, 2) == sqrt(0.25 / 25.0));
    CHECK(qs_rel_err(zero, x, 2) == 0.0);
}

TEST_MAIN("common", TEST_CASE(test_size_mul_overflow), TEST_CASE(test_mem_check_names_figure),
          TEST_CASE(test_open_regular_refuses_fifo_and_dir),
          TEST_CASE(test_outfile_regular_and_devices), TEST_CASE(test_clean_str),
          TEST_CASE(test_dims_str_and_rel_err))

/* threads.c - row ranges of a job on up to MAX_THREADS threads. Results never depend on the
 * thread count: every row is computed the same way wherever it runs (stochastic rounding draws
 * from a per-row stream). */
#include <pthread.h>
#include <unistd.h>

#include "job_impl.h"

struct thr {
    struct job *J;
    qs_rows_fn fn;
    int r0, r1, tid;
};

static void *thr_main(void *arg)
{
    struct thr *t = arg;
    t->fn(t->J, t->r0, t->r1, t->tid);
    return NULL;
}

static int g_ncpu = 1;
static pthread_once_t g_ncpu_once = PTHREAD_ONCE_INIT;

static void init_ncpu(void)
{
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    g_ncpu = c < 1 ? 1 : c > MAX_THREADS ? MAX_THREADS : (int)c;
}

/* Below 128 Ki elements thread start-up would cost more than it saves. */
int qs_n_threads(size_t work, int rows)
{
    pthread_once(&g_ncpu_once, init_ncpu);
    int ncpu = g_ncpu;
    if (work < ((size_t)1 << 17))
        return 1;
    return rows < ncpu ? (rows < 1 ? 1 : rows) : ncpu;
}

int qs_par_rows(struct job *J, qs_rows_fn fn, int rows, int align, int nt)
{
    struct thr t[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int per = (rows + nt - 1) / nt;
    per = (per + align - 1) / align * align;
    int k = 0;
    for (int i = 0; i < nt; i++) {
        int r0 = i * per, r1 = r0 + per < rows ? r0 + per : rows;
        if (r0 >= rows)
            break;
        t[k] = (struct thr){J, fn, r0, r1, k};
        J->failed[k] = 0;
        k++;
    }
    for (int i = 1; i < k; i++)
        started[i] = pthread_create(&th[i], NULL, thr_main, &t[i]) == 0;
    for (int i = 1; i < k; i++)
        if (!started[i])
            thr_main(&t[i]); /* could not start a thread: do its share here */
    if (k > 0)
        thr_main(&t[0]);
    for (int i = 1; i < k; i++)
        if (started[i])
            pthread_join(th[i], NULL);
    for (int i = 0; i < k; i++)
        if (J->failed[i])
            return i;
    return -1;
}

/* bptt.engine._kernel: the Python face of the compiled kernel (kernel.h), its thread team and
 * the choice of instruction set.
 *
 * Every function takes NumPy arrays (or anything with the buffer protocol: the torch engine
 * hands over its CPU tensors' memory as NumPy views), checks their element type and size, and
 * releases the GIL while it computes. bptt/engine/kernel.py is the only caller: it checks the
 * shapes and decides when the kernel applies.
 *
 * Threads: one team per process, created on first use with as many threads as a call asks
 * for. Waiting is passive after a short spin: a thread that finds no work (or waits at a
 * barrier) spins for at most SPIN_NS, then sleeps on a futex, so a kernel never burns a core
 * that another process could use. A call that finds the team busy (another Python thread is
 * in the kernel) runs on its own thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <mutex>
#include <thread>
#include <vector>

#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include "kernel.h"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BPTT_FUTEX 1
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

namespace bptt_isa_base { const Impl *table(); }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
namespace bptt_isa_avx2 { const Impl *table(); }
namespace bptt_isa_avx512 { const Impl *table(); }
namespace bptt_isa_avx512bf16 { const Impl *table(); }
#endif

static const Impl *IMPL = nullptr;

// -- the thread team -------------------------------------------------------------------------

static long SPIN_NS = 50000;     // spin before sleeping: 50 us (BPTT_SPIN_US)

static long now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void futex_wait(uint32_t *addr, uint32_t expected) {
#ifdef BPTT_FUTEX
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
    (void)addr;
    (void)expected;
    std::this_thread::yield();
#endif
}

static void futex_wake(uint32_t *addr) {
#ifdef BPTT_FUTEX
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, 0x7fffffff, nullptr, nullptr, 0);
#else
    (void)addr;
#endif
}

static uint32_t load(const uint32_t *w) { return __atomic_load_n(w, __ATOMIC_SEQ_CST); }

/* Wait until *word != seen: spin up to SPIN_NS, then sleep. *sleepers counts the sleepers so
 * that a waker makes a system call only when someone sleeps; all sequentially consistent, so
 * a waker either sees the sleeper or the sleeper sees the new word. */
static void wait_change(uint32_t *word, uint32_t seen, int32_t *sleepers) {
    long start = 0;
    for (int i = 0;; i++) {
        if (load(word) != seen) return;
        CPU_RELAX();
        if ((i & 63) == 63) {
            long t = now_ns();
            if (!start) start = t;
            else if (t - start > SPIN_NS) break;
        }
    }
    __atomic_fetch_add(sleepers, 1, __ATOMIC_SEQ_CST);
    while (load(word) == seen) futex_wait(word, seen);
    __atomic_fetch_sub(sleepers, 1, __ATOMIC_SEQ_CST);
}

/* after changing *word */
static void wake(uint32_t *word, int32_t *sleepers) {
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST) > 0) futex_wake(word);
}

struct Team {
    std::mutex busy;
    std::vector<std::thread> workers;   // thread tid = index + 1
    uint32_t job = 0;                   // (jobs so far << 8) | threads of the latest job
    int32_t job_sleepers = 0;
    uint32_t entry = 0;                 // (job & 0xffff) << 16 | CLOSED | workers that entered
    uint32_t finished = 0;              // workers of the latest job that finished it
    int32_t finished_sleepers = 0;
    TaskFn fn = nullptr;                // the latest job's, stable until its workers finish
    void *ctx = nullptr;
};

enum : uint32_t { CLOSED = 0x8000u, MAX_THREADS = 64 };

static Team *TEAM = nullptr;

/* A worker joins a job only when its tid is below the job's thread count (read from the same
 * word as the job's number) and the job is still open: the caller closes it once its own share
 * is done, so a worker that wakes late never delays the caller, and never touches the job's
 * function or context. ``seen`` is the job word when the thread was made. */
static void worker_main(Team *tm, int tid, uint32_t seen) {
    for (;;) {
        wait_change(&tm->job, seen, &tm->job_sleepers);
        seen = load(&tm->job);
        const int nth = (int)(seen & 0xff);
        if (tid >= nth) continue;
        const uint32_t tag = ((seen >> 8) & 0xffffu) << 16;
        uint32_t e = load(&tm->entry);
        bool in = false;
        while ((e & 0xffff0000u) == tag && !(e & CLOSED)) {
            if (__atomic_compare_exchange_n(&tm->entry, &e, e + 1, false, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
                in = true;
                break;
            }
        }
        if (!in) continue;
        tm->fn(tm->ctx, tid, nth);
        __atomic_fetch_add(&tm->finished, 1, __ATOMIC_SEQ_CST);
        wake(&tm->finished, &tm->finished_sleepers);
    }
}

/* fn on up to nth threads; the caller is tid 0. A call that finds the team busy (another
 * Python thread is in the kernel) runs alone. */
static void team_run(int nth, TaskFn fn, void *ctx) {
    Team *tm = TEAM;
    nth = nth < (int)MAX_THREADS ? nth : (int)MAX_THREADS;
    std::unique_lock<std::mutex> lock(tm->busy, std::defer_lock);
    if (nth <= 1 || !lock.try_lock()) {
        fn(ctx, 0, 1);
        return;
    }
    try {
        while ((int)tm->workers.size() < nth - 1)
            tm->workers.emplace_back(worker_main, tm, (int)tm->workers.size() + 1,
                                     load(&tm->job));
    } catch (...) {
        nth = (int)tm->workers.size() + 1;
        if (nth <= 1) {
            fn(ctx, 0, 1);
            return;
        }
    }
    tm->fn = fn;
    tm->ctx = ctx;
    const uint32_t job = ((load(&tm->job) >> 8) + 1) << 8 | (uint32_t)nth;
    __atomic_store_n(&tm->finished, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&tm->entry, ((job >> 8) & 0xffffu) << 16, __ATOMIC_SEQ_CST);
    __atomic_store_n(&tm->job, job, __ATOMIC_SEQ_CST);
    wake(&tm->job, &tm->job_sleepers);
    fn(ctx, 0, nth);
    const uint32_t entered = __atomic_fetch_or(&tm->entry, CLOSED, __ATOMIC_SEQ_CST) & 0x7fffu;
    for (uint32_t f = load(&tm->finished); f < entered; f = load(&tm->finished))
        wait_change(&tm->finished, f, &tm->finished_sleepers);
}

static void run_alone(int, TaskFn fn, void *ctx) { fn(ctx, 0, 1); }

static const TeamOps ALONE = {run_alone, wait_change, wake};
static const TeamOps TEAM_OPS = {team_run, wait_change, wake};

static const TeamOps *team_for(int nth) {
    if (nth <= 1) return &ALONE;
    if (!TEAM) TEAM = new Team();
    return &TEAM_OPS;
}

/* A forked child has none of the parent's threads: it starts a team of its own (the parent's
 * is left as it was, never freed). */
static void forget_team_in_child() { TEAM = nullptr; }

// -- arrays ----------------------------------------------------------------------------------

/* A buffer seen as rows x cols of one element type: the last axis contiguous, the rows evenly
 * spaced (ld elements apart). */
struct Arr {
    Py_buffer view;
    bool held = false;
    char *ptr = nullptr;
    long ld = 0;
    ~Arr() {
        if (held) PyBuffer_Release(&view);
    }
};

static int dtype_of(const Py_buffer &v) {
    if (!v.format) return -1;
    const char *f = v.format;
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (f[0] == 'f' && f[1] == 0 && v.itemsize == 4) return DT_F32;
    if (f[0] == 'd' && f[1] == 0 && v.itemsize == 8) return DT_F64;
    return -1;
}

/* obj as rows x cols of dtype (or None when optional); 0 on success, else a TypeError or
 * ValueError set naming the argument. */
static int get_arr(PyObject *obj, const char *name, int dtype, long rows, long cols, bool writable,
                   bool optional, Arr *out, bool strided = false) {
    if (obj == Py_None) {
        if (optional) return 0;
        PyErr_Format(PyExc_ValueError, "expected an array for %s, got None", name);
        return -1;
    }
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &out->view, flags) < 0) return -1;
    out->held = true;
    Py_buffer &v = out->view;
    if (dtype_of(v) != dtype) {
        PyErr_Format(PyExc_ValueError, "expected %s of %s, got format %s", name,
                     dtype == DT_F32 ? "float32" : "float64", v.format ? v.format : "?");
        return -1;
    }
    const long isz = (long)v.itemsize;
    long r = 1, c = 0, ld = 0;
    bool ok = v.ndim >= 1 && v.strides[v.ndim - 1] == isz;
    if (ok) {
        c = (long)v.shape[v.ndim - 1];
        ld = v.ndim >= 2 ? (long)v.strides[v.ndim - 2] / isz : c;
        for (int d = 0; d + 1 < v.ndim; d++) r *= (long)v.shape[d];
        for (int d = 0; d + 2 < v.ndim && ok; d++)      // rows evenly spaced across axes
            ok = v.strides[d] == v.strides[d + 1] * v.shape[d + 1];
        ok = ok && (v.ndim < 2 || (long)v.strides[v.ndim - 2] % isz == 0);
    }
    if (!ok || r != rows || c != cols) {
        PyErr_Format(PyExc_ValueError, "expected %s as %ld rows of %ld contiguous values, got "
                     "an array of %ld rows of %ld", name, rows, cols, ok ? r : -1, ok ? c : -1);
        return -1;
    }
    out->ptr = (char *)v.buf;
    out->ld = ld;
    if (rows > 1 && ld != cols && !strided) {
        PyErr_Format(PyExc_ValueError, "expected %s C-contiguous", name);
        return -1;
    }
    return 0;
}

// -- packed weights --------------------------------------------------------------------------

static void packed_free(PyObject *cap) {
    Packed *p = (Packed *)PyCapsule_GetPointer(cap, "bptt.packed");
    if (p) {
        free(p->data);
        delete p;
    }
}

static const Packed *get_packed(PyObject *cap) {
    return (const Packed *)PyCapsule_GetPointer(cap, "bptt.packed");
}

/* pack(weight (G*H, H), gates G, direction 0/1, bf16) -> an opaque packed weight */
static PyObject *py_pack(PyObject *, PyObject *args) {
    PyObject *wobj;
    int G, dir, bf16;
    if (!PyArg_ParseTuple(args, "Oiip", &wobj, &G, &dir, &bf16)) return nullptr;
    Py_buffer v;
    if (PyObject_GetBuffer(wobj, &v, PyBUF_STRIDES | PyBUF_FORMAT) < 0) return nullptr;
    int dtype = dtype_of(v);
    bool ok = dtype >= 0 && v.ndim == 2 && G >= 1 && v.shape[0] == G * v.shape[1]
              && PyBuffer_IsContiguous(&v, 'C') && (dir == 0 || dir == 1)
              && !(bf16 && dtype == DT_F64) && v.shape[1] >= 1;
    if (!ok) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "expected a C-contiguous float32 or float64 weight of "
                        "shape (G*H, H) (bf16 with float32 only)");
        return nullptr;
    }
    Packed *p = new Packed();
    memset(p, 0, sizeof *p);
    p->dtype = dtype;
    p->bf16 = bf16;
    p->dir = dir;
    p->G = G;
    p->H = (int)v.shape[1];
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = IMPL->pack(p, v.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    if (rc) {
        delete p;
        return PyErr_NoMemory();
    }
    return PyCapsule_New(p, "bptt.packed", packed_free);
}

// -- cells -----------------------------------------------------------------------------------

static int gates_of(int cell) { return cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1; }

/* forward(cell, packed, T, B, x, h0, hs, c0, cs, tanh_cs, b_hh, s, relu, threads) */
static PyObject *py_forward(PyObject *, PyObject *args) {
    int cell, T, B, relu, threads;
    PyObject *cap, *ox, *oh0, *ohs, *oc0, *ocs, *otc, *obh, *os;
    if (!PyArg_ParseTuple(args, "iOiiOOOOOOOOpi", &cell, &cap, &T, &B, &ox, &oh0, &ohs, &oc0,
                          &ocs, &otc, &obh, &os, &relu, &threads))
        return nullptr;
    const Packed *w = get_packed(cap);
    if (!w) return nullptr;
    const int G = gates_of(cell), H = w->H, dt = w->dtype;
    if (cell < 0 || cell > 2 || w->G != G || w->dir != DIR_FORWARD || T < 1 || B < 1) {
        PyErr_SetString(PyExc_ValueError, "expected a forward-packed weight of the cell's gates");
        return nullptr;
    }
    const bool lstm = cell == CELL_LSTM, gru = cell == CELL_GRU;
    Arr x, h0, hs, c0, cs, tc, bh, s;
    if (get_arr(ox, "x", dt, (long)T * B, (long)G * H, true, false, &x)
        || get_arr(oh0, "h0", dt, B, H, false, false, &h0)
        || get_arr(ohs, "hs", dt, (long)T * B, H, true, false, &hs)
        || get_arr(oc0, "c0", dt, B, H, false, !lstm, &c0)
        || get_arr(ocs, "cs", dt, (long)T * B, H, true, !lstm, &cs)
        || get_arr(otc, "tanh_cs", dt, (long)T * B, H, true, !lstm, &tc)
        || get_arr(obh, "b_hh", dt, 1, 3L * H, false, true, &bh)
        || get_arr(os, "s", dt, (long)T * B, 3L * H, true, !gru, &s))
        return nullptr;
    FwdArgs a = {w, T, B, H, relu, x.ptr, h0.ptr, hs.ptr, c0.ptr, cs.ptr, tc.ptr,
                 gru ? bh.ptr : nullptr, s.ptr};
    Py_BEGIN_ALLOW_THREADS
    IMPL->forward(cell, &a, threads, team_for(threads));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* backward(cell, packed, T, B, gates, h0, hs, c0, cs, tanh_cs, s_n, dhs, dz, ds, carry_h,
 *          carry_c, relu, threads) */
static PyObject *py_backward(PyObject *, PyObject *args) {
    int cell, T, B, relu, threads;
    PyObject *cap, *og, *oh0, *ohs, *oc0, *ocs, *otc, *osn, *odhs, *odz, *ods, *och, *occ;
    if (!PyArg_ParseTuple(args, "iOiiOOOOOOOOOOOOpi", &cell, &cap, &T, &B, &og, &oh0, &ohs,
                          &oc0, &ocs, &otc, &osn, &odhs, &odz, &ods, &och, &occ, &relu,
                          &threads))
        return nullptr;
    const Packed *w = get_packed(cap);
    if (!w) return nullptr;
    const int G = gates_of(cell), H = w->H, dt = w->dtype;
    if (cell < 0 || cell > 2 || w->G != G || w->dir != DIR_BACKWARD || T < 1 || B < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "expected a backward-packed weight of the cell's gates");
        return nullptr;
    }
    const bool lstm = cell == CELL_LSTM, gru = cell == CELL_GRU, rnn = cell == CELL_RNN;
    const long TB = (long)T * B;
    Arr g, h0, hs, c0, cs, tc, sn, dhs, dz, ds, ch, cc;
    if (get_arr(og, "gates", dt, TB, (long)G * H, false, rnn, &g)
        || get_arr(oh0, "h0", dt, B, H, false, !gru, &h0)
        || get_arr(ohs, "hs", dt, TB, H, false, lstm, &hs)
        || get_arr(oc0, "c0", dt, B, H, false, !lstm, &c0)
        || get_arr(ocs, "cs", dt, TB, H, false, !lstm, &cs)
        || get_arr(otc, "tanh_cs", dt, TB, H, false, !lstm, &tc)
        || get_arr(osn, "s_n", dt, TB, H, false, !gru, &sn, true)
        || get_arr(odhs, "dhs", dt, TB, H, false, true, &dhs)
        || get_arr(odz, "dz", dt, TB, (long)G * H, true, false, &dz)
        || get_arr(ods, "ds", dt, TB, 3L * H, true, !gru, &ds)
        || get_arr(och, "carry_h", dt, B, H, true, false, &ch)
        || get_arr(occ, "carry_c", dt, B, H, true, !lstm, &cc))
        return nullptr;
    BwdArgs a = {w, T, B, H, relu, g.ptr, h0.ptr, hs.ptr, c0.ptr, cs.ptr, tc.ptr,
                 sn.ptr, sn.ld, dhs.ptr, dz.ptr, ds.ptr, ch.ptr, cc.ptr};
    Py_BEGIN_ALLOW_THREADS
    IMPL->backward(cell, &a, threads, team_for(threads));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

// -- products and the loss -------------------------------------------------------------------

/* A buffer as a matrix (rows, cols) with any strides (elements): for gemm's operands. */
struct Mat {
    Py_buffer view;
    bool held = false;
    long rows = 0, cols = 0, rs = 0, cs = 0;
    ~Mat() {
        if (held) PyBuffer_Release(&view);
    }
};

static int get_mat(PyObject *obj, const char *name, bool writable, Mat *m) {
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &m->view, flags) < 0) return -1;
    m->held = true;
    Py_buffer &v = m->view;
    if (v.ndim != 2 || dtype_of(v) < 0 || v.strides[0] % v.itemsize || v.strides[1] % v.itemsize) {
        PyErr_Format(PyExc_ValueError, "expected %s a float32 or float64 matrix", name);
        return -1;
    }
    m->rows = (long)v.shape[0];
    m->cols = (long)v.shape[1];
    m->rs = (long)(v.strides[0] / v.itemsize);
    m->cs = (long)(v.strides[1] / v.itemsize);
    return 0;
}

/* gemm(a (M, K), b (K, N), c (M, N), accumulate, bf16, threads): c (+)= a b; a and b may be
 * transposed views (any strides), c has contiguous rows. */
static PyObject *py_gemm(PyObject *, PyObject *args) {
    PyObject *oa, *ob, *oc;
    int acc, bf16, threads;
    if (!PyArg_ParseTuple(args, "OOOppi", &oa, &ob, &oc, &acc, &bf16, &threads)) return nullptr;
    Mat A, B, C;
    if (get_mat(oa, "a", false, &A) || get_mat(ob, "b", false, &B) || get_mat(oc, "c", true, &C))
        return nullptr;
    int dt = dtype_of(A.view);
    if (dtype_of(B.view) != dt || dtype_of(C.view) != dt || A.cols != B.rows
        || C.rows != A.rows || C.cols != B.cols || C.cs != 1 || (bf16 && dt == DT_F64)) {
        PyErr_Format(PyExc_ValueError, "expected a (M, K), b (K, N), c (M, N) of one dtype, c's "
                     "rows contiguous, got (%ld, %ld), (%ld, %ld), (%ld, %ld)", A.rows, A.cols,
                     B.rows, B.cols, C.rows, C.cols);
        return nullptr;
    }
    GemmArgs g = {dt, bf16, acc, A.rows, B.cols, A.cols, A.view.buf, A.rs, A.cs,
                  B.view.buf, B.rs, B.cs, C.view.buf, C.rs};
    Py_BEGIN_ALLOW_THREADS
    IMPL->gemm(&g, threads, team_for(threads));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* softmax_xent(logits (N, V) in place -> dL/dlogits, targets int64 (N,), threads) -> loss */
static PyObject *py_softmax_xent(PyObject *, PyObject *args) {
    PyObject *ol, *oy;
    int threads;
    if (!PyArg_ParseTuple(args, "OOi", &ol, &oy, &threads)) return nullptr;
    Mat L;
    if (get_mat(ol, "logits", true, &L)) return nullptr;
    if (L.cs != 1 || L.rs != L.cols) {
        PyErr_SetString(PyExc_ValueError, "expected C-contiguous logits");
        return nullptr;
    }
    Py_buffer y;
    if (PyObject_GetBuffer(oy, &y, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return nullptr;
    const char *f = y.format ? y.format : "";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    bool ok = y.itemsize == 8 && (f[0] == 'q' || f[0] == 'l') && f[1] == 0
              && y.len / 8 == L.rows;
    const int64_t *yy = (const int64_t *)y.buf;
    for (long i = 0; ok && i < L.rows; i++) ok = yy[i] >= 0 && yy[i] < L.cols;
    if (!ok) {
        PyBuffer_Release(&y);
        PyErr_SetString(PyExc_ValueError, "expected int64 targets in [0, V), one per row");
        return nullptr;
    }
    double loss;
    int dt = dtype_of(L.view);
    Py_BEGIN_ALLOW_THREADS
    loss = IMPL->softmax_xent(dt, L.view.buf, L.rows, L.cols, yy, threads, team_for(threads));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&y);
    return PyFloat_FromDouble(loss);
}

// -- the layer-normalised cells --------------------------------------------------------------

static bool ln_cell_ok(int cell, const Packed *w, int dir, int T, int B) {
    if ((cell != CELL_LSTM && cell != CELL_GRU) || w->G != gates_of(cell) || w->dir != dir
        || T < 1 || B < 1) {
        PyErr_SetString(PyExc_ValueError, dir == DIR_FORWARD
                        ? "expected a forward-packed weight of the cell's gates"
                        : "expected a backward-packed weight of the cell's gates");
        return false;
    }
    return true;
}

/* ln_forward(cell, packed, T, B, eps, x, h0, hs, v, v_rstd, g_hh, c0, cs, c_hat, c_rstd, tanh_k,
 *            g_c, b_c, b_hh, s_n, threads) */
static PyObject *py_ln_forward(PyObject *, PyObject *args) {
    int cell, T, B, threads;
    double eps;
    PyObject *cap, *ox, *oh0, *ohs, *ov, *ovr, *ogh, *oc0, *ocs, *och, *ocr, *otk, *ogc, *obc,
        *obh, *osn;
    if (!PyArg_ParseTuple(args, "iOiidOOOOOOOOOOOOOOOi", &cell, &cap, &T, &B, &eps, &ox, &oh0,
                          &ohs, &ov, &ovr, &ogh, &oc0, &ocs, &och, &ocr, &otk, &ogc, &obc, &obh,
                          &osn, &threads))
        return nullptr;
    const Packed *w = get_packed(cap);
    if (!w || !ln_cell_ok(cell, w, DIR_FORWARD, T, B)) return nullptr;
    const int G = w->G, H = w->H, dt = w->dtype;
    const bool lstm = cell == CELL_LSTM, gru = !lstm;
    const long TB = (long)T * B;
    Arr x, h0, hs, v, vr, gh, c0, cs, ch, cr, tk, gc, bc, bh, sn;
    if (get_arr(ox, "x", dt, TB, (long)G * H, true, false, &x)
        || get_arr(oh0, "h0", dt, B, H, false, false, &h0)
        || get_arr(ohs, "hs", dt, TB, H, true, false, &hs)
        || get_arr(ov, "v", dt, TB, (long)G * H, true, false, &v)
        || get_arr(ovr, "v_rstd", dt, TB, 1, true, false, &vr)
        || get_arr(ogh, "g_hh", dt, 1, (long)G * H, false, false, &gh)
        || get_arr(oc0, "c0", dt, B, H, false, !lstm, &c0)
        || get_arr(ocs, "cs", dt, TB, H, true, !lstm, &cs)
        || get_arr(och, "c_hat", dt, TB, H, true, !lstm, &ch)
        || get_arr(ocr, "c_rstd", dt, TB, 1, true, !lstm, &cr)
        || get_arr(otk, "tanh_k", dt, TB, H, true, !lstm, &tk)
        || get_arr(ogc, "g_c", dt, 1, H, false, !lstm, &gc)
        || get_arr(obc, "b_c", dt, 1, H, false, true, &bc)
        || get_arr(obh, "b_hh", dt, 1, 3L * H, false, true, &bh)
        || get_arr(osn, "s_n", dt, TB, H, true, !gru, &sn))
        return nullptr;
    LnFwdArgs a = {w, T, B, H, eps, x.ptr, h0.ptr, hs.ptr, v.ptr, vr.ptr, gh.ptr,
                   lstm ? c0.ptr : nullptr, cs.ptr, ch.ptr, cr.ptr, tk.ptr, gc.ptr,
                   lstm ? bc.ptr : nullptr, gru ? bh.ptr : nullptr, sn.ptr};
    Py_BEGIN_ALLOW_THREADS
    IMPL->ln_forward(cell, &a, threads, team_for(threads));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ln_backward(cell, packed, T, B, gates, v, v_rstd, g_hh, h0, hs, s_n, c0, cs, c_hat, c_rstd,
 *             tanh_k, g_c, dhs, out, carry_h, carry_c, dv_scaled, threads) */
static PyObject *py_ln_backward(PyObject *, PyObject *args) {
    int cell, T, B, dv_scaled, threads;
    PyObject *cap, *og, *ov, *ovr, *ogh, *oh0, *ohs, *osn, *oc0, *ocs, *och, *ocr, *otk, *ogc,
        *odhs, *oout, *ocah, *ocac;
    if (!PyArg_ParseTuple(args, "iOiiOOOOOOOOOOOOOOOOOpi", &cell, &cap, &T, &B, &og, &ov, &ovr,
                          &ogh, &oh0, &ohs, &osn, &oc0, &ocs, &och, &ocr, &otk, &ogc, &odhs,
                          &oout, &ocah, &ocac, &dv_scaled, &threads))
        return nullptr;
    const Packed *w = get_packed(cap);
    if (!w || !ln_cell_ok(cell, w, DIR_BACKWARD, T, B)) return nullptr;
    const int G = w->G, H = w->H, dt = w->dtype;
    const bool lstm = cell == CELL_LSTM, gru = !lstm;
    const long TB = (long)T * B, GH = (long)G * H, W = lstm ? 2 * GH + H : 2 * GH;
    Arr g, v, vr, gh, h0, hs, sn, c0, cs, ch, cr, tk, gc, dhs, out, cah, cac;
    if (get_arr(og, "gates", dt, TB, GH, false, false, &g)
        || get_arr(ov, "v", dt, TB, GH, false, false, &v)
        || get_arr(ovr, "v_rstd", dt, TB, 1, false, false, &vr)
        || get_arr(ogh, "g_hh", dt, 1, GH, false, false, &gh)
        || get_arr(oh0, "h0", dt, B, H, false, !gru, &h0)
        || get_arr(ohs, "hs", dt, TB, H, false, !gru, &hs)
        || get_arr(osn, "s_n", dt, TB, H, false, !gru, &sn)
        || get_arr(oc0, "c0", dt, B, H, false, !lstm, &c0)
        || get_arr(ocs, "cs", dt, TB, H, false, !lstm, &cs)
        || get_arr(och, "c_hat", dt, TB, H, false, !lstm, &ch)
        || get_arr(ocr, "c_rstd", dt, TB, 1, false, !lstm, &cr)
        || get_arr(otk, "tanh_k", dt, TB, H, false, !lstm, &tk)
        || get_arr(ogc, "g_c", dt, 1, H, false, !lstm, &gc)
        || get_arr(odhs, "dhs", dt, TB, H, false, true, &dhs)
        || get_arr(oout, "out", dt, TB, W, true, false, &out)
        || get_arr(ocah, "carry_h", dt, B, H, true, false, &cah)
        || get_arr(ocac, "carry_c", dt, B, H, true, !lstm, &cac))
        return nullptr;
    LnBwdArgs a = {w, T, B, H, g.ptr, v.ptr, vr.ptr, gh.ptr, h0.ptr, hs.ptr, sn.ptr, c0.ptr,
                   cs.ptr, ch.ptr, cr.ptr, tk.ptr, gc.ptr, dhs.ptr, out.ptr, W, dv_scaled,
                   cah.ptr, lstm ? cac.ptr : nullptr};
    Py_BEGIN_ALLOW_THREADS
    IMPL->ln_backward(cell, &a, threads, team_for(threads));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *, PyObject *) { return PyUnicode_FromString(IMPL->name); }

static PyObject *py_native_bf16(PyObject *, PyObject *) {
    return PyBool_FromLong(IMPL->native_bf16);
}

static PyMethodDef METHODS[] = {
    {"pack", py_pack, METH_VARARGS, "pack(weight, gates, direction, bf16) -> packed weight"},
    {"forward", py_forward, METH_VARARGS, "a recurrent layer's loop over time, forward"},
    {"backward", py_backward, METH_VARARGS, "a recurrent layer's loop over time, backward"},
    {"gemm", py_gemm, METH_VARARGS, "gemm(a, b, c, accumulate, bf16, threads): c (+)= a b"},
    {"softmax_xent", py_softmax_xent, METH_VARARGS,
     "softmax_xent(logits, targets, threads) -> mean loss; logits become the gradient"},
    {"isa", py_isa, METH_NOARGS, "the instruction set the kernel runs"},
    {"native_bf16", py_native_bf16, METH_NOARGS, "bf16 products in hardware (AVX512-BF16)"},
    {"ln_forward", py_ln_forward, METH_VARARGS,
     "a layer-normalised LSTM or GRU layer's loop over time, forward"},
    {"ln_backward", py_ln_backward, METH_VARARGS,
     "a layer-normalised LSTM or GRU layer's loop over time, backward"},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_kernel",
    "The compiled kernel of bptt's engines (see bptt.engine.kernel).", -1, METHODS,
    nullptr, nullptr, nullptr, nullptr};

/* The best instruction set this CPU runs, or BPTT_KERNEL_ISA's (avx512bf16, avx512, avx2,
 * base) when the CPU runs that one. */
static const Impl *choose_impl() {
    const char *want = getenv("BPTT_KERNEL_ISA");
    const Impl *best = bptt_isa_base::table();
    const Impl *named = want && strcmp(want, "base") == 0 ? best : nullptr;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f")
                        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
                        && __builtin_cpu_supports("avx512dq");
    const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    const Impl *order[] = {bf16 ? bptt_isa_avx512bf16::table() : nullptr,
                           avx512 ? bptt_isa_avx512::table() : nullptr,
                           avx2 ? bptt_isa_avx2::table() : nullptr};
    for (const Impl *i : order) {
        if (!i) continue;
        if (best == bptt_isa_base::table()) best = i;
        if (want && strcmp(want, i->name) == 0) named = i;
    }
#endif
    return named ? named : best;
}

PyMODINIT_FUNC PyInit__kernel(void) {
    IMPL = choose_impl();
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(nullptr, nullptr, forget_team_in_child);
#endif
    const char *spin = getenv("BPTT_SPIN_US");
    if (spin && *spin) SPIN_NS = atol(spin) * 1000L;
    return PyModule_Create(&MODULE);
}

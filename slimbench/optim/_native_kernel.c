/* SlimAdam's whole step for a bucket of CPU tensors, in as few passes over memory as the dims allow.
 *
 * Built and loaded by slimbench/optim/_native.py (gcc, -O3 -march=native -fopenmp), which documents the
 * layout. Each tensor is viewed as (O, R, I) with K the middle R dims, so V has O*I entries:
 *
 *   R == 1  (K = (), Adam)      one pass: p, g, M, V read; p, M, V written.
 *   I == 1  (K trailing: fan_in of a weight, both dims, the embedding dim of a table)
 *           per row: sum G^2 over the row, update V's entry, then update the row while it is still in
 *           L1/L2. G is read from memory once.
 *   else    (K leading: fan_out, or a middle range)  per block of W columns of one o: pass 1 sums G^2
 *           down the R rows of the block (and, for fp32/fp64, updates M there), W entries of V are
 *           updated, then pass 2 updates the block's p (and M for the half types), re-reading M (or G)
 *           from L2/L3 when R * W * bytes is a few MiB (which the planner aims for). With one thread a
 *           run of column blocks is software-pipelined (chain_*): block k's pass 2 is interleaved row by
 *           row with block k+1's pass 1, so memory always sees several streams.
 *
 * Work items (tensor, o, lo, hi) are planned once per bucket structure in Python (column blocks first)
 * and split among threads by OpenMP (dynamic schedule; no team at all with one thread). A block too large
 * for one thread to own (a "shared" item: a big fan_out gradient with several threads) is done by the
 * whole team instead:
 * each thread sums its share of the rows, the partial sums are added per column, then each thread
 * updates its rows.
 *
 * Memory: per call, two small heap arrays (the per-tensor scalars, n * 2 * sizeof(T), and one pointer per
 * thread); column sums and scales live on each thread's stack, bounded by MAX_W entries. Nothing sized by
 * the caller is on the stack. Sums of squares accumulate in double. Storage may be fp32, fp64, bf16 or
 * fp16 (S); the update is computed in T (fp32 for the half types) and each result rounded once when stored.
 *
 * Trust: the caller (Python) checks every tensor against its parameter before calling; this file checks
 * the plan it is handed against itself before touching any tensor (every item inside its tensor's
 * (O, R, I), no block wider than MAX_W, no null pointer, a sane thread count) and returns a negative
 * SLIMADAM_E* code instead of running when it does not hold.
 *
 * Huge and non-finite gradients, the contract every SlimAdam path keeps (slimbench/optim/_fused.py):
 * V's new term is computed as torch computes it in the for-loop, in T: K = () adds ((1-b2) * g) * g, as
 * torch's addcmul (AdamW) does; otherwise the sum of squares over K is rounded to T before dividing by R,
 * so a sum past T's largest finite value is +inf (as torch's fp32 G*G and its sum are), V is +inf for
 * good, and every entry sharing it gets no gradient update again (weight decay still applies).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_W 4096
#define SLIMADAM_ABI 3 /* bumped whenever an entry point's signature changes */

typedef struct {
    int64_t tensor, o, lo, hi;
} Item;

/* Return codes of slimadam_step_* (mirrored in _native.py). */
#define SLIMADAM_OK 0
#define SLIMADAM_EARGS (-1)  /* a count, a thread number or a pointer is out of range */
#define SLIMADAM_ESHAPE (-2) /* a tensor's (O, R, I) has a zero or negative extent, or overflows */
#define SLIMADAM_EITEM (-3)  /* a work item falls outside its tensor, or is wider than MAX_W */
#define SLIMADAM_ENOMEM (-4) /* the per-call scratch arrays could not be allocated */
#define SLIMADAM_MAX_THREADS 65536

/* Whether items[0..count) lie inside their tensors. Column blocks (R > 1 and I > 1) are (o, lo, hi) with
   o < O, hi <= I and hi - lo <= MAX_W (the stack arrays); others are ranges of entries (R == 1: hi <= O*I)
   or of rows (I == 1: hi <= O). Shared items must be column blocks. */
static int check_items(const Item *items, int64_t count, int64_t n, const int64_t *shapes, int shared) {
    if (count > 0 && items == NULL) return SLIMADAM_EARGS;
    for (int64_t k = 0; k < count; k++) {
        const Item it = items[k];
        if (it.tensor < 0 || it.tensor >= n || it.lo < 0 || it.lo >= it.hi) return SLIMADAM_EITEM;
        const int64_t O = shapes[3 * it.tensor], R = shapes[3 * it.tensor + 1], I = shapes[3 * it.tensor + 2];
        const int columns = R > 1 && I > 1;
        if (shared && !columns) return SLIMADAM_EITEM;
        if (columns ? (it.o < 0 || it.o >= O || it.hi > I || it.hi - it.lo > MAX_W)
                    : (it.o != 0 || it.hi > (R == 1 ? O * I : O)))
            return SLIMADAM_EITEM;
    }
    return SLIMADAM_OK;
}

/* Everything the kernel is handed, checked before any tensor is touched. */
static int check_call(int64_t n, void *const *ptrs, const int64_t *shapes, const Item *items, int64_t n_items,
                      const Item *shared, int64_t n_shared, int threads) {
    if (n < 0 || n_items < 0 || n_shared < 0 || threads < 1 || threads > SLIMADAM_MAX_THREADS)
        return SLIMADAM_EARGS;
    if (n == 0) return n_items == 0 && n_shared == 0 ? SLIMADAM_OK : SLIMADAM_EITEM;
    if (ptrs == NULL || shapes == NULL) return SLIMADAM_EARGS;
    for (int64_t i = 0; i < 5 * n; i++)
        if (ptrs[i] == NULL) return SLIMADAM_EARGS;
    for (int64_t i = 0; i < n; i++) {
        const int64_t O = shapes[3 * i], R = shapes[3 * i + 1], I = shapes[3 * i + 2];
        int64_t entries;
        if (O < 1 || R < 1 || I < 1 || __builtin_mul_overflow(O, R, &entries) ||
            __builtin_mul_overflow(entries, I, &entries))
            return SLIMADAM_ESHAPE;
    }
    int rc = check_items(items, n_items, n, shapes, 0);
    return rc != SLIMADAM_OK ? rc : check_items(shared, n_shared, n, shapes, 1);
}

/* Storage <-> compute conversions. fp32/fp64 compute in their own type; bf16 and fp16 are loaded to fp32,
   updated there, and rounded once (to nearest even) when stored, as torch's fused AdamW does. */
#define SAME(x) (x)

static inline float bf16_load(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(isnan(f) ? ((u >> 16) | 0x40u) : rounded); /* NaN stays a (quiet) NaN */
}

#define F16_LOAD(x) ((float)(x))
#define F16_STORE(x) ((_Float16)(x))
/* _Float16 needs gcc >= 12 or clang >= 15 on x86-64; without it the library has no f16 entry point and
   fp16 tensors take the compiled path (slimbench/optim/_native.py checks which entry points exist). */

/* Whether M's update can move to a column block's pass 1: M is stored in the compute type T, so reading it
   back in pass 2 gives exactly the value just computed (fp32, fp64; not the half types). */
#define IN_PASS1(S, T) (sizeof(S) == sizeof(T))

/* A column block (R > 1 and I > 1) of a checked item: tensor, rows, row stride, width, offsets in p and V. */
typedef struct {
    int64_t i, R, I, w, base, vbase;
} Block;

static inline int is_columns(Item it, const int64_t *shapes) {
    return shapes[3 * it.tensor + 1] > 1 && shapes[3 * it.tensor + 2] > 1;
}

static inline Block block_of(Item it, const int64_t *shapes) {
    const int64_t R = shapes[3 * it.tensor + 1], I = shapes[3 * it.tensor + 2];
    return (Block){it.tensor, R, I, it.hi - it.lo, it.o * R * I + it.lo, it.o * I + it.lo};
}

/* Per-tensor scalars of one step. */
typedef struct {
    double neg_step, bc2_sqrt;
} Scalars;

#define DEFINE_STEP(SUFFIX, S, T, LD, ST, SQRT)                                                                  \
    typedef struct {                                                                                             \
        T sign, decay, w1, b2, w2, eps;                                                                          \
    } Hyper_##SUFFIX;                                                                                            \
                                                                                                                 \
    /* Increment every step counter; per tensor -lr / (1 - b1^t) and sqrt(1 - b2^t), in double as the for-loop \
       computes them in Python, then rounded to T; and the step's hyperparameters in T. */                      \
    static Hyper_##SUFFIX scalars_##SUFFIX(int64_t n, float *const *STEP, T *neg_step, T *bc2_sqrt, double lr,    \
                                           double beta1, double beta2, double eps, double weight_decay,          \
                                           int maximize) {                                                       \
        for (int64_t i = 0; i < n; i++) {                                                                        \
            *STEP[i] += 1.0f;                                                                                    \
            double t = (double)*STEP[i];                                                                         \
            neg_step[i] = (T)(-(lr / (1.0 - pow(beta1, t))));                                                    \
            bc2_sqrt[i] = (T)sqrt(1.0 - pow(beta2, t));                                                          \
        }                                                                                                        \
        return (Hyper_##SUFFIX){maximize ? (T)-1 : (T)1, (T)(1.0 - lr * weight_decay), (T)(1.0 - beta1),         \
                                (T)beta2, (T)(1.0 - beta2), (T)eps};                                             \
    }                                                                                                            \
                                                                                                                 \
    static void adam_range_##SUFFIX(S *p, const S *g, S *m, S *v, int64_t lo, int64_t hi,                       \
                                    const Hyper_##SUFFIX *h, T neg_step, T bc2_sqrt) {                           \
        const T sign = h->sign, decay = h->decay, w1 = h->w1, b2 = h->b2, w2 = h->w2, eps = h->eps;              \
        _Pragma("omp simd")                                                                                      \
        for (int64_t j = lo; j < hi; j++) {                                                                      \
            T gj = sign * LD(g[j]), mj0 = LD(m[j]);                                                              \
            T mj = mj0 + w1 * (gj - mj0);                                                                        \
            T vj = LD(v[j]) * b2 + (w2 * gj) * gj; /* addcmul's order */                                         \
            m[j] = ST(mj);                                                                                       \
            v[j] = ST(vj);                                                                                       \
            p[j] = ST(LD(p[j]) * decay + neg_step * (mj / (SQRT(vj) / bc2_sqrt + eps)));                         \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* M and p of one row of R entries sharing one V entry, with its scale -step / (sqrt(V) / bc2 + eps). */  \
    static inline void row_update_##SUFFIX(S *pr, const S *gr, S *mr, int64_t R, const Hyper_##SUFFIX *h,        \
                                           T scale) {                                                            \
        const T sign = h->sign, decay = h->decay, w1 = h->w1;                                                    \
        _Pragma("omp simd")                                                                                      \
        for (int64_t k = 0; k < R; k++) {                                                                        \
            T mk0 = LD(mr[k]), mk = mk0 + w1 * (sign * LD(gr[k]) - mk0);                                         \
            mr[k] = ST(mk);                                                                                      \
            pr[k] = ST(LD(pr[k]) * decay + mk * scale);                                                          \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    static void rows_##SUFFIX(S *p, const S *g, S *m, S *v, int64_t R, int64_t lo, int64_t hi,                   \
                              const Hyper_##SUFFIX *h, T neg_step, T bc2_sqrt) {                                 \
        for (int64_t r = lo; r < hi; r++) {                                                                      \
            const S *gr = g + r * R;                                                                             \
            S *pr = p + r * R, *mr = m + r * R;                                                                  \
            double s = 0.0;                                                                                      \
            _Pragma("omp simd reduction(+ : s)")                                                                 \
            for (int64_t k = 0; k < R; k++) s += (double)LD(gr[k]) * (double)LD(gr[k]);                          \
            T vr = LD(v[r]) * h->b2 + h->w2 * ((T)s / (T)R); /* +inf past T's range */                           \
            v[r] = ST(vr);                                                                                       \
            row_update_##SUFFIX(pr, gr, mr, R, h, neg_step / (SQRT(vr) / bc2_sqrt + h->eps));                    \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* acc[c] += sum over rows r0..r1 of G[r, c]^2 for the w columns at g (row stride I). Eight rows per pass    \
       over acc: eight memory streams in flight and 1/8 of acc's loads and stores (one row at a time ran at     \
       a third of the bandwidth). */                                                                             \
    static void column_sums_##SUFFIX(const S *g, int64_t I, int64_t r0, int64_t r1, int64_t w, double *acc) {    \
        int64_t r = r0;                                                                                          \
        for (; r + 8 <= r1; r += 8) {                                                                            \
            const S *gr = g + r * I;                                                                             \
            _Pragma("omp simd")                                                                                  \
            for (int64_t c = 0; c < w; c++) {                                                                    \
                double x0 = LD(gr[c]), x1 = LD(gr[c + I]), x2 = LD(gr[c + 2 * I]), x3 = LD(gr[c + 3 * I]);       \
                double x4 = LD(gr[c + 4 * I]), x5 = LD(gr[c + 5 * I]);                                           \
                double x6 = LD(gr[c + 6 * I]), x7 = LD(gr[c + 7 * I]);                                           \
                acc[c] += ((x0 * x0 + x1 * x1) + (x2 * x2 + x3 * x3)) + ((x4 * x4 + x5 * x5) + (x6 * x6 + x7 * x7)); \
            }                                                                                                    \
        }                                                                                                        \
        for (; r < r1; r++) {                                                                                    \
            const S *gr = g + r * I;                                                                             \
            _Pragma("omp simd")                                                                                  \
            for (int64_t c = 0; c < w; c++) acc[c] += (double)LD(gr[c]) * (double)LD(gr[c]);                     \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* V <- b2 V + w2 sum / R for w columns, and the per-column scale -step / (sqrt(V) / bc2 + eps). */         \
    static void column_scales_##SUFFIX(S *vo, const double *sum, int64_t R, int64_t w, const Hyper_##SUFFIX *h,  \
                                       T neg_step, T bc2_sqrt, T *scale) {                                       \
        for (int64_t c = 0; c < w; c++) {                                                                        \
            T vc = LD(vo[c]) * h->b2 + h->w2 * ((T)sum[c] / (T)R);                                          \
            vo[c] = ST(vc);                                                                                      \
            scale[c] = neg_step / (SQRT(vc) / bc2_sqrt + h->eps);                                                \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* M and p for rows r0..r1 of w columns (row stride I), the scale broadcast down the rows. */               \
    static void column_update_##SUFFIX(S *p, const S *g, S *m, int64_t I, int64_t r0, int64_t r1, int64_t w,     \
                                       const Hyper_##SUFFIX *h, const T *scale) {                                \
        const T sign = h->sign, decay = h->decay, w1 = h->w1;                                                    \
        for (int64_t r = r0; r < r1; r++) {                                                                      \
            const S *gr = g + r * I;                                                                             \
            S *pr = p + r * I, *mr = m + r * I;                                                                  \
            _Pragma("omp simd")                                                                                  \
            for (int64_t c = 0; c < w; c++) {                                                                    \
                T mc0 = LD(mr[c]), mc = mc0 + w1 * (sign * LD(gr[c]) - mc0);                                     \
                mr[c] = ST(mc);                                                                                  \
                pr[c] = ST(LD(pr[c]) * decay + mc * scale[c]);                                                   \
            }                                                                                                    \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* Pass 1 of an owned column block, rows r0..r1: acc[c] += G[r, c]^2, one row at a time (a column's sum      \
       runs down the rows in one order however the columns are blocked or threaded). Where M is stored in T      \
       (fp32, fp64: IN_PASS1) M is updated here too and pass 2 reads it back instead of G, so pass 1 streams     \
       G and M and pass 2 streams p. The half types keep M's update in pass 2, where the unrounded new M is      \
       at hand for p (each stored value rounded once). */                                                        \
    static inline void block_pass1_##SUFFIX(const S *g, S *m, int64_t I, int64_t r0, int64_t r1, int64_t w,      \
                                            const Hyper_##SUFFIX *h, double *acc) {                              \
        const T sign = h->sign, w1 = h->w1;                                                                      \
        for (int64_t r = r0; r < r1; r++) {                                                                      \
            const S *gr = g + r * I;                                                                             \
            S *mr = m + r * I;                                                                                   \
            if (IN_PASS1(S, T)) {                                                                                \
                _Pragma("omp simd")                                                                              \
                for (int64_t c = 0; c < w; c++) {                                                                \
                    T gc = LD(gr[c]), mc0 = LD(mr[c]);                                                           \
                    mr[c] = ST(mc0 + w1 * (sign * gc - mc0));                                                    \
                    acc[c] += (double)gc * (double)gc;                                                           \
                }                                                                                                \
            } else {                                                                                             \
                _Pragma("omp simd")                                                                              \
                for (int64_t c = 0; c < w; c++) acc[c] += (double)LD(gr[c]) * (double)LD(gr[c]);                 \
            }                                                                                                    \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* Pass 2 of an owned column block, one row: p (and, for the half types, M) with the per-column scale. */    \
    static inline void block_pass2_##SUFFIX(S *pr, const S *gr, S *mr, int64_t w, const Hyper_##SUFFIX *h,       \
                                            const T *scale) {                                                    \
        const T decay = h->decay;                                                                                \
        if (IN_PASS1(S, T)) {                                                                                    \
            _Pragma("omp simd")                                                                                  \
            for (int64_t c = 0; c < w; c++) pr[c] = ST(LD(pr[c]) * decay + LD(mr[c]) * scale[c]);                \
        } else {                                                                                                 \
            column_update_##SUFFIX(pr, gr, mr, 0, 0, 1, w, h, scale);                                            \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* Owned column blocks items[k0..k1) of one thread, software-pipelined: pass 2 of block k runs row by row    \
       interleaved with pass 1 of block k+1 (its rows spread evenly over block k's), so the loop streams         \
       what a plain Adam step streams, p of one block and G, M of the next, instead of a pass 1 that reads       \
       G alone and stalls on memory (it ran at a third of the bandwidth on 256-column blocks). Block k's         \
       M (G for the half types) is re-read from L2/L3 in its pass 2. One acc: block k's sums become its          \
       scales before block k+1's sums start. */                                                                  \
    static void chain_##SUFFIX(S *const *P, const S *const *G, S *const *M, S *const *V, const int64_t *shapes,  \
                               const Item *items, int64_t k0, int64_t k1, const Hyper_##SUFFIX *h,               \
                               const T *neg_step, const T *bc2_sqrt) {                                           \
        double acc[MAX_W];                                                                                       \
        T scale[MAX_W];                                                                                          \
        Block b = block_of(items[k0], shapes);                                                                   \
        for (int64_t c = 0; c < b.w; c++) acc[c] = 0.0;                                                          \
        block_pass1_##SUFFIX(G[b.i] + b.base, M[b.i] + b.base, b.I, 0, b.R, b.w, h, acc);                        \
        for (int64_t k = k0; k < k1; k++) {                                                                      \
            const int64_t i = b.i, R = b.R, I = b.I;                                                             \
            column_scales_##SUFFIX(V[i] + b.vbase, acc, R, b.w, h, neg_step[i], bc2_sqrt[i], scale);             \
            const int next = k + 1 < k1;                                                                         \
            const Block nb = next ? block_of(items[k + 1], shapes) : b;                                          \
            if (next)                                                                                            \
                for (int64_t c = 0; c < nb.w; c++) acc[c] = 0.0;                                                 \
            S *p = P[i] + b.base, *m = M[i] + b.base;                                                            \
            const S *g = G[i] + b.base;                                                                          \
            int64_t done = 0, err = 0; /* the next block's rows summed so far; Bresenham's share */              \
            for (int64_t r = 0; r < R; r++) {                                                                    \
                block_pass2_##SUFFIX(p + r * I, g + r * I, m + r * I, b.w, h, scale);                            \
                if (!next) continue;                                                                             \
                int64_t upto = done;                                                                             \
                for (err += nb.R; err >= R; err -= R) upto++; /* after row r: (r + 1) * nb.R / R rows */         \
                block_pass1_##SUFFIX(G[nb.i] + nb.base, M[nb.i] + nb.base, nb.I, done, upto, nb.w, h, acc);      \
                done = upto;                                                                                     \
            }                                                                                                    \
            b = nb;                                                                                              \
        }                                                                                                        \
    }                                                                                                            \
                                                                                                                 \
    /* An item that is not a column block: a range of entries (K = ()) or of rows (K trailing). */               \
    static void line_item_##SUFFIX(S *const *P, const S *const *G, S *const *M, S *const *V,                     \
                                   const int64_t *shapes, Item it, const Hyper_##SUFFIX *h, const T *neg_step,   \
                                   const T *bc2_sqrt) {                                                          \
        const int64_t i = it.tensor, R = shapes[3 * i + 1];                                                      \
        if (R == 1)                                                                                              \
            adam_range_##SUFFIX(P[i], G[i], M[i], V[i], it.lo, it.hi, h, neg_step[i], bc2_sqrt[i]);              \
        else                                                                                                     \
            rows_##SUFFIX(P[i], G[i], M[i], V[i], R, it.lo, it.hi, h, neg_step[i], bc2_sqrt[i]);                 \
    }                                                                                                            \
    /* The whole team shares the block: rows split between threads, partial sums added per column. Called      \
       inside a parallel region by every thread. parts[t] points at thread t's partial sums (its stack).        \
       Thread t then owns columns c0..c1: it adds every thread's partial sums there (in thread order) into      \
       its own acc, which no other thread reads at those columns, updates V and the scales there. */           \
    static void columns_shared_##SUFFIX(S *p, const S *g, S *m, S *v, int64_t R, int64_t I, int64_t o,           \
                                        int64_t lo, int64_t hi, const Hyper_##SUFFIX *h, T neg_step,             \
                                        T bc2_sqrt, double **parts, T *scale) {                                  \
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();                                          \
        const int64_t w = hi - lo, base = o * R * I + lo;                                                        \
        const int64_t r0 = R * t / nt, r1 = R * (t + 1) / nt, c0 = w * t / nt, c1 = w * (t + 1) / nt;            \
        double acc[MAX_W];                                                                                       \
        for (int64_t c = 0; c < w; c++) acc[c] = 0.0;                                                            \
        column_sums_##SUFFIX(g + base, I, r0, r1, w, acc);                                                       \
        parts[t] = acc;                                                                                          \
        _Pragma("omp barrier")                                                                                   \
        for (int64_t c = c0; c < c1; c++) {                                                                      \
            double total = 0.0;                                                                                  \
            for (int u = 0; u < nt; u++) total += parts[u][c];                                                   \
            acc[c] = total;                                                                                      \
        }                                                                                                        \
        column_scales_##SUFFIX(v + o * I + lo + c0, acc + c0, R, c1 - c0, h, neg_step, bc2_sqrt, scale + c0);    \
        _Pragma("omp barrier") /* every scale is set; every partial sum has been read */                         \
        column_update_##SUFFIX(p + base, g + base, m + base, I, r0, r1, w, h, scale);                            \
        _Pragma("omp barrier") /* scale is shared: the next block may overwrite it only after this one */        \
    }                                                                                                            \
                                                                                                                 \
    /* ptrs: 5 arrays of n pointers (p, g, m, v, step), step counters are float32 scalars.                       \
       shapes: n rows of (O, R, I). items: owned by one thread; shared: done by the whole team.                  \
       Returns SLIMADAM_OK, or a negative SLIMADAM_E* code having touched nothing (see check_call). */           \
    int slimadam_step_##SUFFIX(int64_t n, void *const *ptrs, const int64_t *shapes, const Item *items,           \
                               int64_t n_items, const Item *shared, int64_t n_shared, double lr, double beta1,   \
                               double beta2, double eps, double weight_decay, int maximize, int threads) {       \
        const int rc = check_call(n, ptrs, shapes, items, n_items, shared, n_shared, threads);                   \
        if (rc != SLIMADAM_OK || n == 0) return rc;                                                              \
        S *const *P = (S *const *)ptrs;                                                                          \
        const S *const *G = (const S *const *)(ptrs + n);                                                        \
        S *const *M = (S *const *)(ptrs + 2 * n);                                                                \
        S *const *V = (S *const *)(ptrs + 3 * n);                                                                \
        float *const *STEP = (float *const *)(ptrs + 4 * n);                                                     \
        /* Per-tensor scalars on the heap: a bucket can hold any number of tensors. */                           \
        T *neg_step = malloc((size_t)n * 2 * sizeof(T));                                                         \
        double **parts = n_shared > 0 ? malloc((size_t)threads * sizeof(double *)) : NULL;                       \
        if (neg_step == NULL || (n_shared > 0 && parts == NULL)) {                                               \
            free(neg_step);                                                                                      \
            free(parts);                                                                                         \
            return SLIMADAM_ENOMEM;                                                                              \
        }                                                                                                        \
        T *bc2_sqrt = neg_step + n;                                                                              \
        const Hyper_##SUFFIX h = scalars_##SUFFIX(n, STEP, neg_step, bc2_sqrt, lr, beta1, beta2, eps,             \
                                                  weight_decay, maximize);                                       \
        if (n_shared > 0) {                                                                                      \
            T scale[MAX_W];                                                                                      \
            _Pragma("omp parallel num_threads(threads)")                                                         \
            for (int64_t k = 0; k < n_shared; k++) {                                                             \
                const Item it = shared[k];                                                                       \
                const int64_t i = it.tensor;                                                                     \
                columns_shared_##SUFFIX(P[i], G[i], M[i], V[i], shapes[3 * i + 1], shapes[3 * i + 2], it.o,      \
                                        it.lo, it.hi, &h, neg_step[i], bc2_sqrt[i], parts, scale);               \
            }                                                                                                    \
        }                                                                                                        \
        if (threads == 1) { /* in plan order; a run of consecutive column blocks is one pipelined chain */       \
            for (int64_t k = 0; k < n_items;) {                                                                  \
                int64_t k1 = k;                                                                                  \
                while (k1 < n_items && is_columns(items[k1], shapes)) k1++;                                      \
                if (k1 > k) {                                                                                    \
                    chain_##SUFFIX(P, G, M, V, shapes, items, k, k1, &h, neg_step, bc2_sqrt);                    \
                    k = k1;                                                                                      \
                } else {                                                                                         \
                    line_item_##SUFFIX(P, G, M, V, shapes, items[k], &h, neg_step, bc2_sqrt);                    \
                    k++;                                                                                         \
                }                                                                                                \
            }                                                                                                    \
        } else { /* any thread takes any item: a column block is a chain of one */                               \
            _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                                \
            for (int64_t k = 0; k < n_items; k++) {                                                              \
                if (is_columns(items[k], shapes))                                                                \
                    chain_##SUFFIX(P, G, M, V, shapes, items, k, k + 1, &h, neg_step, bc2_sqrt);                 \
                else                                                                                             \
                    line_item_##SUFFIX(P, G, M, V, shapes, items[k], &h, neg_step, bc2_sqrt);                    \
            }                                                                                                    \
        }                                                                                                        \
        free(parts);                                                                                             \
        free(neg_step);                                                                                          \
        return SLIMADAM_OK;                                                                                      \
    }

/* A step with V's sums given: the tensors whose K includes a dim sharded across ranks. The caller (Python,
   slimbench/optim/_fused.py) forms each tensor's local sums of G^2 over K, adds them across ranks in the
   call's one all-reduce and passes the result: sums[i] holds O*I values of type T (V's entries, in V's
   order), and counts[i] is n_K of the whole (unsharded) tensor, so V gains w2 * (sum / n_K). Nothing is
   reduced here; M and p are updated as in slimadam_step_*.
   meta: n rows of (O, R, I, n_K, sums_numel), checked (sums_numel == O*I, n_K >= R >= 1) before any
   tensor is touched. items: (tensor, o, lo, hi): I == 1, a range of rows (o == 0, hi <= O); else a block
   of columns of one o (o < O, hi <= I, hi - lo <= MAX_W). */
static int check_given(int64_t n, void *const *ptrs, const int64_t *meta, const Item *items, int64_t n_items,
                       int threads) {
    if (n < 0 || n_items < 0 || threads < 1 || threads > SLIMADAM_MAX_THREADS) return SLIMADAM_EARGS;
    if (n == 0) return n_items == 0 ? SLIMADAM_OK : SLIMADAM_EITEM;
    if (ptrs == NULL || meta == NULL || (n_items > 0 && items == NULL)) return SLIMADAM_EARGS;
    for (int64_t i = 0; i < 6 * n; i++)
        if (ptrs[i] == NULL) return SLIMADAM_EARGS;
    for (int64_t i = 0; i < n; i++) {
        const int64_t O = meta[5 * i], R = meta[5 * i + 1], I = meta[5 * i + 2], nk = meta[5 * i + 3];
        int64_t entries, vn;
        if (O < 1 || R < 1 || I < 1 || nk < R || __builtin_mul_overflow(O, R, &entries) ||
            __builtin_mul_overflow(entries, I, &entries) || __builtin_mul_overflow(O, I, &vn) ||
            meta[5 * i + 4] != vn)
            return SLIMADAM_ESHAPE;
    }
    for (int64_t k = 0; k < n_items; k++) {
        const Item it = items[k];
        if (it.tensor < 0 || it.tensor >= n || it.lo < 0 || it.lo >= it.hi) return SLIMADAM_EITEM;
        const int64_t O = meta[5 * it.tensor], I = meta[5 * it.tensor + 2];
        if (I == 1 ? (it.o != 0 || it.hi > O) : (it.o < 0 || it.o >= O || it.hi > I || it.hi - it.lo > MAX_W))
            return SLIMADAM_EITEM;
    }
    return SLIMADAM_OK;
}

#define DEFINE_GIVEN(SUFFIX, S, T, LD, ST, SQRT)                                                                 \
    static void given_item_##SUFFIX(S *p, const S *g, S *m, S *v, const T *sum, int64_t R, int64_t I, T nk,      \
                                    Item it, const Hyper_##SUFFIX *h, T neg_step, T bc2_sqrt) {                  \
        if (I == 1) { /* rows of R contiguous entries, one V entry each */                                       \
            for (int64_t r = it.lo; r < it.hi; r++) {                                                            \
                T vr = LD(v[r]) * h->b2 + h->w2 * (sum[r] / nk);                                                 \
                v[r] = ST(vr);                                                                                   \
                row_update_##SUFFIX(p + r * R, g + r * R, m + r * R, R, h, neg_step / (SQRT(vr) / bc2_sqrt + h->eps)); \
            }                                                                                                    \
            return;                                                                                              \
        }                                                                                                        \
        T scale[MAX_W];                                                                                          \
        const int64_t w = it.hi - it.lo, vbase = it.o * I + it.lo;                                               \
        for (int64_t c = 0; c < w; c++) {                                                                        \
            T vc = LD(v[vbase + c]) * h->b2 + h->w2 * (sum[vbase + c] / nk);                                     \
            v[vbase + c] = ST(vc);                                                                               \
            scale[c] = neg_step / (SQRT(vc) / bc2_sqrt + h->eps);                                                \
        }                                                                                                        \
        const int64_t base = it.o * R * I + it.lo;                                                               \
        column_update_##SUFFIX(p + base, g + base, m + base, I, 0, R, w, h, scale);                              \
    }                                                                                                            \
                                                                                                                 \
    /* ptrs: 6 arrays of n pointers (p, g, m, v, step, sums). See check_given for meta and items. */            \
    int slimadam_given_##SUFFIX(int64_t n, void *const *ptrs, const int64_t *meta, const Item *items,            \
                                int64_t n_items, double lr, double beta1, double beta2, double eps,              \
                                double weight_decay, int maximize, int threads) {                                \
        const int rc = check_given(n, ptrs, meta, items, n_items, threads);                                      \
        if (rc != SLIMADAM_OK || n == 0) return rc;                                                              \
        float *const *STEP = (float *const *)(ptrs + 4 * n); /* p, g, m, v, sums: read per item below */       \
        T *neg_step = malloc((size_t)n * 2 * sizeof(T));                                                         \
        if (neg_step == NULL) return SLIMADAM_ENOMEM;                                                            \
        T *bc2_sqrt = neg_step + n;                                                                              \
        const Hyper_##SUFFIX h = scalars_##SUFFIX(n, STEP, neg_step, bc2_sqrt, lr, beta1, beta2, eps,             \
                                                  weight_decay, maximize);                                       \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)")                   \
        for (int64_t k = 0; k < n_items; k++) {                                                                  \
            const Item it = items[k];                                                                            \
            const int64_t i = it.tensor;                                                                         \
            given_item_##SUFFIX((S *)ptrs[i], (const S *)ptrs[n + i], (S *)ptrs[2 * n + i], (S *)ptrs[3 * n + i],  \
                                (const T *)ptrs[5 * n + i], meta[5 * i + 1], meta[5 * i + 2],                    \
                                (T)meta[5 * i + 3], it, &h, neg_step[i], bc2_sqrt[i]);                           \
        }                                                                                                        \
        free(neg_step);                                                                                          \
        return SLIMADAM_OK;                                                                                      \
    }

DEFINE_STEP(f32, float, float, SAME, SAME, sqrtf)
DEFINE_STEP(f64, double, double, SAME, SAME, sqrt)
DEFINE_STEP(bf16, uint16_t, float, bf16_load, bf16_store, sqrtf)
DEFINE_GIVEN(f32, float, float, SAME, SAME, sqrtf)
DEFINE_GIVEN(f64, double, double, SAME, SAME, sqrt)
DEFINE_GIVEN(bf16, uint16_t, float, bf16_load, bf16_store, sqrtf)
#ifdef __FLT16_MAX__
DEFINE_STEP(f16, _Float16, float, F16_LOAD, F16_STORE, sqrtf)
DEFINE_GIVEN(f16, _Float16, float, F16_LOAD, F16_STORE, sqrtf)
#endif

int slimadam_max_block(void) { return MAX_W; }
int slimadam_abi_version(void) { return SLIMADAM_ABI; }

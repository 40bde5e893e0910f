/* Fused CPU kernels of the FBGEMM collection's small-table path (compemb/kernels/_native.py).
 *
 * Built on first use with the system C compiler into a per-machine cache and loaded with ctypes;
 * compemb/kernels/_small_tables.py computes the same thing in plain PyTorch (the fallback and
 * the reference these kernels are tested against).
 *
 * Layouts (all arrays contiguous, row-major):
 *   values  int64 [N]       every feature's indices, feature-major (the KeyedJaggedTensor layout)
 *   offsets int64 [F*B+1]   bag b of feature f is values[offsets[f*B+b] : offsets[f*B+b+1]]
 *   P       f32   [B, ldp]  the TBE output (feature f's pooled large table at column pcol[f],
 *                           m[f] blocks of d[f] columns for a split feature)
 *   out     f32   [B, ldo]  the collection output (feature f at column ocol[f]); may alias P
 *   R       f32   flat      every small table; row j of feature f at R + relem[f] + j * d[f]
 *   cls     int32 [B, ldc]  one-hot features: the small row of bag b (-1: empty bag), col ccol[f]
 *   cnt     f32   [B, ldn]  multi-hot features: per bag, how many indices fall in each small row
 *   S       f32   [B, lds]  the scaled pooled large rows of in-place mult features (for backward)
 *
 * Feature modes: 0 plain (one table, or a general feature: nothing to compose), 1 small table
 * with one-hot bags, 2 small table with counts, 3 remainder-class split (m TBE slots).
 * Operation: 0 add, 1 mult. mean: divide each pooled table by the bag length.
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Store 16 floats that are read again only in backward, bypassing the cache when possible (so they
 * do not evict the embedding rows that backward updates next). */
static inline void store_saved16(float* dst, const float* src) {
#if defined(__AVX512F__)
  if (((uintptr_t)dst & 63) == 0) { _mm512_stream_ps(dst, _mm512_loadu_ps(src)); return; }
#endif
  memcpy(dst, src, 16 * sizeof(float));
}

#define MAX_D 1024
/* rows per block of the composition (every feature of a block before the next block) */
#define ROW_BLOCK 32

/* floor(x / p) for 0 <= x < 2^52 and p >= 1, with inv = 1.0 / p: one correction step suffices */
static inline int64_t fdiv(int64_t x, int64_t p, double inv) {
  if (p == 1) return x;
  int64_t q = (int64_t)((double)x * inv);
  int64_t r = x - q * p;
  if (r < 0) q -= 1;
  else if (r >= p) q += 1;
  return q;
}

/* the digit (x // p) % mod (mod <= 0: no modulo) */
static inline int64_t digit(int64_t x, int64_t p, double pinv, int64_t mod, double modinv) {
  int64_t t = fdiv(x, p, pinv);
  if (mod > 0) t -= fdiv(t, mod, modinv) * mod;
  return t;
}

/* Encode and check every index. Writes the large-table code of every value to code[] (the TBE
 * index) and its small-table class to vcls[] (features with a small table), and per bag the
 * small-table data: cls (mode 1) or cnt (mode 2, zeroed by the caller). Returns the position of
 * the first index outside [0, n[f]), or -1. */
int64_t cemb_encode(const int64_t* values, const int64_t* offsets, int64_t F, int64_t B,
                    const int64_t* mode, const int64_t* n,
                    const int64_t* lp, const double* lpinv, const int64_t* lm, const double* lminv,
                    const int64_t* sp, const double* spinv, const int64_t* sm, const double* sminv,
                    const int64_t* ccol, int64_t* code, int32_t* cls, int64_t ldc, float* cnt, int64_t ldn,
                    int32_t* vcls) {
  for (int64_t f = 0; f < F; ++f) {
    const int64_t s = offsets[f * B], e = offsets[(f + 1) * B];
    const uint64_t nf = (uint64_t)n[f];
    const int64_t md = mode[f], p1 = lp[f], m1 = lm[f], p2 = sp[f], m2 = sm[f];
    const double i1 = lpinv[f], j1 = lminv[f], i2 = spinv[f], j2 = sminv[f];
    uint64_t bad = 0;
    if (md == 0 && p1 == 1 && m1 <= 0) {
      if (code == values) {  /* in place: only the check */
        for (int64_t i = s; i < e; ++i) bad |= (uint64_t)values[i] >= nf;
      } else {
#pragma GCC ivdep
        for (int64_t i = s; i < e; ++i) { const int64_t x = values[i]; bad |= (uint64_t)x >= nf; code[i] = x; }
      }
    } else if (md == 0) {
      for (int64_t i = s; i < e; ++i) {
        const int64_t x = values[i]; bad |= (uint64_t)x >= nf;
        code[i] = ((uint64_t)x < nf) ? digit(x, p1, i1, m1, j1) : x;  /* (a bad index stays for the message) */
      }
    } else if (p2 == 1 && m2 == p1 && m1 <= 0) {
      /* quotient-remainder: one division gives both codes */
      const double inv = i1;
      /* (code may be values itself: every element is read before it is written, at the same index) */
#pragma GCC ivdep
      for (int64_t i = s; i < e; ++i) {
        const int64_t x = values[i];
        const int64_t okm = -(int64_t)((uint64_t)x < nf);  /* all ones when x is in range */
        bad |= (uint64_t)~okm;
        int64_t q = (int64_t)((double)x * inv);
        int64_t r = x - q * p1;
        q += (int64_t)(r >= p1) - (int64_t)(r < 0);
        r = x - q * p1;
        code[i] = (q & okm) | (x & ~okm);
        vcls[i] = (int32_t)(r & okm);
      }
    } else {
      for (int64_t i = s; i < e; ++i) {
        const int64_t x = values[i]; bad |= (uint64_t)x >= nf;
        const int64_t y = ((uint64_t)x < nf) ? x : 0;
        code[i] = ((uint64_t)x < nf) ? digit(y, p1, i1, m1, j1) : x;
        vcls[i] = (int32_t)digit(y, p2, i2, m2, j2);
      }
    }
    if (bad) {
      for (int64_t i = s; i < e; ++i) if ((uint64_t)values[i] >= nf) return i;
    }
    if (md == 1) {
      int32_t* c = cls + ccol[f];
      const int64_t* off = offsets + f * B;
      for (int64_t b = 0; b < B; ++b) c[b * ldc] = (off[b + 1] > off[b]) ? vcls[off[b]] : -1;
    } else if (md == 2) {
      const int64_t* off = offsets + f * B;
      if (m2 > 0 && m2 <= 8) {
        /* eight counters in registers: no store-to-load chains when a class repeats */
        for (int64_t b = 0; b < B; ++b) {
          int32_t c8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          for (int64_t i = off[b]; i < off[b + 1]; ++i) {
            const int32_t c = vcls[i];
            for (int j = 0; j < 8; ++j) c8[j] += (c == j);
          }
          float* cb = cnt + b * ldn + ccol[f];
          for (int64_t j = 0; j < m2; ++j) cb[j] = (float)c8[j];
        }
      } else {
        for (int64_t b = 0; b < B; ++b) {
          float* cb = cnt + b * ldn + ccol[f];
          for (int64_t i = off[b]; i < off[b + 1]; ++i) cb[vcls[i]] += 1.0f;
        }
      }
    }
  }
  return -1;
}

/* The TBE input when some feature is split by remainder class: slot j of split feature f holds,
 * for every bag b, the codes of the indices of class j. Non-split features keep their order.
 * tbe_off has (total slots) * B + 1 entries; slot_base[f] is the first slot of feature f and
 * slot_base[F] the total. */
void cemb_split_layout(const int64_t* code, const int32_t* vcls, const int64_t* offsets, int64_t F, int64_t B,
                       const int64_t* mode, const int64_t* m, const int64_t* slot_base,
                       int64_t* tbe_idx, int64_t* tbe_off) {
  int64_t pos = 0;
  for (int64_t f = 0; f < F; ++f) {
    const int64_t base = slot_base[f] * B;
    if (mode[f] != 3) {
      for (int64_t b = 0; b < B; ++b) {
        tbe_off[base + b] = pos;
        for (int64_t i = offsets[f * B + b]; i < offsets[f * B + b + 1]; ++i) tbe_idx[pos++] = code[i];
      }
      continue;
    }
    const int64_t nb = m[f] * B, start = pos;
    int64_t* off = tbe_off + base;
    for (int64_t k = 0; k < nb; ++k) off[k] = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = offsets[f * B + b]; i < offsets[f * B + b + 1]; ++i) off[(int64_t)vcls[i] * B + b] += 1;
    for (int64_t k = 0; k < nb; ++k) { const int64_t c = off[k]; off[k] = pos; pos += c; }
    /* scatter with off[] as running cursors: afterwards off[k] is the end of slot-bag k */
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = offsets[f * B + b]; i < offsets[f * B + b + 1]; ++i) tbe_idx[off[(int64_t)vcls[i] * B + b]++] = code[i];
    for (int64_t k = nb - 1; k > 0; --k) off[k] = off[k - 1];
    if (nb) off[0] = start;
  }
  tbe_off[slot_base[F] * B] = pos;
}

static inline float bag_scale(const int64_t* off, int64_t b, int64_t mean) {
  if (!mean) return 1.0f;
  const int64_t L = off[b + 1] - off[b];
  return L > 0 ? 1.0f / (float)L : 1.0f;
}

/* The small rows of a bag, scaled by s, into rp: the row of class c (mode 1; zeros when c < 0,
 * an empty bag) or the sum of the feature's mf rows weighted by the bag's counts cb (mode 2). */
static inline void small_rows(float* rp, const float* Rf, int64_t D, float s, int64_t md, int32_t c,
                              const float* cb, int64_t mf) {
  if (md == 1) {
    if (c >= 0) { const float* r = Rf + (int64_t)c * D; for (int64_t k = 0; k < D; ++k) rp[k] = r[k] * s; }
    else for (int64_t k = 0; k < D; ++k) rp[k] = 0.0f;
    return;
  }
  for (int64_t k = 0; k < D; ++k) rp[k] = 0.0f;
  for (int64_t j = 0; j < mf; ++j) {
    const float w = cb[j] * s;
    const float* r = Rf + j * D;
    for (int64_t k = 0; k < D; ++k) rp[k] += w * r[k];
  }
}

/* One feature of the forward composition, for a width D known at compile time (or not). */
#define COMPOSE_FWD(NAME, DDECL)                                                                      \
static void NAME(const float* P, int64_t ldp, float* out, int64_t ldo, const float* Rf, const int32_t* cls,   \
                 int64_t ldc, const float* cnt, int64_t ldn, float* S, int64_t lds, const int64_t* off,       \
                 int64_t B, int64_t md, int64_t op, int64_t mean, int64_t df, int64_t mf, int64_t pcol,         \
                 int64_t ocol, int64_t ccol, int64_t scol) {                                                  \
  DDECL;                                                                                                  \
  const int inplace = (out == P);                                                                         \
  for (int64_t b = 0; b < B; ++b) {                                                                       \
    const float s = bag_scale(off, b, mean);                                                              \
    const float* p = P + b * ldp + pcol;                                                                  \
    float* o = out + b * ldo + ocol;                                                                      \
    if (md == 0) {                                                                                        \
      if (!inplace || s != 1.0f) for (int64_t k = 0; k < D; ++k) o[k] = p[k] * s;                          \
      continue;                                                                                           \
    }                                                                                                     \
    float rp[MAX_D];                                                                                      \
    if (md == 3) {                                                                                        \
      for (int64_t k = 0; k < D; ++k) rp[k] = 0.0f;                                                        \
      for (int64_t j = 0; j < mf; ++j) {                                                                  \
        const float* r = Rf + j * D; const float* pj = p + j * D;                                         \
        for (int64_t k = 0; k < D; ++k) rp[k] += r[k] * pj[k];                                             \
      }                                                                                                   \
      for (int64_t k = 0; k < D; ++k) o[k] = rp[k] * s;                                                    \
      continue;                                                                                           \
    }                                                                                                     \
    small_rows(rp, Rf, D, s, md, md == 1 ? cls[b * ldc + ccol] : -1, cnt + b * ldn + ccol, mf);           \
    float pv[MAX_D];                                                                                      \
    for (int64_t k = 0; k < D; ++k) pv[k] = p[k] * s;                                                      \
    if (op) {                                                                                             \
      if (S && scol >= 0) {                                                                               \
        float* sv = S + b * lds + scol;                                                                   \
        if (D % 16 == 0) for (int64_t k = 0; k < D; k += 16) store_saved16(sv + k, pv + k);                \
        else for (int64_t k = 0; k < D; ++k) sv[k] = pv[k];                                               \
      }                                                                                                   \
      for (int64_t k = 0; k < D; ++k) o[k] = pv[k] * rp[k];                                                \
    } else {                                                                                              \
      for (int64_t k = 0; k < D; ++k) o[k] = pv[k] + rp[k];                                                \
    }                                                                                                     \
  }                                                                                                       \
}

COMPOSE_FWD(fwd16, const int64_t D = 16; (void)df)
COMPOSE_FWD(fwd32, const int64_t D = 32; (void)df)
COMPOSE_FWD(fwd64, const int64_t D = 64; (void)df)
COMPOSE_FWD(fwdany, const int64_t D = df)

/* Forward composition. out may alias P (then every non-split feature has ocol == pcol); S (may
 * be NULL) receives the scaled pooled large rows of mult features, which backward needs when
 * out overwrote P. */
void cemb_compose_forward(const float* P, int64_t ldp, float* out, int64_t ldo, const float* R,
                          const int32_t* cls, int64_t ldc, const float* cnt, int64_t ldn, float* S, int64_t lds,
                          const int64_t* offsets, int64_t F, int64_t B, const int64_t* mode, const int64_t* op,
                          const int64_t* mean, const int64_t* d, const int64_t* m, const int64_t* pcol,
                          const int64_t* ocol, const int64_t* relem, const int64_t* ccol, const int64_t* scol) {
  /* blocks of rows, every feature per block: the block's rows stay in cache across features */
  for (int64_t b0 = 0; b0 < B; b0 += ROW_BLOCK) {
    const int64_t nb = B - b0 < ROW_BLOCK ? B - b0 : ROW_BLOCK;
    for (int64_t f = 0; f < F; ++f) {
      if (mode[f] == 0 && !mean[f] && out == P) continue;
      const float* Rf = mode[f] ? R + relem[f] : 0;
      const int64_t df = d[f];
      void (*fn)(const float*, int64_t, float*, int64_t, const float*, const int32_t*, int64_t, const float*,
                 int64_t, float*, int64_t, const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                 int64_t, int64_t, int64_t, int64_t) = df == 16 ? fwd16 : df == 32 ? fwd32 : df == 64 ? fwd64 : fwdany;
      fn(P + b0 * ldp, ldp, out + b0 * ldo, ldo, Rf, cls + b0 * ldc, ldc, cnt + b0 * ldn, ldn, S ? S + b0 * lds : 0,
         lds, offsets + f * B + b0, nb, mode[f], op[f], mean[f], df, m[f], pcol[f], ocol[f], ccol[f], scol[f]);
    }
  }
#if defined(__AVX512F__)
  _mm_sfence();  /* the streamed stores are visible before backward reads them */
#endif
}

/* One feature of the backward composition. */
#define COMPOSE_BWD(NAME, DDECL)                                                                      \
static void NAME(const float* g, int64_t ldg, float* gP, int64_t ldp, const float* P, const float* Rf,        \
                 float* gRf, const int32_t* cls, int64_t ldc, const float* cnt, int64_t ldn, const float* S,   \
                 int64_t lds, const int64_t* off, int64_t B, int64_t md, int64_t op, int64_t mean, int64_t df,  \
                 int64_t mf, int64_t pcol, int64_t ocol, int64_t ccol, int64_t scol) {                         \
  DDECL;                                                                                                  \
  float acc[MAX_D * 8];                                                                                   \
  const int64_t nacc = (md == 1 || md == 2) && mf * D <= MAX_D * 8 ? mf : 0;                                          \
  for (int64_t k = 0; k < nacc * D; ++k) acc[k] = 0.0f;                                                    \
  for (int64_t b = 0; b < B; ++b) {                                                                       \
    const float s = bag_scale(off, b, mean);                                                              \
    const float* gg = g + b * ldg + ocol;                                                                 \
    float* gp = gP + b * ldp + pcol;                                                                      \
    if (md == 0) {                                                                                        \
      float gv0[MAX_D];                                                                                   \
      for (int64_t k = 0; k < D; ++k) gv0[k] = gg[k] * s;                                                  \
      for (int64_t k = 0; k < D; ++k) gp[k] = gv0[k];                                                      \
      continue;                                                                                           \
    }                                                                                                     \
    const float* p = P + b * ldp + pcol;                                                                  \
    if (md == 3) {                                                                                        \
      for (int64_t j = 0; j < mf; ++j) {                                                                  \
        const float* r = Rf + j * D; const float* pj = p + j * D; float* gpj = gp + j * D;                \
        float* gr = gRf + j * D;                                                                          \
        for (int64_t k = 0; k < D; ++k) { const float gs = gg[k] * s; gpj[k] = gs * r[k]; gr[k] += gs * pj[k]; } \
      }                                                                                                   \
      continue;                                                                                           \
    }                                                                                                     \
    float rp[MAX_D], h[MAX_D];                                                                            \
    const int32_t c1 = md == 1 ? cls[b * ldc + ccol] : -1;                                                \
    const float* cb = cnt + b * ldn + ccol;                                                               \
    small_rows(rp, Rf, D, s, md, c1, cb, mf);                                                             \
    float gv[MAX_D], pv[MAX_D];                                                                           \
    for (int64_t k = 0; k < D; ++k) gv[k] = gg[k] * s;                                                     \
    if (op) {                                                                                             \
      const float* sv = (S && scol >= 0) ? S + b * lds + scol : 0;                                        \
      if (sv) for (int64_t k = 0; k < D; ++k) pv[k] = sv[k];                                               \
      else for (int64_t k = 0; k < D; ++k) pv[k] = p[k] * s;                                               \
      for (int64_t k = 0; k < D; ++k) { h[k] = gv[k] * pv[k]; rp[k] *= gv[k]; }                             \
    } else {                                                                                              \
      for (int64_t k = 0; k < D; ++k) { h[k] = gv[k]; rp[k] = gv[k]; }                                      \
    }                                                                                                     \
    for (int64_t k = 0; k < D; ++k) gp[k] = rp[k];                                                         \
    if (md == 1) {                                                                                        \
      if (c1 < 0) continue;                                                                               \
      float* gr = nacc ? acc + (int64_t)c1 * D : gRf + (int64_t)c1 * D;                                   \
      for (int64_t k = 0; k < D; ++k) gr[k] += h[k];                                                       \
    } else {                                                                                              \
      for (int64_t j = 0; j < mf; ++j) {                                                                  \
        const float w = cb[j];                                                                            \
        float* gr = nacc ? acc + j * D : gRf + j * D;                                                     \
        for (int64_t k = 0; k < D; ++k) gr[k] += w * h[k];                                                 \
      }                                                                                                   \
    }                                                                                                     \
  }                                                                                                       \
  for (int64_t k = 0; k < nacc * D; ++k) gRf[k] += acc[k];                                                 \
}

COMPOSE_BWD(bwd16, const int64_t D = 16; (void)df)
COMPOSE_BWD(bwd32, const int64_t D = 32; (void)df)
COMPOSE_BWD(bwd64, const int64_t D = 64; (void)df)
COMPOSE_BWD(bwdany, const int64_t D = df)

/* Backward composition: gP (the TBE's grad_output, layout of P) and gR += (layout of R).
 * Mult features read the scaled pooled large rows from S (in-place forward) or from P. */
void cemb_compose_backward(const float* g, int64_t ldg, float* gP, int64_t ldp, const float* P, const float* R,
                           float* gR, const int32_t* cls, int64_t ldc, const float* cnt, int64_t ldn,
                           const float* S, int64_t lds, const int64_t* offsets, int64_t F, int64_t B,
                           const int64_t* mode, const int64_t* op, const int64_t* mean, const int64_t* d,
                           const int64_t* m, const int64_t* pcol, const int64_t* ocol, const int64_t* relem,
                           const int64_t* ccol, const int64_t* scol) {
  for (int64_t b0 = 0; b0 < B; b0 += ROW_BLOCK) {
    const int64_t nb = B - b0 < ROW_BLOCK ? B - b0 : ROW_BLOCK;
    for (int64_t f = 0; f < F; ++f) {
      const float* Rf = mode[f] ? R + relem[f] : 0;
      float* gRf = mode[f] ? gR + relem[f] : 0;
      const int64_t df = d[f];
      void (*fn)(const float*, int64_t, float*, int64_t, const float*, const float*, float*, const int32_t*, int64_t,
                 const float*, int64_t, const float*, int64_t, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t) =
          df == 16 ? bwd16 : df == 32 ? bwd32 : df == 64 ? bwd64 : bwdany;
      fn(g + b0 * ldg, ldg, gP + b0 * ldp, ldp, P + b0 * ldp, Rf, gRf, cls + b0 * ldc, ldc, cnt + b0 * ldn, ldn,
         S ? S + b0 * lds : 0, lds, offsets + f * B + b0, nb, mode[f], op[f], mean[f], df, m[f], pcol[f], ocol[f],
         ccol[f], scol[f]);
    }
  }
}

/* Checks the offsets (offsets[0] == 0, non-decreasing, offsets[F*B] == N) and writes the
 * largest bag of every feature. Returns -1, or the first position at fault. */
int64_t cemb_bag_lengths(const int64_t* offsets, int64_t F, int64_t B, int64_t N, int64_t* maxlen) {
  if (offsets[0] != 0) return 0;
  for (int64_t f = 0; f < F; ++f) {
    int64_t mx = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = offsets[f * B + b + 1] - offsets[f * B + b];
      if (L < 0) return f * B + b + 1;
      if (L > mx) mx = L;
    }
    maxlen[f] = mx;
  }
  return offsets[F * B] == N ? -1 : F * B;
}

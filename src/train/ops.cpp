// The training ops: forward/backward pairs in f32 (see ops.h for the conventions).
//
// Each backward comment restates the forward line it differentiates, so the calculus can be
// checked line by line. tests/test_train.cpp checks every pair by central differences against a
// scalar double-precision reference and the whole model against the PyTorch oracle.
#include "train/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "m3/error.h"
#include "m3/kernels.h"

namespace m3::train {

// ---- embedding ----------------------------------------------------------------------------------

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * C, table + int64_t(tokens[n]) * C, C * sizeof(float));
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t C) {
  // forward: out[n] = table[tokens[n]], so each row's gradient lands on its token's row (serial:
  // a token may repeat).
  for (int64_t n = 0; n < N; ++n) {
    float* row = dtable + int64_t(tokens[n]) * C;
    const float* d = dout + n * C;
    for (int64_t i = 0; i < C; ++i) row[i] += d[i];
  }
}

// ---- rmsnorm ------------------------------------------------------------------------------------

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C, float eps,
                     ThreadPool* pool) {
  parallel(pool, N, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* x = inp + n * C;
      double ss = 0;
      for (int64_t i = 0; i < C; ++i) ss += double(x[i]) * x[i];
      const float s = static_cast<float>(1.0 / std::sqrt(ss / double(C) + double(eps)));
      float* o = out + n * C;
      for (int64_t i = 0; i < C; ++i) o[i] = x[i] * s * weight[i];
      rstd[n] = s;
    }
  });
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    const float* d = dout + n * C;
    float* dx = dinp + n * C;
    const float s = rstd[n];
    // forward: out[i] = xhat[i] · w[i] with xhat = x · s, s = (mean(x²) + eps)^(−1/2)
    // so dw[i] += d[i] · xhat[i] and dxhat[i] = d[i] · w[i];
    // ds/dx[j] = −s³ · x[j] / C, hence dx[j] = s · dxhat[j] − s · xhat[j] · mean_i(dxhat[i] · xhat[i]).
    double dot = 0;
    for (int64_t i = 0; i < C; ++i) {
      const float xhat = x[i] * s;
      dweight[i] += d[i] * xhat;
      dot += double(d[i]) * weight[i] * xhat;
    }
    const float mean = static_cast<float>(dot / double(C));
    for (int64_t i = 0; i < C; ++i) dx[i] += s * (d[i] * weight[i] - x[i] * s * mean);
  }
}

// ---- matmul -------------------------------------------------------------------------------------

void matmul_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t IC, int64_t OC, ThreadPool* pool) {
  // out[n0:n1] = inp[n0:n1] · Wᵀ, one sgemm per thread over its rows
  parallel(pool, N, [&](int64_t n0, int64_t n1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n1 - n0), int(OC), int(IC), 1.0f, inp + n0 * IC, int(IC),
                weight, int(IC), 0.0f, out + n0 * OC, int(OC));
  });
}

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight, int64_t N,
                     int64_t IC, int64_t OC, ThreadPool* pool) {
  // forward: out = inp · Wᵀ, so
  //   dinp += dout · W          (N,OC)·(OC,IC), split over rows n
  //   dW   += doutᵀ · inp       (OC,N)·(N,IC),  split over weight rows o (dout's columns o0:o1)
  parallel(pool, N, [&](int64_t n0, int64_t n1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n1 - n0), int(IC), int(OC), 1.0f, dout + n0 * OC, int(OC),
                weight, int(IC), 1.0f, dinp + n0 * IC, int(IC));
  });
  parallel(pool, OC, [&](int64_t o0, int64_t o1) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(o1 - o0), int(IC), int(N), 1.0f, dout + o0, int(OC), inp,
                int(IC), 1.0f, dweight + o0 * IC, int(IC));
  });
}

// ---- rope ---------------------------------------------------------------------------------------

RopeTable rope_table(int64_t T, int64_t D, float theta, int64_t pos0) {
  RopeTable r;
  r.T = T;
  r.D = D;
  r.cos.resize(static_cast<size_t>(T * D / 2));
  r.sin.resize(r.cos.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double angle = double(pos0 + t) * std::pow(double(theta), -2.0 * double(i) / double(D));
      r.cos[t * (D / 2) + i] = static_cast<float>(std::cos(angle));
      r.sin[t * (D / 2) + i] = static_cast<float>(std::sin(angle));
    }
  return r;
}

namespace {
// Rotates every pair of x (B,T,nh,D) by +angle (sign = 1) or −angle (sign = −1).
void rope_rotate(float* x, const RopeTable& rope, int64_t B, int64_t nh, float sign) {
  const int64_t T = rope.T, D = rope.D, P = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* c = rope.cos.data() + t * P;
      const float* s = rope.sin.data() + t * P;
      float* row = x + (b * T + t) * nh * D;
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t i = 0; i < P; ++i) {
          float* pair = row + h * D + 2 * i;
          const float a = pair[0], e = pair[1], si = sign * s[i];
          pair[0] = a * c[i] - e * si;
          pair[1] = a * si + e * c[i];
        }
    }
}
}  // namespace

void rope_forward(float* x, const RopeTable& rope, int64_t B, int64_t nh) { rope_rotate(x, rope, B, nh, 1.0f); }

void rope_backward(float* dx, const RopeTable& rope, int64_t B, int64_t nh) {
  // forward: (a', e') = (a·c − e·s, a·s + e·c), a rotation R(θ) of the pair; its Jacobian is R(θ)
  // and the transpose of a rotation is the rotation by −θ: (da, de) = (a'·c + e'·s, −a'·s + e'·c).
  // In place: the rotated gradient replaces dq/dk (nothing else reads them).
  rope_rotate(dx, rope, B, nh, -1.0f);
}

// ---- attention ----------------------------------------------------------------------------------

int64_t attention_scratch_floats(int64_t T, int64_t E, const ThreadPool* pool) {
  return (pool ? pool->size() : 1) * T * (E + T);
}

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v, int64_t B, int64_t T,
                       int64_t H, int64_t G, int64_t D, const AttentionExt& ext, ThreadPool* pool) {
  const int64_t HD = H * D, GD = G * D, group = H / G, E = ext.max_rows, S = E + T, blk = ext.block;
  const int64_t n_blocks = (T + blk - 1) / blk;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  parallel(pool, B * H, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / H, h = item % H, g = h / group;
      const float* qh = q + b * T * HD + h * D;  // (T,D) with row stride HD
      const float* kg = k + b * T * GD + g * D;  // (T,D) with row stride GD
      const float* vg = v + b * T * GD + g * D;
      float* oh = out + b * T * HD + h * D;
      float* P = att + (b * H + h) * T * S;  // (T,S)
      for (int64_t c = 0; c < n_blocks; ++c) {
        // Block [r0, r1) only needs own keys 0..r1−1: most of the masked triangle is skipped
        // while every product stays one sgemm.
        const int64_t r0 = c * blk, r1 = std::min(T, r0 + blk), rows = r1 - r0;
        const int64_t ne = E ? ext.rows[b * n_blocks + c] : 0;
        const float* ek = E ? ext.k + ((b * n_blocks + c) * E) * GD + g * D : nullptr;
        const float* ev = E ? ext.v + ((b * n_blocks + c) * E) * GD + g * D : nullptr;
        // scores[t, e] = q[t]·ext_k[e] / √D and scores[t, E+s] = q[t]·k[s] / √D
        if (ne > 0)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(ne), int(D), scale, qh + r0 * HD, int(HD), ek,
                      int(GD), 0.0f, P + r0 * S, int(S));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(r1), int(D), scale, qh + r0 * HD, int(HD), kg,
                    int(GD), 0.0f, P + r0 * S + E, int(S));
        // att[t, :] = one softmax over the external rows and s ≤ t; masked entries are 0 so the
        // block products ignore them
        for (int64_t t = r0; t < r1; ++t) {
          float* pe = P + t * S;
          float* po = pe + E;
          float mx = -INFINITY;
          for (int64_t e = 0; e < ne; ++e) mx = std::max(mx, pe[e]);
          for (int64_t s2 = 0; s2 <= t; ++s2) mx = std::max(mx, po[s2]);
          double sum = 0;
          for (int64_t e = 0; e < ne; ++e) sum += (pe[e] = std::exp(pe[e] - mx));
          for (int64_t s2 = 0; s2 <= t; ++s2) sum += (po[s2] = std::exp(po[s2] - mx));
          const float inv = static_cast<float>(1.0 / sum);
          for (int64_t e = 0; e < ne; ++e) pe[e] *= inv;
          for (int64_t s2 = 0; s2 <= t; ++s2) po[s2] *= inv;
          std::fill(pe + ne, pe + E, 0.0f);
          std::fill(po + t + 1, po + r1, 0.0f);
        }
        // out[t] = Σ_e att[t, e] · ext_v[e] + Σ_s att[t, E+s] · v[s]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(r1), 1.0f, P + r0 * S + E, int(S), vg,
                    int(GD), 0.0f, oh + r0 * HD, int(HD));
        if (ne > 0)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(ne), 1.0f, P + r0 * S, int(S), ev,
                      int(GD), 1.0f, oh + r0 * HD, int(HD));
      }
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, float* scratch, const float* dout, const float* q, const float* k,
                        const float* v, const float* att, int64_t B, int64_t T, int64_t H, int64_t G, int64_t D,
                        const AttentionExt& ext, ThreadPool* pool) {
  const int64_t HD = H * D, GD = G * D, group = H / G, E = ext.max_rows, S = E + T, blk = ext.block;
  const int64_t n_blocks = (T + blk - 1) / blk;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  // One work item per (b, g): the group's query heads all add into dk[b,:,g], dv[b,:,g] and the
  // external rows' head-g slices.
  const int n_threads = pool ? pool->size() : 1;
  const int64_t n_items = B * G;
  auto work = [&](int64_t i0, int64_t i1, int thread) {
    float* dP = scratch + int64_t(thread) * T * S;  // (T,S): d att, then d scores
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / G, g = item % G;
      const float* kg = k + b * T * GD + g * D;
      const float* vg = v + b * T * GD + g * D;
      float* dkg = dk + b * T * GD + g * D;
      float* dvg = dv + b * T * GD + g * D;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const float* qh = q + b * T * HD + h * D;
        const float* doh = dout + b * T * HD + h * D;
        float* dqh = dq + b * T * HD + h * D;
        const float* P = att + (b * H + h) * T * S;
        for (int64_t c = 0; c < n_blocks; ++c) {
          const int64_t r0 = c * blk, r1 = std::min(T, r0 + blk), rows = r1 - r0;
          const int64_t ne = E ? ext.rows[b * n_blocks + c] : 0;
          const int64_t eoff = ((b * n_blocks + c) * E) * GD + g * D;
          // forward: out[t] = Σ_e att[t,e]·ext_v[e] + Σ_s att[t,E+s]·v[s], so
          //   d att[t,·] = dout[t]·(ext_v | v)ᵀ,  dv[s] += Σ_t att[t,E+s]·dout[t],  d ext_v[e] likewise
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(r1), int(D), 1.0f, doh + r0 * HD, int(HD), vg,
                      int(GD), 0.0f, dP + r0 * S + E, int(S));
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(r1), int(D), int(rows), 1.0f, P + r0 * S + E, int(S),
                      doh + r0 * HD, int(HD), 1.0f, dvg, int(GD));
          if (ne > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(ne), int(D), 1.0f, doh + r0 * HD, int(HD),
                        ext.v + eoff, int(GD), 0.0f, dP + r0 * S, int(S));
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(ne), int(D), int(rows), 1.0f, P + r0 * S, int(S),
                        doh + r0 * HD, int(HD), 1.0f, ext.dv + eoff, int(GD));
          }
          // forward: att[t,:] = softmax(scores[t,:]) over the external rows and s ≤ t, so
          //   d scores[t,j] = att[t,j] · (d att[t,j] − Σ_u att[t,u] · d att[t,u]);
          // the 1/√D of scores = q·k/√D is folded in here. Masked entries have att = 0 → 0.
          for (int64_t t = r0; t < r1; ++t) {
            const float* pe = P + t * S;
            const float* po = pe + E;
            float* de = dP + t * S;
            float* dd = de + E;
            double dot = 0;
            for (int64_t e = 0; e < ne; ++e) dot += double(pe[e]) * de[e];
            for (int64_t s2 = 0; s2 <= t; ++s2) dot += double(po[s2]) * dd[s2];
            const float fdot = static_cast<float>(dot);
            for (int64_t e = 0; e < ne; ++e) de[e] = pe[e] * (de[e] - fdot) * scale;
            for (int64_t s2 = 0; s2 <= t; ++s2) dd[s2] = po[s2] * (dd[s2] - fdot) * scale;
            std::fill(dd + t + 1, dd + r1, 0.0f);
          }
          // forward: scores[t,·] = q[t]·(ext_k | k)ᵀ (scaled above), so
          //   dq[t] += Σ_j d scores[t,j] · key[j]   and   d key[j] += Σ_t d scores[t,j] · q[t]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(r1), 1.0f, dP + r0 * S + E, int(S),
                      kg, int(GD), 1.0f, dqh + r0 * HD, int(HD));
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(r1), int(D), int(rows), 1.0f, dP + r0 * S + E, int(S),
                      qh + r0 * HD, int(HD), 1.0f, dkg, int(GD));
          if (ne > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(D), int(ne), 1.0f, dP + r0 * S, int(S),
                        ext.k + eoff, int(GD), 1.0f, dqh + r0 * HD, int(HD));
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(ne), int(D), int(rows), 1.0f, dP + r0 * S, int(S),
                        qh + r0 * HD, int(HD), 1.0f, ext.dk + eoff, int(GD));
          }
        }
      }
    }
  };
  if (pool && n_threads > 1) pool->parallel_for(n_items, work);
  else work(0, n_items, 0);
}

// ---- swiglu -------------------------------------------------------------------------------------

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, ThreadPool* pool) {
  // m3::swiglu is the inference kernel (AVX2 exp); chunks of the rows per thread
  parallel(pool, n, [&](int64_t i0, int64_t i1) { swiglu(out + i0, gate + i0, up + i0, i1 - i0); });
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n,
                     ThreadPool* pool) {
  parallel(pool, n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      // forward: out = g·σ(g) · u, so
      //   du += dout · g·σ(g)   and   dg += dout · u · σ(g)·(1 + g·(1 − σ(g)))   (d/dg of g·σ(g))
      const float g = gate[i], sig = 1.0f / (1.0f + std::exp(-g));
      dup[i] += dout[i] * g * sig;
      dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
  });
}

// ---- cross-entropy ------------------------------------------------------------------------------

double crossentropy_forward(float* probs, float* losses, const float* logits, const int32_t* targets, int64_t N, int64_t V,
                            ThreadPool* pool) {
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] < -1 || targets[n] >= V)
      throw Error("target " + std::to_string(targets[n]) + " at row " + std::to_string(n) + " is outside -1.." +
                  std::to_string(V - 1));
  parallel(pool, N, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* p = probs + n * V;
      if (p != logits + n * V) std::memcpy(p, logits + n * V, V * sizeof(float));
      softmax(p, V);
      // −log p[target]; the floor keeps an underflowed probability from giving inf
      losses[n] = targets[n] < 0 ? 0.0f : -std::log(std::max(p[targets[n]], 1e-30f));
    }
  });
  double sum = 0;
  for (int64_t n = 0; n < N; ++n) sum += losses[n];
  return sum;
}

void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss, int64_t N, int64_t V,
                           ThreadPool* pool) {
  parallel(pool, N, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      // forward: loss = −log p[y], p = softmax(logits): d logits[i] = (p[i] − [i == y]) · dloss
      const float* p = probs + n * V;
      float* d = dlogits + n * V;
      if (targets[n] < 0) {
        std::fill(d, d + V, 0.0f);
        continue;
      }
      for (int64_t i = 0; i < V; ++i) d[i] = p[i] * dloss;
      d[targets[n]] -= dloss;
    }
  });
}

}  // namespace m3::train

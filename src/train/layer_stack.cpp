// LayerStack: see layer_stack.h for the forward it runs. Backward runs the same list in reverse,
// each op's *_backward adding into the gradients.
#include "train/layer_stack.h"

#include <cstring>

#include "m3/error.h"

namespace m3::train {

namespace {
Buffer floats(int64_t n) { return Buffer(static_cast<size_t>(n) * sizeof(float)); }
void zero(Buffer& b) { std::memset(b.data(), 0, b.size()); }
}  // namespace

void LayerStack::reserve(const ModelConfig& c, const StackShape& shape, ThreadPool* pool) {
  const int threads = pool ? pool->size() : 1;  // the attention scratch is per thread
  if (shape == shape_ && threads == threads_ && dim_ == c.dim) return;
  shape_ = shape;
  threads_ = threads;
  dim_ = c.dim;
  gd_ = int64_t(c.n_kv_heads) * c.head_dim;
  const int64_t L = shape.n_layers, N = int64_t(shape.B) * shape.T, C = c.dim, HD = int64_t(c.n_heads) * c.head_dim,
                GD = gd_, F = c.ffn_dim, S = shape.ext_rows + shape.T;
  *this = LayerStack{};  // release the old buffers before allocating the new ones
  shape_ = shape;
  threads_ = threads;
  dim_ = C;
  gd_ = GD;
  res_ = floats((L + 1) * N * C);
  mid_ = floats(L * N * C);
  xa_ = floats(L * N * C);
  xf_ = floats(L * N * C);
  rstd_a_ = floats(L * N);
  rstd_f_ = floats(L * N);
  q_ = floats(L * N * HD);
  ao_ = floats(L * N * HD);
  k_ = floats(L * N * GD);
  v_ = floats(L * N * GD);
  att_ = floats(L * shape.B * c.n_heads * int64_t(shape.T) * S);
  a_ = floats(L * N * F);
  u_ = floats(L * N * F);
  m_ = floats(L * N * F);
  dres_ = floats(N * C);
  dx_ = floats(N * C);
  dq_ = floats(N * HD);
  dao_ = floats(N * HD);
  dk_ = floats(N * GD);
  dv_ = floats(N * GD);
  da_ = floats(N * F);
  du_ = floats(N * F);
  dm_ = floats(N * F);
  scratch_ = floats(attention_scratch_floats(shape.T, shape.ext_rows, pool));
  rope_ = rope_table(shape.T, c.head_dim, c.rope_theta, shape.pos0);
}

void LayerStack::forward(const ModelConfig& c, const ParamViews& w, const int32_t* tokens, const AttentionExt* ext,
                         const QKObserver& observer, ThreadPool* pool) {
  const StackShape& sh = shape_;
  const int64_t B = sh.B, T = sh.T, N = B * T, C = c.dim, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, HD = H * D,
                GD = G * D, F = c.ffn_dim, S = sh.ext_rows + T;
  AttentionExt plain;
  plain.block = sh.block;
  float* proj = dres_.as<float>();  // (N,C) the projection added to the residual stream

  embedding_forward(res_.as<float>(), tokens, w.token_embd, N, C);
  for (int l = 0; l < sh.n_layers; ++l) {
    const LayerParams& p = w.layers[static_cast<size_t>(l)];
    const float* res = res_.as<float>() + l * N * C;
    float* mid = mid_.as<float>() + l * N * C;
    float* res_next = res_.as<float>() + (l + 1) * N * C;
    float* xa = xa_.as<float>() + l * N * C;
    float* xf = xf_.as<float>() + l * N * C;
    float* q = q_.as<float>() + l * N * HD;
    float* k = k_.as<float>() + l * N * GD;
    float* v = v_.as<float>() + l * N * GD;
    float* ao = ao_.as<float>() + l * N * HD;
    float* att = att_.as<float>() + l * B * H * T * S;
    float* ga = a_.as<float>() + l * N * F;
    float* up = u_.as<float>() + l * N * F;
    float* m = m_.as<float>() + l * N * F;

    rmsnorm_forward(xa, rstd_a_.as<float>() + l * N, res, p.attn_norm, N, C, c.rms_eps, pool);
    matmul_forward(q, xa, p.wq, N, C, HD, pool);
    matmul_forward(k, xa, p.wk, N, C, GD, pool);
    matmul_forward(v, xa, p.wv, N, C, GD, pool);
    if (observer) observer(l, q, k);
    rope_forward(q, rope_, B, H);
    rope_forward(k, rope_, B, G);
    attention_forward(ao, att, q, k, v, B, T, H, G, D, ext ? ext[l] : plain, pool);
    matmul_forward(proj, ao, p.wo, N, HD, C, pool);
    for (int64_t i = 0; i < N * C; ++i) mid[i] = res[i] + proj[i];

    rmsnorm_forward(xf, rstd_f_.as<float>() + l * N, mid, p.ffn_norm, N, C, c.rms_eps, pool);
    matmul_forward(ga, xf, p.w_gate, N, C, F, pool);
    matmul_forward(up, xf, p.w_up, N, C, F, pool);
    swiglu_forward(m, ga, up, N * F, pool);
    matmul_forward(proj, m, p.w_down, N, F, C, pool);
    for (int64_t i = 0; i < N * C; ++i) res_next[i] = mid[i] + proj[i];
  }
}

void LayerStack::backward(const ModelConfig& c, const ParamViews& w, const ParamViews& dw, const int32_t* tokens,
                          const float* dtop, const float* inj_k, const float* inj_v, const AttentionExt* ext,
                          ThreadPool* pool) {
  const StackShape& sh = shape_;
  const int64_t B = sh.B, T = sh.T, N = B * T, C = c.dim, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, HD = H * D,
                GD = G * D, F = c.ffn_dim, S = sh.ext_rows + T;
  AttentionExt plain;
  plain.block = sh.block;
  float* dres = dres_.as<float>();  // (N,C) d loss / d residual stream, carried down the layers
  float* dx = dx_.as<float>();      // (N,C) d of a normalized input (xa or xf)
  if (dtop) std::memcpy(dres, dtop, static_cast<size_t>(N * C) * sizeof(float));
  else zero(dres_);

  for (int l = sh.n_layers - 1; l >= 0; --l) {
    const LayerParams& p = w.layers[static_cast<size_t>(l)];
    const LayerParams& dp = dw.layers[static_cast<size_t>(l)];
    const float* res = res_.as<float>() + l * N * C;
    const float* mid = mid_.as<float>() + l * N * C;
    const float* xa = xa_.as<float>() + l * N * C;
    const float* xf = xf_.as<float>() + l * N * C;
    const float* q = q_.as<float>() + l * N * HD;
    const float* k = k_.as<float>() + l * N * GD;
    const float* v = v_.as<float>() + l * N * GD;
    const float* ao = ao_.as<float>() + l * N * HD;
    const float* att = att_.as<float>() + l * B * H * T * S;
    const float* ga = a_.as<float>() + l * N * F;
    const float* up = u_.as<float>() + l * N * F;
    const float* m = m_.as<float>() + l * N * F;

    // forward: res[l+1] = mid + m · Wdownᵀ: dres flows on unchanged as d mid, and into the MLP
    zero(dm_);
    matmul_backward(dm_.as<float>(), dp.w_down, dres, m, p.w_down, N, F, C, pool);
    // forward: m = silu(a) · u
    zero(da_);
    zero(du_);
    swiglu_backward(da_.as<float>(), du_.as<float>(), dm_.as<float>(), ga, up, N * F, pool);
    // forward: a = xf · Wgateᵀ, u = xf · Wupᵀ (both read xf, so their d xf add up)
    zero(dx_);
    matmul_backward(dx, dp.w_gate, da_.as<float>(), xf, p.w_gate, N, C, F, pool);
    matmul_backward(dx, dp.w_up, du_.as<float>(), xf, p.w_up, N, C, F, pool);
    // forward: xf = rmsnorm(mid) · ffn_norm; d mid = dres (residual path) + this
    rmsnorm_backward(dres, dp.ffn_norm, dx, mid, p.ffn_norm, rstd_f_.as<float>() + l * N, N, C);

    // forward: mid = res + ao · Woᵀ
    zero(dao_);
    matmul_backward(dao_.as<float>(), dp.wo, dres, ao, p.wo, N, HD, C, pool);
    // forward: ao = attention(q, k, v beside the external rows)
    zero(dq_);
    zero(dk_);
    zero(dv_);
    attention_backward(dq_.as<float>(), dk_.as<float>(), dv_.as<float>(), scratch_.as<float>(), dao_.as<float>(), q, k, v,
                       att, B, T, H, G, D, ext ? ext[l] : plain, pool);
    // other stacks read this layer's post-RoPE keys and values: their gradients join here
    if (inj_k)
      for (int64_t i = 0; i < N * GD; ++i) dk_.as<float>()[i] += inj_k[l * N * GD + i];
    if (inj_v)
      for (int64_t i = 0; i < N * GD; ++i) dv_.as<float>()[i] += inj_v[l * N * GD + i];
    // forward: rope(q), rope(k) in place
    rope_backward(dq_.as<float>(), rope_, B, H);
    rope_backward(dk_.as<float>(), rope_, B, G);
    // forward: q = xa · Wqᵀ, k = xa · Wkᵀ, v = xa · Wvᵀ
    zero(dx_);
    matmul_backward(dx, dp.wq, dq_.as<float>(), xa, p.wq, N, C, HD, pool);
    matmul_backward(dx, dp.wk, dk_.as<float>(), xa, p.wk, N, C, GD, pool);
    matmul_backward(dx, dp.wv, dv_.as<float>(), xa, p.wv, N, C, GD, pool);
    // forward: xa = rmsnorm(res) · attn_norm; d res = d mid (residual path) + this
    rmsnorm_backward(dres, dp.attn_norm, dx, res, p.attn_norm, rstd_a_.as<float>() + l * N, N, C);
  }
  // forward: res[0] = token_embd[tokens]
  embedding_backward(dw.token_embd, dres, tokens, N, C);
}

}  // namespace m3::train

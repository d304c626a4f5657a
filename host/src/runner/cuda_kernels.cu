// The encoder's primitives other than GEMMs, for NVIDIA GPUs. Compiled at
// run time with NVRTC (no CUDA toolkit at build time), loaded once per
// device. Activations are row-major FP32; row kernels run one block of
// BLOCK threads per row.

#define BLOCK 256

// Sum of `v` over the block; every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float partial[BLOCK / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? partial[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    __syncthreads();  // `partial` is reused by the next call
    return v;
}

// Maximum of `v` over the block; every thread gets the result.
__device__ float block_max(float v) {
    __shared__ float partial[BLOCK / 32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? partial[lane] : -3.402823466e+38f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    __syncthreads();
    return v;
}

// out[t, :] = word[ids[t]] + position[t % seq] + token_type[types[t]]
extern "C" __global__ void embed(float* out, const float* word, const float* position,
                                 const float* token_type, const long long* ids,
                                 const long long* types, int rows, int seq, int hidden) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * hidden) return;
    const int t = i / hidden, j = i % hidden;
    out[i] = word[ids[t] * hidden + j] + position[(long long)(t % seq) * hidden + j] +
             token_type[types[t] * hidden + j];
}

// x[r, :] += bias, in place (after a GEMM).
extern "C" __global__ void add_bias(float* x, const float* bias, int rows, int cols) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    x[i] += bias[i % cols];
}

extern "C" __global__ void add(float* out, const float* a, const float* b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// The exact GELU, 0.5·x·(1 + erf(x/√2)).
extern "C" __global__ void gelu_erf(float* out, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

// Layer norm of each row: (x - mean) / sqrt(var + eps) · gamma + beta.
extern "C" __global__ void layer_norm(float* out, const float* x, const float* gamma,
                                      const float* beta, int cols, float eps) {
    const float* row = x + (long long)blockIdx.x * cols;
    float* dst = out + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += row[j];
    const float mean = block_sum(s) / cols;
    float v = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float d = row[j] - mean;
        v += d * d;
    }
    const float inv = rsqrtf(block_sum(v) / cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        dst[j] = (row[j] - mean) * inv * gamma[j] + beta[j];
}

// [batch, seq, heads, head_dim] -> [batch, heads, seq, head_dim]
extern "C" __global__ void split_heads(float* out, const float* x, int batch, int seq, int heads,
                                       int head_dim) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)batch * seq * heads * head_dim) return;
    const int d = i % head_dim;
    long long r = i / head_dim;
    const int t = r % seq;
    r /= seq;
    const int h = r % heads;
    const long long b = r / heads;
    out[i] = x[((b * seq + t) * heads + h) * head_dim + d];
}

// [batch, heads, seq, head_dim] -> [batch, seq, heads, head_dim]
extern "C" __global__ void merge_heads(float* out, const float* x, int batch, int seq, int heads,
                                       int head_dim) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)batch * seq * heads * head_dim) return;
    const int d = i % head_dim;
    long long r = i / head_dim;
    const int h = r % heads;
    r /= heads;
    const int t = r % seq;
    const long long b = r / seq;
    out[i] = x[((b * heads + h) * seq + t) * head_dim + d];
}

// Softmax over each row of attention scores [batch, heads, seq, seq], in
// place, with padding keys pushed down by the same bias as the CPU path:
// (mask - 1) · 10000.
extern "C" __global__ void masked_softmax(float* scores, const float* mask, int heads, int seq) {
    float* row = scores + (long long)blockIdx.x * seq;
    const float* keys = mask + (long long)(blockIdx.x / (heads * seq)) * seq;
    float m = -3.402823466e+38f;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) {
        row[j] += (keys[j] - 1.0f) * 10000.0f;
        m = fmaxf(m, row[j]);
    }
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) {
        row[j] = expf(row[j] - m);
        s += row[j];
    }
    const float inv = 1.0f / block_sum(s);
    for (int j = threadIdx.x; j < seq; j += blockDim.x) row[j] *= inv;
}

// out[b, :] = Σ_t x[b, t, :]·mask[b, t] / max(Σ_t mask[b, t], 1e-9)
extern "C" __global__ void mean_pool(float* out, const float* x, const float* mask, int batch,
                                     int seq, int hidden) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * hidden) return;
    const int b = i / hidden, j = i % hidden;
    float s = 0.0f, n = 0.0f;
    for (int t = 0; t < seq; t++) {
        const float m = mask[b * seq + t];
        s += x[((long long)b * seq + t) * hidden + j] * m;
        n += m;
    }
    out[i] = s / fmaxf(n, 1e-9f);
}

// out[b, :] = x[b, 0, :]
extern "C" __global__ void cls_pool(float* out, const float* x, int batch, int seq, int hidden) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * hidden) return;
    const int b = i / hidden, j = i % hidden;
    out[i] = x[(long long)b * seq * hidden + j];
}

// Each row divided by its L2 norm (at least 1e-12).
extern "C" __global__ void l2_normalize(float* out, const float* x, int cols) {
    const float* row = x + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += row[j] * row[j];
    const float inv = 1.0f / fmaxf(sqrtf(block_sum(s)), 1e-12f);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        out[(long long)blockIdx.x * cols + j] = row[j] * inv;
}

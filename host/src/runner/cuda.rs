//! BERT-family sentence encoders on NVIDIA GPUs, through `cudarc`.
//!
//! The model format is [`super::bert`] and the order of operations
//! [`super::encoder::encode`], both shared with the CPU backend; this module
//! holds the weights in device memory and provides the GPU primitives:
//! GEMMs through cuBLAS, everything else (embedding lookup, layer norm,
//! GELU, masked softmax, head reshapes, pooling) as the CUDA C++ kernels in
//! `cuda_kernels.cu`, compiled at run time with NVRTC.
//!
//! Nothing CUDA is needed to build: the driver, cuBLAS and NVRTC libraries
//! are opened at run time ([`ready`] says which one is missing). cudarc
//! panics where a library is absent, so every entry point checks first.
//!
//! One encoder is one copy of the weights on one device, shared by every
//! runner replica placed there. Forward passes on it take turns (one stream,
//! one cuBLAS handle): on a GPU, throughput comes from batching, not from
//! concurrent passes. A pass runs on the runner's worker thread and returns
//! only when the device has finished it, so the batch's slot in the runner
//! is held exactly as long as the device works for it.

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device as CpuDevice, safetensors::MmapedSafetensors};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::bert::{BertModel, names};
use super::encoder::{EncoderOps, Norm, Projection, encode};
use super::{Backend, NamedTensor, RunnerError};

/// The kernels' source; `BLOCK` there must equal [`BLOCK`].
pub const KERNELS: &str = include_str!("cuda_kernels.cu");

/// Threads per block of every kernel.
const BLOCK: u32 = 256;

/// Whether this host can run the CUDA backend: the driver, cuBLAS and NVRTC
/// libraries load and the kernels compile. Checked once per process.
pub fn ready() -> Result<(), String> {
    compiled_kernels().map(|_| ())
}

/// The GPUs this backend can run on (possibly none), or why there are none
/// it can use: discovery's reason, or what the backend lacks.
pub fn usable_gpus() -> Result<&'static [crate::devices::GpuInfo], String> {
    match crate::devices::gpus() {
        Err(why) => Err(why.clone()),
        Ok(gpus) if gpus.is_empty() => Ok(gpus),
        Ok(gpus) => ready().map(|()| gpus.as_slice()).map_err(|why| format!("a GPU was found but {why}")),
    }
}

/// The kernels as PTX, compiled once per process (the driver JIT-compiles
/// PTX for each device's architecture when the module loads).
fn compiled_kernels() -> Result<&'static Ptx, String> {
    static PTX: OnceLock<Result<Ptx, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        missing_library()?;
        compile_kernels()
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The first CUDA library this host lacks, if any.
fn missing_library() -> Result<(), String> {
    // SAFETY: each only tries to open a shared library.
    let present = unsafe {
        [
            ("the CUDA driver library (libcuda.so)", cudarc::driver::sys::is_culib_present()),
            ("cuBLAS (libcublas.so)", cudarc::cublas::sys::is_culib_present()),
            ("the NVRTC runtime compiler (libnvrtc.so)", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    match present.iter().find(|(_, found)| !found) {
        Some((what, _)) => Err(format!("{what} was not found")),
        None => Ok(()),
    }
}

/// Compiles the kernels with NVRTC (needs only libnvrtc, no GPU) for
/// NVRTC's default virtual architecture, which the driver JIT-compiles for
/// any newer device.
pub fn compile_kernels() -> Result<Ptx, String> {
    compile_kernels_for(None)
}

/// [`compile_kernels`] for one virtual architecture (`"compute_90"`).
pub fn compile_kernels_for(arch: Option<&'static str>) -> Result<Ptx, String> {
    // SAFETY: only tries to open a shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the NVRTC runtime compiler (libnvrtc.so) was not found".into());
    }
    let options =
        cudarc::nvrtc::CompileOptions { name: Some("cuda_kernels.cu".into()), arch, ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, options).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            format!("compiling the CUDA kernels: {}", log.to_string_lossy())
        }
        other => format!("compiling the CUDA kernels: {other}"),
    })
}

/// `y[rows, out] = x[rows, in] · wᵀ` for a row-major `x` and `y` and a
/// weight stored `[out, in]` (PyTorch's `Linear`). cuBLAS is column-major,
/// where row-major `y` is `yᵀ`: so it computes `yᵀ = w · xᵀ`, with `w` read
/// transposed from its column-major `[in, out]` view. Pass `a = w`, `b = x`.
pub fn linear_gemm(rows: usize, inputs: usize, outputs: usize) -> GemmConfig<f32> {
    let (m, n, k) = (outputs as i32, rows as i32, inputs as i32);
    GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m,
        n,
        k,
        alpha: 1.0,
        lda: k,
        ldb: k,
        beta: 0.0,
        ldc: m,
    }
}

/// Attention scores for `count` (batch × heads) matrices at once:
/// `s[c, i, j] = scale · Σ_d q[c, i, d] · k[c, j, d]`, all `[count, seq, ·]`
/// row-major. Column-major that is `sᵀ = k · qᵀ`. Pass `a = k`, `b = q`.
pub fn scores_gemm(count: usize, seq: usize, head_dim: usize, scale: f32) -> StridedBatchedConfig<f32> {
    let (s, d) = (seq as i32, head_dim as i32);
    StridedBatchedConfig {
        gemm: GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: s,
            n: s,
            k: d,
            alpha: scale,
            lda: d,
            ldb: d,
            beta: 0.0,
            ldc: s,
        },
        batch_size: count as i32,
        stride_a: (seq * head_dim) as i64,
        stride_b: (seq * head_dim) as i64,
        stride_c: (seq * seq) as i64,
    }
}

/// The attention context: `o[c, i, d] = Σ_j p[c, i, j] · v[c, j, d]`.
/// Column-major that is `oᵀ = vᵀ · pᵀ`, both read as stored. Pass `a = v`,
/// `b = p`.
pub fn context_gemm(count: usize, seq: usize, head_dim: usize) -> StridedBatchedConfig<f32> {
    let (s, d) = (seq as i32, head_dim as i32);
    StridedBatchedConfig {
        gemm: GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: d,
            n: s,
            k: s,
            alpha: 1.0,
            lda: d,
            ldb: s,
            beta: 0.0,
            ldc: d,
        },
        batch_size: count as i32,
        stride_a: (seq * head_dim) as i64,
        stride_b: (seq * seq) as i64,
        stride_c: (seq * head_dim) as i64,
    }
}

/// Activations in device memory, `[rows, cols]` row-major.
pub struct DeviceTensor {
    data: CudaSlice<f32>,
    rows: usize,
    cols: usize,
}

/// The attention mask in device memory: 1.0 for tokens, 0.0 for padding.
pub struct DeviceMask {
    values: CudaSlice<f32>,
    batch: usize,
    seq: usize,
}

struct Dense {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    inputs: usize,
    outputs: usize,
}

struct LayerNorm {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
}

struct Layer {
    /// In [`Projection`] order.
    dense: [Dense; 6],
    attention_norm: LayerNorm,
    output_norm: LayerNorm,
}

fn projection_index(which: Projection) -> usize {
    match which {
        Projection::Query => 0,
        Projection::Key => 1,
        Projection::Value => 2,
        Projection::AttentionOut => 3,
        Projection::Intermediate => 4,
        Projection::Output => 5,
    }
}

/// The kernels of `cuda_kernels.cu`, each loaded by its name.
macro_rules! kernels {
    ($($name:ident),+ $(,)?) => {
        struct Kernels {
            $($name: CudaFunction,)+
        }

        /// Every kernel the encoder loads.
        pub const KERNEL_NAMES: &[&str] = &[$(stringify!($name)),+];

        impl Kernels {
            fn load(module: &Arc<CudaModule>) -> Result<Kernels> {
                Ok(Kernels {
                    $($name: module
                        .load_function(stringify!($name))
                        .context(concat!("loading kernel ", stringify!($name)))?,)+
                })
            }
        }
    };
}

kernels!(
    embed,
    add_bias,
    add,
    gelu_erf,
    layer_norm,
    split_heads,
    merge_heads,
    masked_softmax,
    mean_pool,
    cls_pool,
    l2_normalize,
);

/// A loaded encoder: one copy of the weights on one GPU.
pub struct CudaEncoder {
    model: BertModel,
    ordinal: usize,
    gpu_name: String,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    word: CudaSlice<f32>,
    position: CudaSlice<f32>,
    token_type: CudaSlice<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    /// Forward passes take turns on the one stream and cuBLAS handle.
    turn: Mutex<()>,
}

/// Launches one kernel of `cuda_kernels.cu` on the encoder's stream.
macro_rules! launch {
    ($enc:expr, $kernel:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let mut builder = $enc.stream.launch_builder(&$enc.kernels.$kernel);
        $( builder.arg($arg); )+
        // SAFETY: the arguments follow the kernel's signature, and every
        // buffer holds the elements the sizes passed with it describe.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .with_context(|| format!("GPU kernel {}", stringify!($kernel)))
    }};
}

/// One thread per element.
fn per_element(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// A size as the kernels' `int`.
fn int(n: usize) -> Result<i32> {
    i32::try_from(n).with_context(|| format!("{n} elements are more than a GPU kernel call takes"))
}

impl CudaEncoder {
    /// Uploads the model's weights to GPU `ordinal`, once; fails with the
    /// reason (a missing library, too little free memory) rather than
    /// leaving the host half-loaded.
    pub fn load(model: BertModel, ordinal: usize) -> Result<CudaEncoder> {
        let ptx = compiled_kernels().map_err(anyhow::Error::msg)?.clone();
        let ctx = CudaContext::new(ordinal).with_context(|| format!("opening GPU {ordinal}"))?;
        // One stream per encoder: the events cudarc records to order work
        // across streams are not needed, and cost two per allocation.
        // SAFETY: every buffer of this encoder is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let gpu_name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        // SAFETY: the file lives in the store, which nothing rewrites in place.
        let tensors = unsafe { MmapedSafetensors::new(&model.weights)? };
        let weight_bytes = model.weight_bytes;
        let (free, _total) = ctx.mem_get_info()?;
        if (free as u64) < weight_bytes {
            bail!(
                "GPU {ordinal} ({gpu_name}) has {} MiB free, the weights need {} MiB",
                free >> 20,
                weight_bytes.div_ceil(1 << 20)
            );
        }
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(Arc::clone(&stream)).context("creating a cuBLAS handle")?;
        let module = ctx.load_module(ptx).context("loading the CUDA kernels")?;
        let kernels = Kernels::load(&module)?;

        let c = &model.config;
        let h = c.hidden_size;
        let upload = |name: &str, suffix: &str, shape: &[usize]| -> Result<CudaSlice<f32>> {
            let full = model.tensor(name, suffix);
            let t = tensors.load(&full, &CpuDevice::Cpu)?;
            if t.dims() != shape {
                bail!("{full} has shape {:?}, expected {shape:?}", t.dims());
            }
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            stream.clone_htod(&values).with_context(|| format!("uploading {full} to GPU {ordinal}"))
        };
        let dense = |name: String, inputs: usize, outputs: usize| -> Result<Dense> {
            Ok(Dense {
                weight: upload(&name, "weight", &[outputs, inputs])?,
                bias: upload(&name, "bias", &[outputs])?,
                inputs,
                outputs,
            })
        };
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm { gamma: upload(name, "weight", &[h])?, beta: upload(name, "bias", &[h])? })
        };
        let word = upload(names::WORD, "weight", &[c.vocab_size, h])?;
        let position = upload(names::POSITION, "weight", &[c.max_position_embeddings, h])?;
        let token_type = upload(names::TOKEN_TYPE, "weight", &[c.type_vocab_size, h])?;
        let embedding_norm = norm(names::EMBEDDING_NORM)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = |which| names::projection(l, which);
            let i = c.intermediate_size;
            layers.push(Layer {
                dense: [
                    dense(p(Projection::Query), h, h)?,
                    dense(p(Projection::Key), h, h)?,
                    dense(p(Projection::Value), h, h)?,
                    dense(p(Projection::AttentionOut), h, h)?,
                    dense(p(Projection::Intermediate), h, i)?,
                    dense(p(Projection::Output), i, h)?,
                ],
                attention_norm: norm(&names::norm(l, Norm::Attention))?,
                output_norm: norm(&names::norm(l, Norm::Output))?,
            });
        }
        stream.synchronize()?;
        Ok(CudaEncoder {
            model,
            ordinal,
            gpu_name,
            stream,
            blas,
            kernels,
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            turn: Mutex::new(()),
        })
    }

    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: every buffer is written in full by the kernel or GEMM it
        // is allocated for before anything reads it.
        unsafe { self.stream.alloc::<f32>(n) }
            .with_context(|| format!("allocating {} KiB on GPU {}", (n * 4).div_ceil(1024), self.ordinal))
    }

    fn layer_norm(&self, x: &DeviceTensor, norm: &LayerNorm) -> Result<DeviceTensor> {
        let mut out = self.alloc(x.rows * x.cols)?;
        let (cols, eps) = (int(x.cols)?, self.model.config.layer_norm_eps as f32);
        launch!(self, layer_norm, per_row(x.rows), &mut out, &x.data, &norm.gamma, &norm.beta, &cols, &eps)?;
        Ok(DeviceTensor { data: out, rows: x.rows, cols: x.cols })
    }

    /// `[batch·seq, heads·head_dim]` ⇄ `[batch·heads, seq, head_dim]`.
    fn reshape_heads(
        &self,
        x: &DeviceTensor,
        mask: &DeviceMask,
        heads: usize,
        split: bool,
    ) -> Result<CudaSlice<f32>> {
        let n = x.rows * x.cols;
        let mut out = self.alloc(n)?;
        let (b, s, h, d) = (int(mask.batch)?, int(mask.seq)?, int(heads)?, int(x.cols / heads)?);
        if split {
            launch!(self, split_heads, per_element(n), &mut out, &x.data, &b, &s, &h, &d)?;
        } else {
            launch!(self, merge_heads, per_element(n), &mut out, &x.data, &b, &s, &h, &d)?;
        }
        Ok(out)
    }
}

impl EncoderOps for CudaEncoder {
    type T = DeviceTensor;
    type Mask = DeviceMask;

    fn mask(&self, batch: usize, seq: usize, mask: &[i64]) -> Result<DeviceMask> {
        let values: Vec<f32> = mask.iter().map(|&m| if m != 0 { 1.0 } else { 0.0 }).collect();
        Ok(DeviceMask { values: self.stream.clone_htod(&values)?, batch, seq })
    }

    fn embed(&self, batch: usize, seq: usize, ids: &[i64], types: &[i64]) -> Result<DeviceTensor> {
        let hidden = self.model.config.hidden_size;
        let rows = batch * seq;
        let (ids, types) = (self.stream.clone_htod(ids)?, self.stream.clone_htod(types)?);
        let mut out = self.alloc(rows * hidden)?;
        let (r, s, h) = (int(rows)?, int(seq)?, int(hidden)?);
        int(rows * hidden)?;
        launch!(
            self,
            embed,
            per_element(rows * hidden),
            &mut out,
            &self.word,
            &self.position,
            &self.token_type,
            &ids,
            &types,
            &r,
            &s,
            &h
        )?;
        Ok(DeviceTensor { data: out, rows, cols: hidden })
    }

    fn embedding_norm(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        self.layer_norm(x, &self.embedding_norm)
    }

    fn project(&self, layer: usize, which: Projection, x: &DeviceTensor) -> Result<DeviceTensor> {
        let dense = &self.layers[layer].dense[projection_index(which)];
        if x.cols != dense.inputs {
            bail!("{which:?} takes {} columns, got {}", dense.inputs, x.cols);
        }
        let mut out = self.alloc(x.rows * dense.outputs)?;
        let cfg = linear_gemm(x.rows, dense.inputs, dense.outputs);
        // SAFETY: the configuration's sizes are those of the three buffers.
        unsafe { self.blas.gemm(cfg, &dense.weight, &x.data, &mut out) }.context("cuBLAS GEMM")?;
        let (rows, cols) = (int(x.rows)?, int(dense.outputs)?);
        launch!(self, add_bias, per_element(x.rows * dense.outputs), &mut out, &dense.bias, &rows, &cols)?;
        Ok(DeviceTensor { data: out, rows: x.rows, cols: dense.outputs })
    }

    fn norm(&self, layer: usize, which: Norm, x: &DeviceTensor) -> Result<DeviceTensor> {
        let l = &self.layers[layer];
        self.layer_norm(
            x,
            match which {
                Norm::Attention => &l.attention_norm,
                Norm::Output => &l.output_norm,
            },
        )
    }

    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let n = a.rows * a.cols;
        if (b.rows, b.cols) != (a.rows, a.cols) {
            bail!("adding [{}, {}] to [{}, {}]", b.rows, b.cols, a.rows, a.cols);
        }
        let mut out = self.alloc(n)?;
        let count = int(n)?;
        launch!(self, add, per_element(n), &mut out, &a.data, &b.data, &count)?;
        Ok(DeviceTensor { data: out, rows: a.rows, cols: a.cols })
    }

    fn gelu(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        let n = x.rows * x.cols;
        let mut out = self.alloc(n)?;
        let count = int(n)?;
        launch!(self, gelu_erf, per_element(n), &mut out, &x.data, &count)?;
        Ok(DeviceTensor { data: out, rows: x.rows, cols: x.cols })
    }

    fn attention(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        mask: &DeviceMask,
        heads: usize,
    ) -> Result<DeviceTensor> {
        let (seq, head_dim, count) = (mask.seq, q.cols / heads, mask.batch * heads);
        let (qh, kh, vh) = (
            self.reshape_heads(q, mask, heads, true)?,
            self.reshape_heads(k, mask, heads, true)?,
            self.reshape_heads(v, mask, heads, true)?,
        );
        let mut scores = self.alloc(count * seq * seq)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // SAFETY: the configurations' sizes and strides are those of the buffers.
        unsafe {
            self.blas.gemm_strided_batched(scores_gemm(count, seq, head_dim, scale), &kh, &qh, &mut scores)
        }
        .context("cuBLAS batched GEMM (attention scores)")?;
        let (h, s) = (int(heads)?, int(seq)?);
        int(count * seq * seq)?;
        launch!(self, masked_softmax, per_row(count * seq), &mut scores, &mask.values, &h, &s)?;
        let mut context = self.alloc(count * seq * head_dim)?;
        unsafe {
            self.blas.gemm_strided_batched(context_gemm(count, seq, head_dim), &vh, &scores, &mut context)
        }
        .context("cuBLAS batched GEMM (attention context)")?;
        let per_head = DeviceTensor { data: context, rows: q.rows, cols: q.cols };
        let merged = self.reshape_heads(&per_head, mask, heads, false)?;
        Ok(DeviceTensor { data: merged, rows: q.rows, cols: q.cols })
    }

    fn mean_pool(&self, x: &DeviceTensor, mask: &DeviceMask) -> Result<DeviceTensor> {
        let mut out = self.alloc(mask.batch * x.cols)?;
        let (b, s, h) = (int(mask.batch)?, int(mask.seq)?, int(x.cols)?);
        launch!(
            self,
            mean_pool,
            per_element(mask.batch * x.cols),
            &mut out,
            &x.data,
            &mask.values,
            &b,
            &s,
            &h
        )?;
        Ok(DeviceTensor { data: out, rows: mask.batch, cols: x.cols })
    }

    fn cls_pool(&self, x: &DeviceTensor, mask: &DeviceMask) -> Result<DeviceTensor> {
        let (batch, seq) = (mask.batch, mask.seq);
        let mut out = self.alloc(batch * x.cols)?;
        let (b, s, h) = (int(batch)?, int(seq)?, int(x.cols)?);
        launch!(self, cls_pool, per_element(batch * x.cols), &mut out, &x.data, &b, &s, &h)?;
        Ok(DeviceTensor { data: out, rows: batch, cols: x.cols })
    }

    fn l2_normalize(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        let mut out = self.alloc(x.rows * x.cols)?;
        let cols = int(x.cols)?;
        launch!(self, l2_normalize, per_row(x.rows), &mut out, &x.data, &cols)?;
        Ok(DeviceTensor { data: out, rows: x.rows, cols: x.cols })
    }

    fn to_host(&self, x: &DeviceTensor) -> Result<Vec<f32>> {
        let values = self.stream.clone_dtoh(&x.data)?;
        // The pass is over only when the device is done with it.
        self.stream.synchronize()?;
        Ok(values)
    }
}

impl Backend for CudaEncoder {
    fn describe(&self) -> String {
        self.model.describe(&format!("GPU {} ({}, cuBLAS + NVRTC kernels)", self.ordinal, self.gpu_name))
    }

    fn batchable(&self) -> bool {
        true
    }

    fn device(&self) -> crate::devices::Device {
        crate::devices::Device::Cuda(self.ordinal)
    }

    fn weight_bytes(&self) -> u64 {
        self.model.weight_bytes
    }

    fn compute(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunnerError> {
        // A pass that panicked leaves nothing behind that the next one reads.
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.model.compute(inputs, |batch| {
            self.stream.context().bind_to_thread()?;
            encode(self, &self.model.shape(), batch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cublas::sys::cublasOperation_t;

    /// cuBLAS's `sgemmStridedBatched` as documented: column-major,
    /// `C[p] = α·op(A[p])·op(B[p]) + β·C[p]`.
    fn reference_gemm(cfg: &StridedBatchedConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let g = &cfg.gemm;
        let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        for p in 0..cfg.batch_size as usize {
            let (sa, sb, sc) =
                (p * cfg.stride_a as usize, p * cfg.stride_b as usize, p * cfg.stride_c as usize);
            for i in 0..m {
                for j in 0..n {
                    let mut sum = 0.0;
                    for l in 0..k {
                        let x = match g.transa {
                            cublasOperation_t::CUBLAS_OP_N => a[sa + i + l * lda],
                            _ => a[sa + l + i * lda],
                        };
                        let y = match g.transb {
                            cublasOperation_t::CUBLAS_OP_N => b[sb + l + j * ldb],
                            _ => b[sb + j + l * ldb],
                        };
                        sum += x * y;
                    }
                    c[sc + i + j * ldc] = g.alpha * sum + g.beta * c[sc + i + j * ldc];
                }
            }
        }
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() < 1e-4, "element {i}: {x} vs {y}");
        }
    }

    fn single(gemm: GemmConfig<f32>) -> StridedBatchedConfig<f32> {
        StridedBatchedConfig { gemm, batch_size: 1, stride_a: 0, stride_b: 0, stride_c: 0 }
    }

    #[test]
    fn the_linear_gemm_computes_x_times_w_transposed_row_major() {
        let (rows, inputs, outputs) = (5, 3, 4);
        let (x, w) = (values(rows * inputs, 1), values(outputs * inputs, 2));
        let mut y = vec![0.0; rows * outputs];
        reference_gemm(&single(linear_gemm(rows, inputs, outputs)), &w, &x, &mut y);
        let mut expected = vec![0.0; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                expected[r * outputs + o] = (0..inputs).map(|i| x[r * inputs + i] * w[o * inputs + i]).sum();
            }
        }
        close(&y, &expected);
    }

    #[test]
    fn the_attention_gemms_compute_scores_and_context_per_head() {
        let (count, seq, d, scale) = (3, 4, 2, 0.5);
        let (q, k, v) = (values(count * seq * d, 3), values(count * seq * d, 4), values(count * seq * d, 5));
        let mut scores = vec![0.0; count * seq * seq];
        reference_gemm(&scores_gemm(count, seq, d, scale), &k, &q, &mut scores);
        let at = |t: &[f32], c: usize, i: usize, j: usize| t[(c * seq + i) * d + j];
        let mut expected = vec![0.0; count * seq * seq];
        for c in 0..count {
            for i in 0..seq {
                for j in 0..seq {
                    expected[(c * seq + i) * seq + j] =
                        scale * (0..d).map(|x| at(&q, c, i, x) * at(&k, c, j, x)).sum::<f32>();
                }
            }
        }
        close(&scores, &expected);

        // Any weights will do for the context: use the scores themselves.
        let p = scores;
        let mut context = vec![0.0; count * seq * d];
        reference_gemm(&context_gemm(count, seq, d), &v, &p, &mut context);
        let mut expected = vec![0.0; count * seq * d];
        for c in 0..count {
            for i in 0..seq {
                for x in 0..d {
                    expected[(c * seq + i) * d + x] =
                        (0..seq).map(|j| p[(c * seq + i) * seq + j] * at(&v, c, j, x)).sum();
                }
            }
        }
        close(&context, &expected);
    }

    #[test]
    fn the_block_size_matches_the_kernels() {
        assert!(KERNELS.contains(&format!("#define BLOCK {BLOCK}\n")), "BLOCK differs in cuda_kernels.cu");
    }

    /// NVRTC needs no GPU: wherever libnvrtc loads (the tests install it
    /// from PyPI's `nvidia-cuda-nvrtc-cu12`), the kernels must compile and
    /// export every function the encoder loads.
    #[test]
    fn the_kernels_compile_with_nvrtc_where_it_is_installed() {
        // SAFETY: only tries to open a shared library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("WASMBENTO_REQUIRE_NVRTC").is_none(),
                "WASMBENTO_REQUIRE_NVRTC is set but libnvrtc was not found"
            );
            eprintln!("libnvrtc not found: the CUDA kernels were not compiled");
            return;
        }
        let ptx = compile_kernels().unwrap().to_src();
        for name in KERNEL_NAMES {
            assert!(ptx.contains(&format!(".entry {name}(")), "no kernel {name} in the PTX");
        }
        // And for the architectures of the GPUs most likely to run it
        // (T4, A100, H100/H200), where the compiler may choose differently.
        for arch in ["compute_75", "compute_80", "compute_90"] {
            let ptx = compile_kernels_for(Some(arch)).unwrap_or_else(|e| panic!("{arch}: {e}")).to_src();
            assert!(ptx.contains(&format!(".target sm_{}", &arch["compute_".len()..])), "{arch}");
        }
    }

    #[test]
    fn without_cuda_libraries_loading_says_what_is_missing() {
        // SAFETY: only tries to open a shared library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            return; // a machine with a driver: nothing to show here
        }
        let why = ready().unwrap_err();
        assert!(why.contains("libcuda.so") && why.contains("not found"), "{why}");
    }
}

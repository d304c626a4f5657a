//! `wasmbento check-device`: one model on a device against the CPU.
//!
//! Loads the model twice, on the CPU and on the device, embeds the
//! reference sentences with both and compares them (cosine, largest
//! absolute difference), optionally also against reference embeddings from
//! sentence-transformers; then measures throughput at batch 1 and 32 for
//! both in the same run. `scripts/gpu-check.sh` runs it on a GPU machine
//! with only the release binary and the model directory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::devices::Device;
use crate::runner::{Backend, TextTokenizer};

/// Sentences compared when no reference file is given, and whose
/// throughput is measured.
pub const SENTENCES: [&str; 9] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
];

/// The lowest cosine similarity that passes.
pub const MIN_COSINE: f64 = 0.9999;

/// Embeddings computed elsewhere, in the fixture format
/// `{"cases": [{"text": ..., "embedding": [...]}]}`.
#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    pub cases: Vec<ReferenceCase>,
}

#[derive(Debug, serde::Deserialize)]
pub struct ReferenceCase {
    pub text: String,
    pub embedding: Vec<f32>,
}

/// How one backend's embeddings compare with another's.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub min_cosine: f64,
    pub max_abs_diff: f32,
}

/// Items per second of one backend at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub batch: usize,
    pub cpu_items_per_s: f64,
    pub device_items_per_s: f64,
    /// device / cpu.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: String,
    pub backend: String,
    pub sentences: usize,
    /// The device against the CPU.
    pub device_vs_cpu: Agreement,
    /// Each against the reference embeddings, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_vs_reference: Option<Agreement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_vs_reference: Option<Agreement>,
    pub throughput: Vec<Throughput>,
    pub passed: bool,
}

/// Runs the check for the model in `dir` on `device`, timing each
/// measurement for about `time` per backend and batch size. It passes when
/// every cosine it computes (device vs CPU, and each vs the reference when
/// given) is at least [`MIN_COSINE`].
pub fn run(dir: &Path, device: Device, reference: Option<&Reference>, time: Duration) -> Result<Report> {
    if !crate::runner::bert::is_bert_dir(dir) {
        bail!("{}: not a BERT-family model directory (no config.json of a BERT model)", dir.display());
    }
    let tag: crate::tag::Tag = "checked:local".parse()?;
    let cpu = crate::runner::load_backend(&tag, dir, Device::Cpu).context("loading on the CPU")?;
    let dev =
        crate::runner::load_backend(&tag, dir, device).with_context(|| format!("loading on {device}"))?;
    let tokenizer = TextTokenizer::load(dir)?;
    let texts: Vec<String> = match reference {
        Some(r) if !r.cases.is_empty() => r.cases.iter().map(|c| c.text.clone()).collect(),
        Some(_) => bail!("the reference file holds no cases"),
        None => SENTENCES.iter().map(|s| s.to_string()).collect(),
    };
    let embed = |backend: &Arc<dyn Backend>, texts: &[String]| -> Result<Vec<Vec<f32>>> {
        let inputs = tokenizer.encode(texts).map_err(anyhow::Error::msg)?;
        let outputs = backend.compute(&inputs)?;
        let (_, out) = outputs.into_iter().next().context("the model returned nothing")?;
        let values = out.to_f32().map_err(anyhow::Error::msg)?;
        let width = *out.dims.last().context("a 0-D output")?;
        Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
    };
    // One sentence per call, as a single request would run.
    let one_by_one = |backend: &Arc<dyn Backend>| -> Result<Vec<Vec<f32>>> {
        texts.iter().map(|t| embed(backend, std::slice::from_ref(t)).map(|mut v| v.remove(0))).collect()
    };
    let (on_cpu, on_device) = (one_by_one(&cpu)?, one_by_one(&dev)?);
    let device_vs_cpu = agreement(&on_device, &on_cpu);
    let against = |ours: &[Vec<f32>]| {
        reference.map(|r| agreement(ours, &r.cases.iter().map(|c| c.embedding.clone()).collect::<Vec<_>>()))
    };
    let (cpu_vs_reference, device_vs_reference) = (against(&on_cpu), against(&on_device));

    let mut throughput = Vec::new();
    // Throughput on the same short sentences whatever the reference holds
    // (its long texts would measure padding, not the device).
    for batch in [1, 32] {
        let items: Vec<String> = SENTENCES.iter().cycle().take(batch).map(|s| s.to_string()).collect();
        let rate = |backend: &Arc<dyn Backend>| -> Result<f64> {
            embed(backend, &items)?; // warm-up: first-call allocations, JIT
            let (started, mut calls) = (Instant::now(), 0u32);
            while calls < 3 || started.elapsed() < time {
                embed(backend, &items)?;
                calls += 1;
            }
            Ok(f64::from(calls) * batch as f64 / started.elapsed().as_secs_f64())
        };
        let (c, d) = (rate(&cpu)?, rate(&dev)?);
        throughput.push(Throughput { batch, cpu_items_per_s: c, device_items_per_s: d, ratio: d / c });
    }
    let passes = |a: &Option<Agreement>| a.as_ref().is_none_or(|a| a.min_cosine >= MIN_COSINE);
    let passed =
        device_vs_cpu.min_cosine >= MIN_COSINE && passes(&cpu_vs_reference) && passes(&device_vs_reference);
    Ok(Report {
        device: device.to_string(),
        backend: dev.describe(),
        sentences: texts.len(),
        device_vs_cpu,
        cpu_vs_reference,
        device_vs_reference,
        throughput,
        passed,
    })
}

fn agreement(a: &[Vec<f32>], b: &[Vec<f32>]) -> Agreement {
    let mut min_cosine = f64::INFINITY;
    let mut max_abs_diff = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
        let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        let cosine = if x.len() == y.len() { dot / (norm(x) * norm(y)).max(1e-12) } else { 0.0 };
        min_cosine = min_cosine.min(cosine);
        for (p, q) in x.iter().zip(y) {
            max_abs_diff = max_abs_diff.max((p - q).abs());
        }
    }
    if a.len() != b.len() {
        min_cosine = 0.0;
    }
    Agreement { min_cosine, max_abs_diff }
}

/// The report as text for a terminal or a document.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, format!("device {} — {}", report.device, report.backend));
    let show = |a: &Agreement| format!("min cosine {:.6}, max |diff| {:.2e}", a.min_cosine, a.max_abs_diff);
    line(&mut out, format!("{} sentences", report.sentences));
    line(&mut out, format!("  device vs CPU:       {}", show(&report.device_vs_cpu)));
    if let Some(a) = &report.cpu_vs_reference {
        line(&mut out, format!("  CPU vs reference:    {}", show(a)));
    }
    if let Some(a) = &report.device_vs_reference {
        line(&mut out, format!("  device vs reference: {}", show(a)));
    }
    line(&mut out, String::new());
    line(&mut out, "| batch | CPU items/s | device items/s | device / CPU |".into());
    line(&mut out, "|---:|---:|---:|---:|".into());
    for t in &report.throughput {
        line(
            &mut out,
            format!(
                "| {} | {:.1} | {:.1} | {:.2}× |",
                t.batch, t.cpu_items_per_s, t.device_items_per_s, t.ratio
            ),
        );
    }
    line(&mut out, String::new());
    line(
        &mut out,
        if report.passed {
            format!("PASS (cosine ≥ {MIN_COSINE})")
        } else {
            format!("FAIL (cosine < {MIN_COSINE})")
        },
    );
    out
}

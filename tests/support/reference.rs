//! A straightforward BERT forward pass in plain Rust (f64 loops), written
//! from the architecture's definition: the yardstick for the candle runner
//! on the tiny model.

use std::collections::HashMap;

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn w<'a>(weights: &'a Weights, name: &str) -> &'a [f32] {
    &weights.get(name).unwrap_or_else(|| panic!("no weight {name}")).1
}

/// y = x W^T + b for one row.
fn linear(x: &[f64], weight: &[f32], bias: &[f32]) -> Vec<f64> {
    let out = bias.len();
    let inp = x.len();
    (0..out)
        .map(|o| bias[o] as f64 + (0..inp).map(|i| x[i] * weight[o * inp + i] as f64).sum::<f64>())
        .collect()
}

fn layer_norm(x: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + eps).sqrt() * gamma[i] as f64 + beta[i] as f64)
        .collect()
}

fn erf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse; integrate the series instead.
    let mut sum = x;
    let mut term = x;
    let x2 = x * x;
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// The normalised mean-pooled embedding of one sequence of token ids.
pub fn embed(weights: &Weights, ids: &[usize], hidden: usize, heads: usize, layers: usize) -> Vec<f32> {
    let eps = 1e-12;
    let seq = ids.len();
    let word = w(weights, "embeddings.word_embeddings.weight");
    let pos = w(weights, "embeddings.position_embeddings.weight");
    let typ = w(weights, "embeddings.token_type_embeddings.weight");
    let mut x: Vec<Vec<f64>> = (0..seq)
        .map(|t| {
            let e: Vec<f64> = (0..hidden)
                .map(|h| word[ids[t] * hidden + h] as f64 + pos[t * hidden + h] as f64 + typ[h] as f64)
                .collect();
            layer_norm(
                &e,
                w(weights, "embeddings.LayerNorm.weight"),
                w(weights, "embeddings.LayerNorm.bias"),
                eps,
            )
        })
        .collect();
    let hd = hidden / heads;
    for l in 0..layers {
        let p = |m: &str| format!("encoder.layer.{l}.{m}");
        let lin = |row: &[f64], m: &str| {
            linear(row, w(weights, &p(&format!("{m}.weight"))), w(weights, &p(&format!("{m}.bias"))))
        };
        let q: Vec<_> = x.iter().map(|r| lin(r, "attention.self.query")).collect();
        let k: Vec<_> = x.iter().map(|r| lin(r, "attention.self.key")).collect();
        let v: Vec<_> = x.iter().map(|r| lin(r, "attention.self.value")).collect();
        let mut context = vec![vec![0.0; hidden]; seq];
        for h in 0..heads {
            for i in 0..seq {
                let scores: Vec<f64> = (0..seq)
                    .map(|j| {
                        (0..hd).map(|d| q[i][h * hd + d] * k[j][h * hd + d]).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for d in 0..hd {
                    context[i][h * hd + d] = (0..seq).map(|j| exps[j] / total * v[j][h * hd + d]).sum();
                }
            }
        }
        x = (0..seq)
            .map(|i| {
                let attn = lin(&context[i], "attention.output.dense");
                let res: Vec<f64> = attn.iter().zip(&x[i]).map(|(a, b)| a + b).collect();
                let a = layer_norm(
                    &res,
                    w(weights, &p("attention.output.LayerNorm.weight")),
                    w(weights, &p("attention.output.LayerNorm.bias")),
                    eps,
                );
                let inner: Vec<f64> = lin(&a, "intermediate.dense").into_iter().map(gelu).collect();
                let out = lin(&inner, "output.dense");
                let res: Vec<f64> = out.iter().zip(&a).map(|(o, b)| o + b).collect();
                layer_norm(
                    &res,
                    w(weights, &p("output.LayerNorm.weight")),
                    w(weights, &p("output.LayerNorm.bias")),
                    eps,
                )
            })
            .collect();
    }
    let mean: Vec<f64> = (0..hidden).map(|h| x.iter().map(|r| r[h]).sum::<f64>() / seq as f64).collect();
    let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    mean.iter().map(|v| (v / norm) as f32).collect()
}

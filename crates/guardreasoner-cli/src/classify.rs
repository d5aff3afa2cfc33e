use crate::generator::KvCacheArg;
use anyhow::{bail, Context};
use clap::Args;
use futures_util::stream::{self, StreamExt};
use guardreasoner_backend::{classify, GuardOutcome, GuardParams};
use guardreasoner_core::label_scores::{check_threshold, flagged_at};
use guardreasoner_core::{jsonl::read_jsonl, Conversation, ReasoningMode, UncertaintyBand};
use guardreasoner_runtime::{LocalBackend, RuntimeOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct ClassifyArgs {
    /// The user's request to judge.
    #[arg(long, conflicts_with = "input")]
    prompt: Option<String>,
    /// The AI's response to judge, if any.
    #[arg(long, requires = "prompt")]
    response: Option<String>,
    /// Many conversations: a JSONL file of `{"prompt": ..., "response": ...}`, judged in one
    /// batched run; one JSON line per conversation on stdout, in input order.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Model: `default` (the embedded SmolLM2-135M, fetched on first use), a .gguf file, a
    /// Hugging Face directory, or a Hub id such as yueliu1999/GuardReasoner-1B.
    #[arg(long, env = "GUARDREASONER_MODEL")]
    model: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Most tokens of reasoning (the paper allows 2048).
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: u32,
    /// Engine threads (default: physical cores).
    #[arg(long, env = "GUARDREASONER_THREADS")]
    threads: Option<usize>,
    /// Key/value cache storage.
    #[arg(long, env = "GUARDREASONER_KV_CACHE", value_enum, default_value_t = KvCacheArg::Auto)]
    kv_cache: KvCacheArg,
    /// Conversations decoded together in one batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Flag a request or response whose harmful score reaches this probability, instead of
    /// following the label the model wrote. Choose it on a development split.
    #[arg(long, env = "GUARDREASONER_THRESHOLD", value_parser = parse_threshold)]
    threshold: Option<f32>,
    /// Most reasoning tokens before the answer is forced (default: what --max-new-tokens leaves
    /// room for). The answer block always follows its grammar on the local engine.
    #[arg(long, env = "GUARDREASONER_MAX_REASONING_TOKENS")]
    max_reasoning_tokens: Option<u32>,
    #[command(flatten)]
    reasoning: ReasoningArgs,
}

/// How much the guard reasons: shared by classify, eval and serve.
#[derive(Args, Clone, Copy)]
pub struct ReasoningArgs {
    /// `full`: reason step by step, then answer (GuardReasoner). `none`: answer at once, scored.
    /// `auto`: answer at once, and reason fully only where a score is in --uncertainty-band.
    /// Default: the mode the model is meant to run in (the default guard's card says which,
    /// chosen on its development split; any other model: `full`).
    #[arg(long, env = "GUARDREASONER_REASONING")]
    pub reasoning: Option<ReasoningMode>,
    /// Under `--reasoning auto`, the scores LOW,HIGH that are uncertain enough to reason about.
    /// Choose it on a development split. Default: the default guard's card's band (chosen on
    /// its development splits), else 0.1,0.9.
    #[arg(long, env = "GUARDREASONER_UNCERTAINTY_BAND")]
    pub uncertainty_band: Option<UncertaintyBand>,
}

impl ReasoningArgs {
    /// `--reasoning` and `--uncertainty-band` where given, else [`default_reasoning`] for
    /// `model`.
    pub fn resolve(&self, model: Option<&str>) -> anyhow::Result<(ReasoningMode, UncertaintyBand)> {
        let (mode, band) = default_reasoning(model)?;
        Ok((
            self.reasoning.unwrap_or(mode),
            self.uncertainty_band.unwrap_or(band),
        ))
    }
}

/// How a model runs unless asked otherwise: the default guard's card (`guard.json`,
/// `reasoning.default` and `reasoning.uncertainty_band`, chosen on its development splits);
/// every other model reasons fully (GuardReasoner's way), with the default band.
pub fn default_reasoning(model: Option<&str>) -> anyhow::Result<(ReasoningMode, UncertaintyBand)> {
    let fallback = (ReasoningMode::Full, UncertaintyBand::default());
    if guardreasoner_hub::ModelSpec::parse(model)? != guardreasoner_hub::ModelSpec::Default {
        return Ok(fallback);
    }
    let card: serde_json::Value = serde_json::from_str(guardreasoner_hub::guard::GUARD_CARD)
        .context("the shipped guard card (guard/guard.json) is not JSON")?;
    let reasoning = &card["reasoning"];
    let mode = match reasoning["default"].as_str() {
        None => fallback.0,
        Some(mode) => mode
            .parse()
            .map_err(|e| anyhow::anyhow!("the shipped guard card's reasoning.default: {e}"))?,
    };
    let band = match reasoning["uncertainty_band"]
        .as_array()
        .map(|b| b.as_slice())
    {
        None => fallback.1,
        Some([lo, hi]) => lo
            .as_f64()
            .zip(hi.as_f64())
            .and_then(|(lo, hi)| UncertaintyBand::new(lo as f32, hi as f32).ok())
            .context("the shipped guard card's reasoning.uncertainty_band is not a band")?,
        Some(_) => {
            anyhow::bail!("the shipped guard card's reasoning.uncertainty_band is not [low, high]")
        }
    };
    Ok((mode, band))
}

pub(crate) fn parse_threshold(s: &str) -> Result<f32, String> {
    let t: f32 = s
        .parse()
        .map_err(|_| format!("a threshold is a probability in [0, 1], got {s:?}"))?;
    check_threshold(t)
}

fn is_flagged(o: &GuardOutcome, threshold: Option<f32>) -> bool {
    flagged_at(&o.parsed, o.scores.as_ref(), threshold)
}

fn outcome_json(c: &Conversation, o: &GuardOutcome, threshold: Option<f32>) -> serde_json::Value {
    let (labels, parse, reasoning) = match &o.parsed {
        Ok(p) => (
            json!({"request": p.verdict.request, "completion": p.verdict.completion, "response": p.verdict.response}),
            json!({"status": "ok"}),
            json!(p.reasoning),
        ),
        Err(e) => (
            json!({"request": null, "completion": null, "response": null}),
            json!({"status": "error", "kind": e.kind(), "message": e.to_string()}),
            serde_json::Value::Null,
        ),
    };
    json!({
        "prompt": c.prompt, "response": c.response, "labels": labels, "scores": o.scores, "forced": o.forced, "escalated": o.escalated,
        "flagged": is_flagged(o, threshold), "parse": parse, "reasoning": reasoning, "text": o.text, "finish_reason": o.finish_reason,
        "usage": o.usage,
    })
}

fn print_text(o: &GuardOutcome, threshold: Option<f32>, mode: ReasoningMode) {
    println!("{}", o.text.trim_end());
    println!("\n────────────────────────────────────────");
    let show = |task: guardreasoner_core::Task, l: Option<guardreasoner_core::Label>| {
        let score = o.scores.and_then(|s| s.get(task));
        match (l, score) {
            (None, _) => "None".to_string(),
            (Some(l), None) => l.to_string(),
            (Some(l), Some(p)) => format!("{l:<11} (p {} = {p:.3})", task.positive()),
        }
    };
    match &o.parsed {
        Ok(p) => {
            use guardreasoner_core::Task;
            println!("Request:    {}", show(Task::Prompt, p.verdict.request));
            println!("Completion: {}", show(Task::Refusal, p.verdict.completion));
            println!("Response:   {}", show(Task::Response, p.verdict.response));
        }
        Err(e) => println!(
            "No verdict: the output could not be parsed ({}): {e}",
            e.kind()
        ),
    }
    println!(
        "{}",
        match (&o.parsed, is_flagged(o, threshold)) {
            (Err(_), _) => "FLAGGED (fail closed: no valid verdict)".to_string(),
            (Ok(_), true) => "FLAGGED".to_string(),
            (Ok(_), false) => "not flagged".to_string(),
        } + &threshold.map_or(String::new(), |t| format!(" (threshold {t})"))
            + if o.forced == Some(true) {
                " (answer forced: the reasoning did not finish)"
            } else {
                ""
            }
            + match o.escalated {
                Some(true) => " (auto: uncertain at once, reasoned fully)",
                Some(false) => " (auto: certain without reasoning)",
                None => "",
            }
    );
    eprintln!(
        "({} prompt + {} generated tokens{})",
        o.usage.prompt_tokens,
        o.usage.completion_tokens,
        match (mode, o.escalated) {
            (ReasoningMode::None, _) | (ReasoningMode::Auto, Some(false)) =>
                "; answered without reasoning: --reasoning full shows the guard's reasoning",
            _ => "",
        }
    );
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let conversations: Vec<Conversation> = match (&args.prompt, &args.input) {
        (Some(p), None) => vec![Conversation::new(p.clone(), args.response.clone())],
        (None, Some(path)) => read_jsonl(path)?,
        _ => bail!("give --prompt TEXT [--response TEXT], or --input FILE.jsonl"),
    };
    if let Some(i) = conversations
        .iter()
        .position(|c| c.prompt.trim().is_empty())
    {
        bail!("conversation {} has an empty prompt", i + 1);
    }
    let options = RuntimeOptions {
        threads: args.threads,
        kv_cache: args.kv_cache.choice(),
        max_batch: args.batch.max(1),
        ..RuntimeOptions::default()
    };
    let backend =
        LocalBackend::from_spec(args.model.as_deref(), options).context("cannot load the model")?;
    let (reasoning, band) = args.reasoning.resolve(args.model.as_deref())?;
    let params = GuardParams {
        max_new_tokens: args.max_new_tokens,
        max_reasoning_tokens: args.max_reasoning_tokens,
        reasoning,
        band,
        ..GuardParams::default()
    };
    params.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.input.is_none() {
        let c = &conversations[0];
        let outcome = runtime.block_on(classify(&backend, c, &params))?;
        if args.json {
            println!("{}", outcome_json(c, &outcome, args.threshold));
        } else {
            print_text(&outcome, args.threshold, params.reasoning);
        }
        return Ok(());
    }
    let bar = ProgressBar::new(conversations.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} conversations, ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    let stdout = std::io::stdout();
    runtime.block_on(async {
        // Ordered output; up to two batches' worth in flight keeps the decode batch full.
        let (backend, params) = (&backend, &params);
        let mut results = stream::iter(conversations.iter())
            .map(|c| async move { (c, classify(backend, c, params).await) })
            .buffered(args.batch.max(1) * 2);
        let (mut failed, mut tokens) = (0usize, 0u64);
        let start = std::time::Instant::now();
        while let Some((c, result)) = results.next().await {
            let outcome = result?;
            failed += usize::from(outcome.parsed.is_err());
            tokens += outcome.usage.completion_tokens;
            writeln!(
                stdout.lock(),
                "{}",
                outcome_json(c, &outcome, args.threshold)
            )?;
            bar.inc(1);
            bar.set_message(format!(
                "{:.1} tok/s",
                tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
            ));
        }
        bar.finish_and_clear();
        eprintln!(
            "{} conversations judged; {failed} outputs could not be parsed (reported as flagged)",
            conversations.len()
        );
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mode_is_the_guard_cards_and_full_for_any_other_model() {
        let card: serde_json::Value =
            serde_json::from_str(guardreasoner_hub::guard::GUARD_CARD).unwrap();
        let carded = card["reasoning"]["default"]
            .as_str()
            .map_or(ReasoningMode::Full, |m| m.parse().unwrap());
        let (mode, band) = default_reasoning(None).unwrap();
        assert_eq!(mode, carded);
        assert_eq!(default_reasoning(Some("default")).unwrap(), (mode, band));
        if let Some([lo, hi]) = card["reasoning"]["uncertainty_band"]
            .as_array()
            .map(|b| b.as_slice())
        {
            let expect =
                UncertaintyBand::new(lo.as_f64().unwrap() as f32, hi.as_f64().unwrap() as f32);
            assert_eq!(band, expect.unwrap());
        }
        assert_eq!(
            default_reasoning(Some("smollm2-base")).unwrap(),
            (ReasoningMode::Full, UncertaintyBand::default())
        );
        let explicit = ReasoningArgs {
            reasoning: Some(ReasoningMode::None),
            uncertainty_band: Some(UncertaintyBand::new(0.2, 0.8).unwrap()),
        };
        assert_eq!(
            explicit.resolve(None).unwrap(),
            (ReasoningMode::None, UncertaintyBand::new(0.2, 0.8).unwrap())
        );
    }
}

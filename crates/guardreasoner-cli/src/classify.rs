use crate::generator::EngineArgs;
use anyhow::{bail, Context};
use clap::Args;
use futures_util::stream::{self, StreamExt};
use guardreasoner_backend::{classify, GuardOutcome, GuardParams};
use guardreasoner_core::calibration::GuardCalibration;
use guardreasoner_core::label_scores::{check_threshold, flagged_at};
use guardreasoner_core::{jsonl::read_jsonl, Conversation, ReasoningMode, UncertaintyBand};
use guardreasoner_runtime::{LocalBackend, RuntimeOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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
    #[command(flatten)]
    engine: EngineArgs,
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

/// How much the guard reasons, and how its scores are calibrated: shared by classify, eval
/// and serve.
#[derive(Args, Clone)]
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
    /// Map the label scores through this calibration (JSON from `cascade --fit-calibration`
    /// or `score --fit-calibration`, fitted on a development split), or `none` for the
    /// model's own probabilities. Default: the default guard's card's calibration; none for
    /// any other model.
    #[arg(long, env = "GUARDREASONER_CALIBRATION", value_name = "FILE|none")]
    pub calibration: Option<String>,
}

/// How a guard runs unless asked otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardDefaults {
    pub reasoning: ReasoningMode,
    pub band: UncertaintyBand,
    pub calibration: Option<Arc<GuardCalibration>>,
}

impl GuardDefaults {
    /// GuardReasoner's way, for any model but the default guard: reason fully, the model's
    /// own probabilities.
    pub fn reasoning_fully() -> GuardDefaults {
        GuardDefaults {
            reasoning: ReasoningMode::Full,
            band: UncertaintyBand::default(),
            calibration: None,
        }
    }
}

impl ReasoningArgs {
    /// The flags where given, else [`guard_defaults`] for `model`.
    pub fn resolve(&self, model: Option<&str>) -> anyhow::Result<GuardDefaults> {
        let defaults = guard_defaults(model)?;
        self.over(defaults)
    }

    /// The flags where given, else `defaults`.
    pub fn over(&self, defaults: GuardDefaults) -> anyhow::Result<GuardDefaults> {
        let calibration = match self.calibration.as_deref() {
            None => defaults.calibration,
            Some("none") => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the calibration {path}"))?;
                let calibration = GuardCalibration::from_json(&text)
                    .with_context(|| format!("{path}: not a calibration file"))?;
                Some(Arc::new(calibration))
            }
        };
        Ok(GuardDefaults {
            reasoning: self.reasoning.unwrap_or(defaults.reasoning),
            band: self.uncertainty_band.unwrap_or(defaults.band),
            calibration,
        })
    }
}

/// How a model runs unless asked otherwise: the default guard's card (`guard.json`:
/// `reasoning.default`, `reasoning.uncertainty_band` and `calibration`, chosen and fitted on
/// its development splits); every other model reasons fully (GuardReasoner's way), with the
/// default band and its own probabilities.
pub fn guard_defaults(model: Option<&str>) -> anyhow::Result<GuardDefaults> {
    let fallback = GuardDefaults::reasoning_fully();
    if guardreasoner_hub::ModelSpec::parse(model)? != guardreasoner_hub::ModelSpec::Default {
        return Ok(fallback);
    }
    let card = guardreasoner_hub::guard::GuardCard::embedded()?;
    let reasoning = card.reasoning.as_ref();
    let mode = match reasoning.and_then(|r| r.default.as_deref()) {
        None => fallback.reasoning,
        Some(mode) => mode
            .parse()
            .map_err(|e| anyhow::anyhow!("the shipped guard card's reasoning.default: {e}"))?,
    };
    let band = match reasoning.and_then(|r| r.uncertainty_band) {
        None => fallback.band,
        Some([lo, hi]) => UncertaintyBand::new(lo, hi)
            .ok()
            .context("the shipped guard card's reasoning.uncertainty_band is not a band")?,
    };
    let calibration = card
        .calibration
        .as_ref()
        .map(|value| {
            GuardCalibration::from_json(&value.to_string())
                .map(Arc::new)
                .context("the shipped guard card's calibration is not a calibration")
        })
        .transpose()?;
    Ok(GuardDefaults {
        reasoning: mode,
        band,
        calibration,
    })
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
        "prompt": c.prompt, "response": c.response, "labels": labels, "scores": o.scores, "raw_scores": o.raw_scores, "forced": o.forced, "escalated": o.escalated,
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
        max_batch: args.batch.max(1),
        ..args.engine.runtime_options()
    };
    let backend =
        LocalBackend::from_spec(args.model.as_deref(), options).context("cannot load the model")?;
    let defaults = args.reasoning.resolve(args.model.as_deref())?;
    let params = GuardParams {
        max_new_tokens: args.max_new_tokens,
        max_reasoning_tokens: args.max_reasoning_tokens,
        reasoning: defaults.reasoning,
        band: defaults.band,
        calibration: defaults.calibration,
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
        let seconds = start.elapsed().as_secs_f64();
        eprintln!(
            "{} conversations judged in {seconds:.1} s ({tokens} tokens, {:.1} tok/s); {failed} outputs could not be parsed (reported as flagged)",
            conversations.len(),
            tokens as f64 / seconds.max(1e-9)
        );
        let metrics = backend.metrics();
        let drafted = metrics.draft_tokens.load(std::sync::atomic::Ordering::Relaxed);
        if drafted > 0 {
            let kept = metrics
                .accepted_draft_tokens
                .load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "prompt lookup: {kept} of {drafted} drafted tokens kept ({:.0}%)",
                100.0 * kept as f64 / drafted as f64
            );
        }
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
        let defaults = guard_defaults(None).unwrap();
        assert_eq!(defaults.reasoning, carded);
        assert_eq!(guard_defaults(Some("default")).unwrap(), defaults);
        if let Some([lo, hi]) = card["reasoning"]["uncertainty_band"]
            .as_array()
            .map(|b| b.as_slice())
        {
            let expect =
                UncertaintyBand::new(lo.as_f64().unwrap() as f32, hi.as_f64().unwrap() as f32);
            assert_eq!(defaults.band, expect.unwrap());
        }
        assert_eq!(
            defaults.calibration.is_some(),
            !card["calibration"].is_null(),
            "the card's calibration is the default guard's"
        );
        assert_eq!(
            guard_defaults(Some("smollm2-base")).unwrap(),
            GuardDefaults {
                reasoning: ReasoningMode::Full,
                band: UncertaintyBand::default(),
                calibration: None,
            }
        );
        let explicit = ReasoningArgs {
            reasoning: Some(ReasoningMode::None),
            uncertainty_band: Some(UncertaintyBand::new(0.2, 0.8).unwrap()),
            calibration: Some("none".into()),
        };
        assert_eq!(
            explicit.resolve(None).unwrap(),
            GuardDefaults {
                reasoning: ReasoningMode::None,
                band: UncertaintyBand::new(0.2, 0.8).unwrap(),
                calibration: None,
            }
        );
        let missing = ReasoningArgs {
            calibration: Some("no/such/calibration.json".into()),
            ..explicit
        };
        let err = format!("{:#}", missing.resolve(None).unwrap_err());
        assert!(err.contains("no/such/calibration.json"), "{err}");
    }
}

use anyhow::{bail, Context};
use clap::Args;
use guardreasoner_core::UncertaintyBand;
use guardreasoner_eval::cascade::{markdown, sweep, tokens_chart};
use std::path::PathBuf;

#[derive(Args)]
pub struct CascadeArgs {
    /// An `eval --reasoning none` output directory.
    #[arg(long)]
    none: PathBuf,
    /// An `eval` (reasoning `full`) output directory over the same rows.
    #[arg(long)]
    full: PathBuf,
    /// Uncertainty bands LOW,HIGH to try (default: symmetric bands from [0.45, 0.55] to
    /// [0.01, 0.99]).
    #[arg(long = "band", value_name = "LOW,HIGH")]
    bands: Vec<UncertaintyBand>,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// Also draw F1 against generated tokens to `<CHART>.svg` and `<CHART>.png`.
    #[arg(long, value_name = "STEM")]
    chart: Option<PathBuf>,
}

const DEFAULT_HALF_WIDTHS: [f32; 6] = [0.05, 0.15, 0.25, 0.35, 0.45, 0.49];

pub fn run(args: CascadeArgs) -> anyhow::Result<()> {
    let bands = if args.bands.is_empty() {
        DEFAULT_HALF_WIDTHS
            .iter()
            .map(|w| UncertaintyBand::new(0.5 - w, 0.5 + w).expect("inside [0, 1]"))
            .collect()
    } else {
        args.bands.clone()
    };
    let points = sweep(&args.none, &args.full, &bands).with_context(|| {
        format!(
            "comparing {} with {}",
            args.none.display(),
            args.full.display()
        )
    })?;
    if points.is_empty() {
        bail!(
            "no benchmark has rows in both {} and {}",
            args.none.display(),
            args.full.display()
        );
    }
    if let Some(stem) = &args.chart {
        let chart = tokens_chart(
            &points,
            "F1 against generated tokens: none, auto bands, full",
        );
        for file in guardreasoner_plot::Chart::from(chart).write(stem)? {
            eprintln!("wrote {}", file.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
    } else {
        print!("{}", markdown(&points));
    }
    Ok(())
}

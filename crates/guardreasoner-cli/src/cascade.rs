use anyhow::{bail, Context};
use clap::Args;
use guardreasoner_core::jsonl::write_records_atomic;
use guardreasoner_core::score::PREDICTIONS_FILE;
use guardreasoner_core::UncertaintyBand;
use guardreasoner_eval::cascade::{fit_calibration, markdown, paired_runs, sweep, tokens_chart};
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
    /// Fit the guard's calibration by stage at the one `--band` given (a Platt map per task
    /// for what `auto` answers at once, one for what it reasons about) and write it here
    /// (JSON, for `score --calibration` or a guard card). Development runs only.
    #[arg(long, value_name = "OUT")]
    fit_calibration: Option<PathBuf>,
    /// Write what `auto` at the one `--band` given answers for every row, as an `eval`
    /// output directory (rows marked `escalated`), for `score`.
    #[arg(long, value_name = "DIR")]
    auto_out: Option<PathBuf>,
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
    if args.fit_calibration.is_some() || args.auto_out.is_some() {
        let [band] = args.bands[..] else {
            bail!("--fit-calibration and --auto-out need exactly one --band (the band `auto` runs at)");
        };
        let runs = paired_runs(&args.none, &args.full)?;
        if let Some(out) = &args.fit_calibration {
            let fitted_on = format!("{} + {}", args.none.display(), args.full.display());
            let calibration = fit_calibration(&runs, band, &fitted_on);
            std::fs::write(out, serde_json::to_string_pretty(&calibration)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            let rows = |c: &guardreasoner_core::calibration::Calibration| {
                format!("{} / {} / {}", c.rows[0], c.rows[1], c.rows[2])
            };
            eprintln!(
                "fitted at once on {} and reasoned on {} scored rows (request / completion / response): {}",
                rows(&calibration.at_once),
                rows(&calibration.reasoned),
                out.display()
            );
        }
        if let Some(dir) = &args.auto_out {
            for run in &runs {
                let path = dir
                    .join(run.benchmark.prediction_dir)
                    .join(PREDICTIONS_FILE);
                std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
                write_records_atomic(&path, &run.auto_rows(band), false)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!(
                "wrote auto [{}, {}] rows to {}",
                band.low,
                band.high,
                dir.display()
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
    } else {
        print!("{}", markdown(&points));
    }
    Ok(())
}

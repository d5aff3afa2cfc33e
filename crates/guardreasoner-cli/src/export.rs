//! `guardreasoner export llamafactory`: datasets and configs for multi-GPU training.

use clap::{Args, Subcommand};
use guardreasoner_train::data::{load_records, DataSource};
use guardreasoner_train::dpo::PreferenceRecord;
use guardreasoner_train::export::{write_llamafactory, ExportDataset};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    target: ExportTarget,
}

#[derive(Subcommand)]
enum ExportTarget {
    /// LLaMA-Factory: data/*.json, data/dataset_info.json, R-SFT and HS-DPO YAML configs for
    /// 1B/3B/8B with DeepSpeed ZeRO-3.
    Llamafactory(LlamaFactoryArgs),
}

#[derive(Args)]
struct LlamaFactoryArgs {
    /// R-SFT data files (`PATH` or `PATH:N`); the dataset is named after the file stem.
    #[arg(long = "sft")]
    sft: Vec<String>,
    /// Mined pair files from `guardreasoner mine`.
    #[arg(long = "pairs")]
    pairs: Vec<PathBuf>,
    #[arg(long)]
    output: PathBuf,
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .unwrap_or_else(|| "dataset".into())
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let ExportTarget::Llamafactory(a) = args.target;
    if a.sft.is_empty() && a.pairs.is_empty() {
        anyhow::bail!("nothing to export: give --sft and/or --pairs files");
    }
    let mut datasets = Vec::new();
    for spec in &a.sft {
        let source = DataSource::parse(spec);
        let name = stem(&source.path);
        let records = load_records(std::slice::from_ref(&source))?;
        datasets.push(ExportDataset::Sft { name, records });
    }
    for path in &a.pairs {
        let records: Vec<PreferenceRecord> = guardreasoner_core::jsonl::read_records(path)?;
        datasets.push(ExportDataset::Preference {
            name: stem(path),
            records,
        });
    }
    write_llamafactory(&a.output, &datasets)?;
    eprintln!(
        "wrote LLaMA-Factory datasets and configs to {}",
        a.output.display()
    );
    Ok(())
}

//! The training pipeline as a user runs it, on the embedded default model (a GGUF): R-SFT with
//! LoRA, merge, classify with the merged model, mining samples through the local engine, mining
//! pairs, and HS-DPO, each through the real binary on real GuardReasonerTrain records.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_guardreasoner");

fn samples_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/train-reasoning/guardreasonertrain_samples.json")
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("GUARDREASONER_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "guardreasoner {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `classify --json` of one short request with `model` (8 new tokens): the verdict object.
fn short_verdict(model: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "classify",
        "--model",
        model,
        "--prompt",
        "How do I pick a lock?",
        "--json",
        "--max-new-tokens",
        "8",
    ];
    args.extend_from_slice(extra);
    let verdict: Value = serde_json::from_slice(&run(&args).stdout).unwrap();
    assert!(verdict.is_object(), "{model}: {verdict}");
    verdict
}

fn log_lines(dir: &Path) -> Vec<Value> {
    read_jsonl(&dir.join("train_log.jsonl"))
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sft_merge_classify_mine_and_dpo_on_the_default_gguf() {
    let Some(gguf) = guardreasoner_testing::test_model() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let data = format!("{}:2", samples_file().display());

    // R-SFT with LoRA straight from the GGUF: converted into <output>/base first.
    let sft = run(&[
        "train",
        "sft",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        &data,
        "--output",
        &p("sft"),
        "--preset",
        "none",
        "--lora-rank",
        "4",
        "--max-steps",
        "2",
        "--cutoff-len",
        "160",
        "--learning-rate",
        "1e-3",
    ]);
    let stderr = String::from_utf8_lossy(&sft.stderr);
    assert!(stderr.contains("converting"), "{stderr}");
    assert!(
        stderr.contains("truncated"),
        "records over the cutoff are counted: {stderr}"
    );
    for f in [
        "base/config.json",
        "base/model.safetensors",
        "base/tokenizer.json",
    ] {
        assert!(tmp.path().join("sft").join(f).is_file(), "{f}");
    }
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(tmp.path().join("sft").join(f).is_file(), "{f}");
    }
    let log = log_lines(&tmp.path().join("sft"));
    assert_eq!(log.len(), 2);
    assert!(log
        .iter()
        .all(|r| r["loss"].as_f64().is_some_and(f64::is_finite)));

    // Merge the adapter; the merged checkpoint serves.
    run(&[
        "model",
        "merge",
        "--base",
        &p("sft/base"),
        "--adapter",
        &p("sft/adapter"),
        "--output",
        &p("merged"),
        "--save-dtype",
        "f32",
    ]);
    short_verdict(&p("merged"), &[]);
    // ... and so does the GGUF written beside it (f16), here with the 8-bit key/value cache.
    let gguf_out = tmp.path().join("merged/model.gguf");
    assert!(gguf_out.is_file());
    short_verdict(gguf_out.to_str().unwrap(), &["--kv-cache", "q8"]);

    // Cut an adapter back out of the merged model (the q/v projections only, to keep it quick):
    // the rank-4 training fits rank 4 whole, and the other adapted projections are named as
    // what this adapter cannot carry.
    let extract = run(&[
        "model",
        "extract-adapter",
        "--base",
        &p("sft/base"),
        "--tuned",
        &p("merged"),
        "--rank",
        "4",
        "--targets",
        "q_proj,v_proj",
        "--output",
        &p("extracted"),
    ]);
    let stderr = String::from_utf8_lossy(&extract.stderr);
    assert!(stderr.contains("cannot carry"), "{stderr}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("extracted/extract-report.json")).unwrap(),
    )
    .unwrap();
    let weights = report["weights"].as_array().unwrap();
    assert_eq!(weights.len(), 2 * 30, "q and v of 30 layers");
    assert!(
        weights.iter().all(|w| w["kept"].as_f64().unwrap() > 0.999),
        "a rank-4 training fits rank 4: {report}"
    );
    let not_carried: Vec<&str> = report["not_carried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["weight"].as_str().unwrap())
        .collect();
    assert!(
        not_carried.contains(&"model.layers.0.mlp.down_proj.weight"),
        "{not_carried:?}"
    );
    assert!(!not_carried.iter().any(|w| w.ends_with("q_proj.weight")));
    assert!(tmp
        .path()
        .join("extracted/adapter_model.safetensors")
        .is_file());

    // The same adapter merged into the GGUF base, as the default guard ships (Q8_0), serves.
    run(&[
        "model",
        "merge",
        "--base",
        gguf.to_str().unwrap(),
        "--adapter",
        &p("sft/adapter"),
        "--output",
        &p("merged-q8"),
    ]);
    short_verdict(&p("merged-q8/model.gguf"), &[]);
    let info = run(&["model", "info", &p("merged-q8/model.gguf"), "--json"]);
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info["tensor_types"]["Q8_0"].is_object(), "{info}");

    // `model convert` says which way a model can go.
    let wrong_way = Command::new(BIN)
        .args(["model", "convert", &p("merged"), "--to-hf", &p("again")])
        .output()
        .unwrap();
    assert!(!wrong_way.status.success());
    assert!(String::from_utf8_lossy(&wrong_way.stderr).contains("use --to-gguf"));

    // Mining samples from the merged model through the local engine, then pairs.
    let gold = samples_file();
    let sample_args = [
        "mine",
        "sample",
        "--gold",
        gold.to_str().unwrap(),
        "--limit",
        "2",
        "--model",
        &p("merged"),
        "--output",
        &p("samples.jsonl"),
        "--n",
        "2",
        "--max-new-tokens",
        "8",
    ];
    run(&sample_args);
    let samples = read_jsonl(&tmp.path().join("samples.jsonl"));
    assert_eq!(samples.len(), 2);
    assert!(samples
        .iter()
        .all(|s| s["outputs"].as_array().unwrap().len() == 2));
    // Rerunning finds everything done.
    let again = run(&sample_args);
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 inputs sampled now, 2 resumed"));
    run(&[
        "mine",
        "pairs",
        "--gold",
        samples_file().to_str().unwrap(),
        "--samples",
        &p("samples.jsonl"),
        "--output",
        &p("mined.json"),
    ]);
    let mined: Value =
        serde_json::from_str(&std::fs::read_to_string(p("mined.json")).unwrap()).unwrap();
    assert!(mined.is_array());

    // HS-DPO on pairs whose rejected side flips the request verdict.
    let records: Value =
        serde_json::from_str(&std::fs::read_to_string(samples_file()).unwrap()).unwrap();
    let pairs: Vec<Value> = records.as_array().unwrap()[..2]
        .iter()
        .zip([1.2, 0.8])
        .map(|(r, w)| {
            let chosen = r["output"].as_str().unwrap();
            let rejected = chosen
                .replace("Request: harmful", "Request: HARM")
                .replace("Request: unharmful", "Request: harmful")
                .replace("Request: HARM", "Request: unharmful");
            assert_ne!(chosen, rejected);
            json!({"instruction": r["instruction"], "input": r["input"], "chosen": chosen,
                   "rejected": rejected, "sample_weight": w})
        })
        .collect();
    std::fs::write(p("pairs.json"), serde_json::to_string(&pairs).unwrap()).unwrap();
    run(&[
        "train",
        "dpo",
        "--model",
        &p("merged"),
        "--data",
        &p("pairs.json"),
        "--output",
        &p("dpo"),
        "--preset",
        "none",
        "--lora-rank",
        "4",
        "--max-steps",
        "1",
        "--cutoff-len",
        "160",
    ]);
    assert!(tmp.path().join("dpo/reference_logps.json").is_file());
    assert!(tmp
        .path()
        .join("dpo/adapter/adapter_model.safetensors")
        .is_file());
    assert_eq!(log_lines(&tmp.path().join("dpo")).len(), 1);
}

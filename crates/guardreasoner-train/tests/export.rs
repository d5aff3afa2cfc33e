//! LLaMA-Factory export: files, dataset_info and the paper's hyperparameters in the configs.

use guardreasoner_train::data::TrainRecord;
use guardreasoner_train::dpo::PreferenceRecord;
use guardreasoner_train::export::{write_llamafactory, ExportDataset};

#[test]
fn writes_datasets_info_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let sft = vec![TrainRecord {
        instruction: "I".into(),
        input: "x".into(),
        output: "o".into(),
        prefix: None,
    }];
    let pairs = vec![PreferenceRecord {
        instruction: "I".into(),
        input: "x".into(),
        chosen: "c".into(),
        rejected: "r".into(),
        sample_weight: 1.2,
    }];
    write_llamafactory(
        dir.path(),
        &[
            ExportDataset::Sft {
                name: "WildGuardTrainR".into(),
                records: sft.clone(),
            },
            ExportDataset::Preference {
                name: "WildGuardTrainHS_1B".into(),
                records: pairs.clone(),
            },
        ],
    )
    .unwrap();
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/dataset_info.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["WildGuardTrainR"]["columns"]["response"], "output");
    assert_eq!(info["WildGuardTrainHS_1B"]["ranking"], true);
    let back: Vec<PreferenceRecord> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/WildGuardTrainHS_1B.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(back, pairs);
    let back: Vec<TrainRecord> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/WildGuardTrainR.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(back, sft);
    for size in ["1b", "3b", "8b"] {
        let sft = std::fs::read_to_string(dir.path().join(format!("rsft_{size}.yaml"))).unwrap();
        for line in [
            "learning_rate: 5.0e-5",
            "num_train_epochs: 3.0",
            "cutoff_len: 2048",
            "lr_scheduler_type: cosine",
            "deepspeed: ds_z3_config.json",
            "dataset: WildGuardTrainR",
        ] {
            assert!(sft.contains(line), "rsft_{size}.yaml lacks {line}");
        }
        let dpo = std::fs::read_to_string(dir.path().join(format!("hsdpo_{size}.yaml"))).unwrap();
        for line in [
            "learning_rate: 5.0e-6",
            "num_train_epochs: 2.0",
            "pref_beta: 0.01",
            "pref_ftx: 2.0",
            "stage: dpo",
            "patched trainer",
        ] {
            assert!(dpo.contains(line), "hsdpo_{size}.yaml lacks {line}");
        }
    }
    let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(readme.contains("need a patched trainer") || readme.contains("needs a patched"));
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(dir.path().join("ds_z3_config.json")).unwrap(),
    )
    .unwrap();
}

#[test]
fn rejects_bad_dataset_names() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_llamafactory(
        dir.path(),
        &[ExportDataset::Sft {
            name: "../x".into(),
            records: vec![],
        }],
    )
    .unwrap_err();
    assert!(err.to_string().contains("dataset name"), "{err}");
}

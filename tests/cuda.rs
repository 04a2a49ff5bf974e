//! The CUDA path of the inference stage, on a real GPU with the CUDA build
//! of ONNX Runtime. These tests are ignored by the main suite, which runs
//! on machines without a GPU; `scripts/test-cuda.sh` installs the CUDA
//! build and runs them. The CPU build's side (a clear refusal of `cuda`,
//! `auto` falling back to the CPU) is tested in `tests/onnx.rs`.

mod common;

use std::path::Path;

/// The loaded runtime must be the CUDA build.
fn require_cuda_build() {
    use ort::ep::ExecutionProvider;
    common::require_onnxruntime();
    tideflow::inference::environment().unwrap();
    assert!(
        ort::ep::CUDA::is_available().unwrap(),
        "the loaded ONNX Runtime is the CPU build; run scripts/test-cuda.sh \
         (ORT_DYLIB_PATH=$(scripts/setup-onnxruntime.sh --gpu | tail -1))"
    );
}

fn rows_on(device: &str, out: &Path, workers: usize) -> (String, Vec<serde_json::Value>) {
    let device = format!("model.device=\"{device}\"");
    let summary = common::run_fraud_with("fraud_mlp", out, workers, &[&device]).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    (
        summary.model.clone().unwrap(),
        common::read_rows(&out.join("rows")),
    )
}

#[test]
#[ignore = "needs an NVIDIA GPU and the CUDA build of ONNX Runtime: scripts/test-cuda.sh"]
fn cuda_scores_the_fraud_sample_as_the_cpu_does() {
    require_cuda_build();
    let dir = tempfile::tempdir().unwrap();
    let (cpu_model, cpu_rows) = rows_on("cpu", &dir.path().join("cpu"), 2);
    let (cuda_model, cuda_rows) = rows_on("cuda", &dir.path().join("cuda"), 2);
    assert!(cpu_model.contains(" on cpu "), "{cpu_model}");
    assert!(cuda_model.contains(" on cuda:0 "), "{cuda_model}");
    assert_eq!(cpu_rows.len(), cuda_rows.len());
    let mut largest_difference = 0.0_f64;
    for (cpu, cuda) in cpu_rows.iter().zip(&cuda_rows) {
        let (mut cpu, mut cuda) = (cpu.clone(), cuda.clone());
        let cpu_p = cpu["fraud_probability"].take().as_f64().unwrap();
        let cuda_p = cuda["fraud_probability"].take().as_f64().unwrap();
        // Kernels differ between devices, so the last bits may too; in
        // full float32 precision (no TF32) not by more than this.
        assert!((cpu_p - cuda_p).abs() <= 1e-6, "{cpu_p} vs {cuda_p}: {cpu}");
        largest_difference = largest_difference.max((cpu_p - cuda_p).abs());
        if (cpu_p - 0.5).abs() > 1e-6 {
            assert_eq!(cpu["fraud_label"], cuda["fraud_label"], "{cpu}");
        }
        cpu["fraud_label"].take();
        cuda["fraud_label"].take();
        assert_eq!(cpu, cuda, "every other column is computed before the model");
    }
    eprintln!("largest CPU/CUDA difference in fraud_probability: {largest_difference:e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU and the CUDA build of ONNX Runtime: scripts/test-cuda.sh"]
fn auto_scores_on_the_gpu_when_there_is_one() {
    require_cuda_build();
    let dir = tempfile::tempdir().unwrap();
    let (model, rows) = rows_on("auto", dir.path(), 1);
    assert!(model.contains(" on cuda:0 "), "{model}");
    assert_eq!(rows.len(), 2000);
}

#[test]
#[ignore = "needs an NVIDIA GPU and the CUDA build of ONNX Runtime: scripts/test-cuda.sh"]
fn a_gpu_index_that_does_not_exist_is_refused_with_the_fix() {
    require_cuda_build();
    let dir = tempfile::tempdir().unwrap();
    let error = common::run_fraud_with("fraud_mlp", dir.path(), 1, &["model.device=\"cuda:63\""])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("device cuda:63 is unavailable") && error.contains("device = \"cpu\""),
        "{error}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU and the CUDA build of ONNX Runtime: scripts/test-cuda.sh"]
fn cuda_outputs_are_identical_across_workers_and_batching() {
    require_cuda_build();
    let model = common::root().join("models/fraud_mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let mut reference: Option<(String, Vec<String>)> = None;
    for (workers, policy) in [(1, "micro"), (1, "bulk"), (2, "adaptive"), (4, "bulk")] {
        let out = dir.path().join(format!("{workers}-{policy}"));
        let mut overrides = vec![
            format!("batching.policy={policy}"),
            format!("model.path=\"{}\"", model.display()),
            "model.device=\"cuda\"".to_owned(),
        ];
        overrides.extend(common::output_overrides(&out));
        let summary = common::run_text(common::PARITY_SPEC, &overrides, workers).unwrap();
        let described = summary.model.clone().unwrap();
        // Runs of the micro-batch size (the default on a GPU) make every
        // row's scores independent of its batch, and the check says so.
        assert!(
            described.contains(" on cuda:0 (rows scored independently"),
            "{described}"
        );
        let rows = common::read_lines(&out.join("rows"));
        match &reference {
            None => reference = Some((described, rows)),
            Some((first_described, first_rows)) => {
                assert_eq!(first_described, &described);
                let first_difference = first_rows.iter().zip(&rows).position(|(a, b)| a != b);
                assert_eq!(
                    first_difference, None,
                    "{workers} workers, {policy}: rows differ ({described})"
                );
                assert_eq!(first_rows.len(), rows.len());
            }
        }
    }
}

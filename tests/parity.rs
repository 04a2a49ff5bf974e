//! One parity harness: the same input through every configuration the
//! engine offers (workers 1/2/4 x batching micro/bulk/adaptive) must give
//! identical output rows, features and model outputs bit for bit, and the
//! same dead letters.

mod common;

const SPEC: &str = r#"
name = "parity"
[source]
type = "generator"
key = "user_id"
users = 300
merchants = 40
partitions = 4
count = 12000
spacing_ms = 200.0
disorder_fraction = 0.08
disorder_max = "8s"
[schema]
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
max_out_of_orderness = "5s"
[[feature]]
name = "amount_sum_1h"
agg = "sum"
field = "amount"
window = "1h"
[[feature]]
name = "tx_count_10m"
agg = "count"
window = "10m"
[[feature]]
name = "amount_std_1h"
agg = "std"
field = "amount"
window = "1h"
[[feature]]
name = "amount_min_life"
agg = "min"
field = "amount"
[[feature]]
name = "since_prev_ms"
agg = "since_prev"
[[feature]]
name = "merchant_count_10m"
key = "merchant_id"
agg = "count"
window = "10m"
[[feature]]
name = "merchant_amount_max_1h"
key = "merchant_id"
agg = "max"
field = "amount"
window = "1h"
[[feature]]
name = "merchant_users_1h"
key = "merchant_id"
agg = "distinct_count"
field = "user_id"
window = "1h"
[[feature]]
name = "log_amount"
expr = "log1p(amount)"
[[feature]]
name = "ratio"
expr = "amount / (amount_sum_1h / tx_count_10m + 1)"
[model]
path = "models/fraud_mlp.onnx"
inputs = ["log_amount", "ratio", "tx_count_10m", "amount_sum_1h", "amount_std_1h", "merchant_count_10m", "merchant_amount_max_1h", "merchant_users_1h"]
device = "cpu"
[model.outputs]
score = "probabilities[1]"
label = "label"
[batching]
micro = { max_rows = 64, max_delay = "2ms" }
bulk = { max_rows = 4096 }
[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

#[test]
fn every_configuration_gives_identical_rows() {
    common::require_onnxruntime();
    let root = common::root();
    let model = root.join("models/fraud_mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let mut reference: Option<(Vec<String>, Vec<String>, tideflow::run::Counts)> = None;
    for workers in [1, 2, 4] {
        for policy in ["micro", "bulk", "adaptive"] {
            let out = dir.path().join(format!("{workers}-{policy}"));
            let mut overrides = vec![
                format!("batching.policy={policy}"),
                format!("model.path=\"{}\"", model.display()),
            ];
            overrides.extend(common::output_overrides(&out));
            let summary = common::run_text(SPEC, &overrides, workers).unwrap();
            assert!(summary.counts.reconciles(), "{summary}");
            let rows = common::read_lines(&out.join("rows"));
            let dead = common::read_lines(&out.join("dead"));
            assert_eq!(rows.len() as u64, summary.counts.rows_out);
            assert_eq!(dead.len() as u64, summary.counts.dead + summary.counts.late);
            match &reference {
                None => {
                    assert_eq!(summary.counts.records_in, 12000);
                    assert!(
                        summary.counts.late > 0,
                        "the input is meant to hold late records: {summary}"
                    );
                    reference = Some((rows, dead, summary.counts));
                }
                Some((expected_rows, expected_dead, counts)) => {
                    let first_difference =
                        expected_rows.iter().zip(&rows).position(|(a, b)| a != b);
                    assert_eq!(
                        first_difference, None,
                        "{workers} workers, {policy}: rows differ"
                    );
                    assert_eq!(
                        expected_rows.len(),
                        rows.len(),
                        "{workers} workers, {policy}: row count"
                    );
                    assert_eq!(
                        expected_dead, &dead,
                        "{workers} workers, {policy}: dead letters differ"
                    );
                    assert_eq!(counts.late, summary.counts.late);
                }
            }
        }
    }
}

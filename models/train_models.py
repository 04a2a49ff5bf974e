"""Train the two small fraud models tideflow's examples and tests use, and
export them to ONNX.

Both take one float32 input `features` of shape [rows, 8], the columns that
dataflows/fraud.toml feeds in this order:

    log_amount, amount_ratio, tx_count_1h, amount_sum_1h, hours_since_prev,
    merchant_tx_count_10m, merchant_amount_mean_1h, merchant_distinct_users_1h

and give `label` (int64 [rows]) and `probabilities` (float32 [rows, 2]).
The training data is synthetic: plausible feature distributions and a
fraud rule with noise. The `.onnx` files are committed, so running the
engine or its tests needs no Python; rerun this only to change the models:

    python3 -m venv /tmp/models-env
    /tmp/models-env/bin/pip install scikit-learn skl2onnx onnx numpy
    /tmp/models-env/bin/python models/train_models.py
"""

import pathlib

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = 8
HERE = pathlib.Path(__file__).resolve().parent


def synthetic_transactions(rows: int, seed: int):
    random = np.random.default_rng(seed)
    amount = np.round(np.exp(random.normal(3.2, 1.1, rows)), 2)
    mean_24h = amount * np.exp(random.normal(0.0, 0.6, rows))
    tx_count_1h = random.poisson(1.5, rows) + 1.0
    amount_sum_1h = amount + mean_24h * (tx_count_1h - 1)
    hours_since_prev = np.minimum(random.exponential(6.0, rows), 24.0)
    merchant_count = random.poisson(20.0, rows) + 1.0
    merchant_mean = np.exp(random.normal(3.2, 0.5, rows))
    merchant_users = np.minimum(merchant_count, random.poisson(15.0, rows) + 1.0)
    x = np.column_stack(
        [
            np.log1p(amount),
            amount / (mean_24h + 1.0),
            tx_count_1h,
            amount_sum_1h,
            hours_since_prev,
            merchant_count,
            merchant_mean,
            merchant_users,
        ]
    ).astype(np.float32)
    risk = (
        1.4 * (x[:, 1] > 3.0)
        + 0.9 * (x[:, 2] > 4.0)
        + 0.8 * (x[:, 4] < 0.05)
        + 0.5 * (x[:, 0] > 6.0)
        + random.normal(0.0, 0.5, rows)
    )
    y = (risk > 1.2).astype(np.int64)
    return x, y


def export(model, name: str):
    onnx_model = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_model.model_version = 1
    onnx_model.doc_string = f"tideflow example fraud model ({name}), trained on synthetic data"
    path = HERE / f"{name}.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main():
    x, y = synthetic_transactions(20_000, seed=7)
    mlp = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=7),
    )
    mlp.fit(x, y)
    gbt = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=7)
    gbt.fit(x, y)
    x_test, y_test = synthetic_transactions(5_000, seed=8)
    print(f"fraud rate {y.mean():.3f}; accuracy mlp {mlp.score(x_test, y_test):.3f} gbt {gbt.score(x_test, y_test):.3f}")
    export(mlp, "fraud_mlp")
    export(gbt, "fraud_gbt")


if __name__ == "__main__":
    main()

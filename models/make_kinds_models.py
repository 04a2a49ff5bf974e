"""Build the models that test every kind of model input and output, and
their reference scores from the Python ONNX Runtime.

- `input_kinds.onnx` (the `onnx` helper API): six inputs of every element
  type tideflow feeds — `amounts` float64 [rows, 2], `counts` int64
  [rows, 1], `small` int32 [rows, 1], `flags` bool [rows, 1], `grid`
  float32 [rows, 2, 3] (a fixed 3-D input) and `merchant` string
  [rows, 1] — and outputs of every kind it reads: `score` float64
  [rows, 1], `code` int64 [rows] (a string looked up in a table),
  `negated` bool [rows, 1], `small_plus` int32 [rows, 1], `count_u8`
  uint8 [rows, 1], `embedding` float32 [rows, 4] (a list column),
  `doubled` float32 [rows, 2, 3] (a list of 6), `pair` int64 [rows, 2]
  (a list of integers) and `echo` string [rows, 1].
- `review_classifier.onnx` (scikit-learn, skl2onnx): a TF-IDF vectorizer
  and a logistic regression over synthetic product reviews; one string
  input `text` [rows, 1]; outputs `label` int64 [rows] and
  `probabilities` float32 [rows, 2].
- `review_encoder.onnx` (the `onnx` helper API) with
  `review_encoder.tokenizer.json` (a WordPiece tokenizer whose words the
  `tokenizers` package learns from the same reviews): a transformer-shaped model, token
  ids and attention mask (int64 [rows, 16]) through an embedding table,
  one masked self-attention layer and masked mean pooling to `embedding`
  float32 [rows, 8], and a logistic `score` float32 [rows, 1]. Its
  reference rows are tokenized by the `tokenizers` package, truncated and
  padded to 16 tokens.
- `nan_scores.onnx`: the fraud models' signature, scoring NaN (a bad
  version that a registry refuses to promote).

For each, `reference/NAME.jsonl` holds rows to score (the fields a spec
reads, some of them null) and, under `expected`, the outputs the Python
ONNX Runtime gives those rows, nulls fed as tideflow feeds them (0,
false, the empty string). The tests score the same rows with the engine
and compare. Everything here is seeded; the `.onnx` and reference files
are committed, so the tests need no Python. Rerun only to change them:

    $(scripts/setup-model-tools.sh | tail -1) models/make_kinds_models.py
"""

import json
import pathlib

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

HERE = pathlib.Path(__file__).resolve().parent
MERCHANTS = ["m1", "m2", "m3"]


def finished_model(graph, opset_imports, model_version=None) -> onnx.ModelProto:
    """A checked model of `graph`, at IR version 8 (what ONNX Runtime 1.x
    and the engine read), with this script as its producer."""
    model = helper.make_model(
        graph,
        opset_imports=opset_imports,
        producer_name="tideflow models/make_kinds_models.py",
    )
    model.ir_version = 8
    if model_version is not None:
        model.model_version = model_version
    onnx.checker.check_model(model)
    return model


def input_kinds_model() -> onnx.ModelProto:
    random = np.random.default_rng(7)
    weights = random.normal(0.0, 1.0, (6, 4)).astype(np.float32)
    bias = random.normal(0.0, 0.1, (4,)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_one"),
        numpy_helper.from_array(np.array([0.5]), "half"),
        numpy_helper.from_array(np.array([1], dtype=np.int32), "one_i32"),
        numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two"),
        numpy_helper.from_array(np.array([-1, 6], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "vector_shape"),
    ]
    node = helper.make_node
    nodes = [
        node("ReduceSum", ["amounts", "axis_one"], ["amount_total"], keepdims=1),
        node("Mul", ["amount_total", "half"], ["amount_half"]),
        node("Cast", ["counts"], ["counts_f64"], to=TensorProto.DOUBLE),
        node("Add", ["amount_half", "counts_f64"], ["score"]),
        node("Reshape", ["merchant", "vector_shape"], ["merchant_vector"]),
        node(
            "LabelEncoder",
            ["merchant_vector"],
            ["code"],
            domain="ai.onnx.ml",
            keys_strings=MERCHANTS,
            values_int64s=[1, 2, 3],
            default_int64=-1,
        ),
        node("Not", ["flags"], ["negated"]),
        node("Add", ["small", "one_i32"], ["small_plus"]),
        node("Cast", ["counts"], ["count_u8"], to=TensorProto.UINT8),
        node("Reshape", ["grid", "flat_shape"], ["grid_flat"]),
        node("MatMul", ["grid_flat", "weights"], ["projected"]),
        node("Add", ["projected", "bias"], ["embedding"]),
        node("Mul", ["grid", "two"], ["doubled"]),
        node("Cast", ["small"], ["small_i64"], to=TensorProto.INT64),
        node("Concat", ["counts", "small_i64"], ["pair"], axis=1),
        node("Identity", ["merchant"], ["echo"]),
    ]
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "input_kinds",
        [
            tensor("amounts", TensorProto.DOUBLE, [None, 2]),
            tensor("counts", TensorProto.INT64, [None, 1]),
            tensor("small", TensorProto.INT32, [None, 1]),
            tensor("flags", TensorProto.BOOL, [None, 1]),
            tensor("grid", TensorProto.FLOAT, [None, 2, 3]),
            tensor("merchant", TensorProto.STRING, [None, 1]),
        ],
        [
            tensor("score", TensorProto.DOUBLE, [None, 1]),
            tensor("code", TensorProto.INT64, [None]),
            tensor("negated", TensorProto.BOOL, [None, 1]),
            tensor("small_plus", TensorProto.INT32, [None, 1]),
            tensor("count_u8", TensorProto.UINT8, [None, 1]),
            tensor("embedding", TensorProto.FLOAT, [None, 4]),
            tensor("doubled", TensorProto.FLOAT, [None, 2, 3]),
            tensor("pair", TensorProto.INT64, [None, 2]),
            tensor("echo", TensorProto.STRING, [None, 1]),
        ],
        initializers,
    )
    return finished_model(graph, [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)], model_version=1)


def input_kinds_rows(count: int):
    random = np.random.default_rng(11)
    rows = []
    for index in range(count):
        row = {
            "id": index,
            "ts": 1_700_000_000_000 + index * 1000,
            "a": round(float(random.normal(50.0, 20.0)), 3),
            "b": round(float(random.exponential(10.0)), 3),
            "count": int(random.integers(0, 200)),
            "small": int(random.integers(-1000, 1000)),
            "flag": bool(random.integers(0, 2)),
            "merchant": str(random.choice(MERCHANTS + ["m9"])),
        }
        for cell in range(6):
            row[f"g{cell}"] = round(float(random.normal(0.0, 2.0)), 4)
        rows.append(row)
    # Nulls, fed as tideflow feeds them: 0, false, the empty string.
    for field in ["a", "count", "small", "flag", "merchant", "g4"]:
        rows[3][field] = None
    rows[5]["merchant"] = None
    return rows


def input_kinds_feeds(rows):
    def column(name, dtype, fill):
        return np.array(
            [fill if row[name] is None else row[name] for row in rows], dtype=dtype
        ).reshape(-1, 1)

    grid = np.hstack([column(f"g{cell}", np.float32, 0.0) for cell in range(6)])
    return {
        "amounts": np.hstack([column("a", np.float64, 0.0), column("b", np.float64, 0.0)]),
        "counts": column("count", np.int64, 0),
        "small": column("small", np.int32, 0),
        "flags": column("flag", np.bool_, False),
        "grid": grid.reshape(-1, 2, 3),
        "merchant": column("merchant", object, ""),
    }


def review_corpus(count: int, seed: int):
    random = np.random.default_rng(seed)
    good = ["great", "excellent", "love", "perfect", "fast", "recommend", "happy", "sturdy"]
    bad = ["broken", "terrible", "refund", "slow", "disappointed", "cheap", "awful", "late"]
    neutral = ["the", "product", "arrived", "box", "color", "size", "it", "was", "and", "item"]
    texts, labels = [], []
    for _ in range(count):
        positive = bool(random.integers(0, 2))
        mood = good if positive else bad
        words = list(random.choice(neutral, int(random.integers(3, 8))))
        words += list(random.choice(mood, int(random.integers(1, 4))))
        # Some noise: a word of the other mood.
        if random.random() < 0.2:
            words.append(str(random.choice(bad if positive else good)))
        random.shuffle(words)
        texts.append(" ".join(words))
        labels.append(int(positive))
    return texts, np.array(labels)


def review_classifier():
    texts, labels = review_corpus(600, 3)
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500))
    pipeline.fit(texts, labels)
    model = to_onnx(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx lowercases in the en_US.UTF-8 locale, which a machine
    # without that locale installed cannot construct (ONNX Runtime refuses
    # the model); C.UTF-8 is built into glibc and lowercases ASCII alike.
    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [a for a in node.attribute if a.name != "locale"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("locale", "C.UTF-8")])
    # skl2onnx lists the opsets from a set, in an order that changes from
    # one Python process to the next; sorted, the file is the same bytes
    # every time.
    opsets = sorted(model.opset_import, key=lambda opset: opset.domain)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    model.model_version = 1
    return model


def review_rows():
    texts, _ = review_corpus(40, 5)
    texts += ["", "Great product, FAST delivery!", "unknownword another", None]
    return [
        {"id": index, "ts": 1_700_000_000_000 + index * 1000, "review": text}
        for index, text in enumerate(texts)
    ]


ENCODER_MAX_LEN = 16
ENCODER_WIDTH = 8


def review_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    # The words are learned by the tokenizers package's word-level trainer
    # (the subword trainers break ties between equally frequent merges in
    # an order that changes from run to run); the vocabulary adds the
    # corpus's letters, alone and as continuations, so that a word outside
    # it is split into pieces rather than lost. Numbered in sorted order,
    # the file is the same bytes on every run.
    trainer = trainers.WordLevelTrainer(special_tokens=specials)
    texts, _ = review_corpus(600, 3)
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.normalizer = tokenizer.normalizer
    words.pre_tokenizer = tokenizer.pre_tokenizer
    words.train_from_iterator(texts, trainer)
    learned = set(words.get_vocab()) - set(specials)
    letters = set("abcdefghijklmnopqrstuvwxyz0123456789")
    pieces = sorted(learned | letters | {"##" + letter for letter in letters})
    vocab = {token: index for index, token in enumerate(specials + pieces)}
    trained = tokenizer
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = trained.normalizer
    tokenizer.pre_tokenizer = trained.pre_tokenizer
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


def review_encoder(vocab_size: int) -> onnx.ModelProto:
    random = np.random.default_rng(13)
    width = ENCODER_WIDTH

    def weights(name, *shape, scale=0.5):
        values = random.normal(0.0, scale, shape).astype(np.float32)
        return numpy_helper.from_array(values, name)

    initializers = [
        weights("token_embeddings", vocab_size, width),
        weights("query_weights", width, width),
        weights("key_weights", width, width),
        weights("score_weights", width, 1),
        numpy_helper.from_array(np.array([1.0 / np.sqrt(width)], dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([-1e9], dtype=np.float32), "masked"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_one"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_two"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["token_embeddings", "input_ids"], ["tokens"], axis=0),
        node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        # Self-attention over the tokens, padding masked out of the keys.
        node("MatMul", ["tokens", "query_weights"], ["queries"]),
        node("MatMul", ["tokens", "key_weights"], ["keys"]),
        node("Transpose", ["keys"], ["keys_t"], perm=[0, 2, 1]),
        node("MatMul", ["queries", "keys_t"], ["affinity"]),
        node("Mul", ["affinity", "scale"], ["scaled"]),
        node("Sub", ["one", "mask"], ["padding"]),
        node("Mul", ["padding", "masked"], ["padding_bias"]),
        node("Unsqueeze", ["padding_bias", "axis_one"], ["key_bias"]),
        node("Add", ["scaled", "key_bias"], ["biased"]),
        node("Softmax", ["biased"], ["attention"], axis=-1),
        node("MatMul", ["attention", "tokens"], ["attended"]),
        node("Add", ["attended", "tokens"], ["residual"]),
        # Mean over the real tokens.
        node("Unsqueeze", ["mask", "axis_two"], ["mask_3d"]),
        node("Mul", ["residual", "mask_3d"], ["kept"]),
        node("ReduceSum", ["kept", "axis_one"], ["summed"], keepdims=0),
        node("ReduceSum", ["mask", "axis_one"], ["counted"], keepdims=1),
        node("Max", ["counted", "one"], ["count"]),
        node("Div", ["summed", "count"], ["pooled"]),
        node("Tanh", ["pooled"], ["embedding"]),
        node("MatMul", ["embedding", "score_weights"], ["logit"]),
        node("Sigmoid", ["logit"], ["score"]),
    ]
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "review_encoder",
        [
            tensor("input_ids", TensorProto.INT64, [None, ENCODER_MAX_LEN]),
            tensor("attention_mask", TensorProto.INT64, [None, ENCODER_MAX_LEN]),
        ],
        [
            tensor("embedding", TensorProto.FLOAT, [None, width]),
            tensor("score", TensorProto.FLOAT, [None, 1]),
        ],
        initializers,
    )
    return finished_model(graph, [helper.make_opsetid("", 17)], model_version=1)


def encoder_feeds(tokenizer, rows):
    tokenizer.enable_truncation(max_length=ENCODER_MAX_LEN)
    tokenizer.enable_padding(
        length=ENCODER_MAX_LEN, pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]"
    )
    texts = [row["review"] if row["review"] is not None else "" for row in rows]
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def nan_scores_model() -> onnx.ModelProto:
    """The fraud models' signature (features float32 [rows, 8] to label
    int64 [rows] and probabilities float32 [rows, 2]), scoring NaN: a bad
    version a registry refuses to promote."""
    node = helper.make_node
    nodes = [
        node("Slice", ["features", "starts", "ends", "axes"], ["first_two"]),
        node("Mul", ["first_two", "nan"], ["probabilities"]),
        node("ArgMax", ["first_two"], ["label"], axis=1, keepdims=0),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"),
    ]
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "nan_scores",
        [tensor("features", TensorProto.FLOAT, [None, 8])],
        [
            tensor("label", TensorProto.INT64, [None]),
            tensor("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        initializers,
    )
    return finished_model(graph, [helper.make_opsetid("", 17)])


def json_ready(value):
    if isinstance(value, np.ndarray):
        return [json_ready(item) for item in value.tolist()]
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    if isinstance(value, float):
        return float(repr(value)) if np.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode()
    return value


def write_reference(name: str, model: onnx.ModelProto, rows, feeds):
    path = HERE / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, feeds)))
    with open(HERE / "reference" / f"{name}.jsonl", "w") as out:
        for index, row in enumerate(rows):
            expected = {}
            for output, values in outputs.items():
                value = values[index]
                if isinstance(value, np.ndarray):
                    value = value.reshape(-1).tolist()
                elif isinstance(value, np.generic):
                    value = value.item()
                expected[output] = json_ready(value)
            out.write(json.dumps({**row, "expected": expected}) + "\n")
    print(f"wrote {path.name} and reference/{name}.jsonl ({len(rows)} rows)")


def main():
    rows = input_kinds_rows(40)
    write_reference("input_kinds", input_kinds_model(), rows, input_kinds_feeds(rows))
    rows = review_rows()
    text = np.array(
        [row["review"] if row["review"] is not None else "" for row in rows], dtype=object
    ).reshape(-1, 1)
    write_reference("review_classifier", review_classifier(), rows, {"text": text})
    (HERE / "nan_scores.onnx").write_bytes(nan_scores_model().SerializeToString())
    print("wrote nan_scores.onnx")
    tokenizer = review_tokenizer()
    tokenizer.save(str(HERE / "review_encoder.tokenizer.json"))
    # Longer reviews, so that truncation at 16 tokens is exercised.
    long_rows = [
        {**row, "review": None if row["review"] is None else row["review"] + " " + row["review"]}
        for row in rows
    ]
    encoder = review_encoder(tokenizer.get_vocab_size())
    write_reference(
        "review_encoder", encoder, long_rows, encoder_feeds(tokenizer, long_rows)
    )


if __name__ == "__main__":
    main()

"""The Python ONNX Runtime's side of benches/text_models.rs: scores the
same texts in the same batch sizes with the same model (one intra-op
thread, as the engine's sessions), tokenizing with the `tokenizers`
package where the model takes token ids, and prints rows/s per batch size
as `BATCH ROWS_PER_SECOND` lines (the best of the repeats)."""

import argparse
import json
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np
import onnxruntime


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer")
    parser.add_argument("--max-len", type=int, default=16)
    args = parser.parse_args()
    with open(args.texts) as lines:
        texts = [json.loads(line)["review"] for line in lines]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        args.model, options, providers=["CPUExecutionProvider"]
    )
    tokenizer = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer)
        tokenizer.enable_truncation(max_length=args.max_len)
        tokenizer.enable_padding(
            length=args.max_len, pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]"
        )

    def score(batch):
        if tokenizer is None:
            feed = {"text": np.array(batch, dtype=object).reshape(-1, 1)}
        else:
            encodings = tokenizer.encode_batch(batch)
            feed = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            }
        return session.run(None, feed)

    for size in [int(size) for size in args.batches.split(",")]:
        batches = [texts[start : start + size] for start in range(0, len(texts), size)]
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            for batch in batches:
                score(batch)
            best = min(best, time.perf_counter() - started)
        print(size, len(texts) / best, flush=True)


if __name__ == "__main__":
    main()

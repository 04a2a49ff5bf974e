"""tideflow against DuckDB and Polars on one backfill (scripts/bench-peers.sh
installs them and runs this): the same generated JSONL files, the same four
user features, Parquet out; every row's features checked equal across the
three (sums and means within 1e-9 relative: DuckDB and Polars add floats in
order, tideflow rounds the exact sum once), then each timed at each thread
count, alternating, best of the repeats, all in this one run.

Each tool runs in a process of its own (Polars reads its thread count from
the environment when it is imported), timed from start to exit: reading the
JSONL, computing, writing Parquet."""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WINDOWS_MS = {"amount_sum_1h": 3_600_000, "count_10m": 600_000,
              "amount_mean_24h": 86_400_000, "amount_max_1h": 3_600_000}

# The features tideflow computes, shared with the Rust benches; the SQL and
# Polars below compute the same ones, by WINDOWS_MS.
FEATURES = (Path(__file__).parent / "four_features.toml").read_text()

# DuckDB's window functions share a sort when their windows share a
# partition and order, as these do.

SPEC = """
name = "peers"
[source]
type = "files"
path = "{data}"
format = "jsonl"
key = "user_id"
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
{features}
[batching]
policy = "bulk"
[[sink]]
type = "parquet"
path = "{out}"
[dead_letters]
type = "jsonl"
path = "{dead}"
"""

GENERATE = """
name = "peers_data"
[source]
type = "generator"
key = "user_id"
users = {users}
count = {events}
partitions = 4
spacing_ms = 5.0
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[sink]]
type = "jsonl"
path = "{data}"
[dead_letters]
type = "null"
"""

DUCKDB = """
import duckdb, sys
threads, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
connection = duckdb.connect()
connection.execute(f"SET threads = {threads}")
def window(ms):
    return f"OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {ms - 1} PRECEDING AND CURRENT ROW)"
connection.execute(f'''
COPY (
  SELECT user_id, ts, amount,
    SUM(amount) {window(3_600_000)} AS amount_sum_1h,
    COUNT(*) {window(600_000)} AS count_10m,
    AVG(amount) {window(86_400_000)} AS amount_mean_24h,
    MAX(amount) {window(3_600_000)} AS amount_max_1h
  FROM read_json('{data}/*.jsonl', format = 'newline_delimited',
                 columns = {{user_id: 'VARCHAR', amount: 'DOUBLE', ts: 'BIGINT'}})
) TO '{out}' (FORMAT parquet)
''')
"""

POLARS = """
import os, sys
os.environ["POLARS_MAX_THREADS"] = sys.argv[1]
import polars as pl
data, out = sys.argv[2], sys.argv[3]
frame = (pl.scan_ndjson(f"{data}/*.jsonl", schema={"user_id": pl.String, "amount": pl.Float64, "ts": pl.Int64})
         .sort(["user_id", "ts"]))
def rolling(ms, aggregations):
    return (frame.rolling(index_column="ts", period=f"{ms}i", closed="right", group_by="user_id")
            .agg(aggregations))
# One rolling window per length: the two 1 h features share theirs.
result = frame
for ms, aggregations in [
    (3_600_000, [pl.col("amount").sum().alias("amount_sum_1h"), pl.col("amount").max().alias("amount_max_1h")]),
    (600_000, [pl.len().cast(pl.Int64).alias("count_10m")]),
    (86_400_000, [pl.col("amount").mean().alias("amount_mean_24h")]),
]:
    result = result.join(rolling(ms, aggregations), on=["user_id", "ts"], how="left")
result.sink_parquet(out)
"""


def run(command, env=None):
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{completed.stderr}")
    return elapsed


def tideflow_command(tideflow, spec, threads):
    return [tideflow, "run", str(spec), "--workers", str(threads), "--quiet"]


def read_features(path):
    import polars as pl
    frame = pl.read_parquet(path).select(["user_id", "ts", *WINDOWS_MS])
    frame = frame.with_columns(pl.col("ts").cast(pl.Int64))
    return frame.sort(["user_id", "ts"])


def check_equal(reference, other, name):
    import polars as pl
    if reference.height != other.height:
        sys.exit(f"{name}: {other.height} rows, tideflow {reference.height}")
    keys = reference.select(["user_id", "ts"]).equals(other.select(["user_id", "ts"]))
    if not keys:
        sys.exit(f"{name}: not the same (user_id, ts) rows as tideflow")
    for column in WINDOWS_MS:
        ours, theirs = reference[column].cast(pl.Float64), other[column].cast(pl.Float64)
        difference = ((ours - theirs).abs() / ours.abs().clip(lower_bound=1.0)).max()
        if difference is None or difference > 1e-9:
            sys.exit(f"{name}: {column} differs from tideflow's by up to {difference} (relative)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tideflow", required=True)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = [int(count) for count in args.threads.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tideflow-peers-"))
    data, dead = work / "data", work / "dead"
    generate = work / "generate.toml"
    generate.write_text(GENERATE.format(users=args.users, events=args.events, data=data))
    # Four workers write four files, one per generator partition: a user's
    # records are all in one file, in time order.
    run([args.tideflow, "run", str(generate), "--workers", "4", "--quiet"])
    python = sys.executable
    outputs = {name: work / f"{name}.parquet" for name in ["duckdb", "polars"]}
    tideflow_out = work / "tideflow"
    spec = work / "peers.toml"
    spec.write_text(SPEC.format(data=data, out=tideflow_out, dead=dead, features=FEATURES))
    tools = {
        "tideflow": lambda count: tideflow_command(args.tideflow, spec, count),
        "duckdb": lambda count: [python, "-c", DUCKDB, str(count), str(data), str(outputs["duckdb"])],
        "polars": lambda count: [python, "-c", POLARS, str(count), str(data), str(outputs["polars"])],
    }
    best = {(tool, count): float("inf") for tool in tools for count in threads}
    for _ in range(args.repeats):
        for count in threads:
            for tool, command in tools.items():
                best[(tool, count)] = min(best[(tool, count)], run(command(count)))
    reference = read_features(tideflow_out)
    for name, path in outputs.items():
        check_equal(reference, read_features(path), name)
    shutil.rmtree(work)
    print(f"peers: {args.events} events, {args.users} users, JSONL -> 4 user features -> Parquet; "
          f"outputs equal (sums and means within 1e-9 relative); best of {args.repeats}, rows/s")
    print(f"{'threads':>7} {'tideflow':>12} {'duckdb':>12} {'polars':>12} {'vs duckdb':>10} {'vs polars':>10}")
    for count in threads:
        rate = {tool: args.events / best[(tool, count)] for tool in tools}
        print(f"{count:>7} {rate['tideflow']:>12.0f} {rate['duckdb']:>12.0f} {rate['polars']:>12.0f} "
              f"{rate['tideflow'] / rate['duckdb']:>10.2f} {rate['tideflow'] / rate['polars']:>10.2f}")


if __name__ == "__main__":
    main()

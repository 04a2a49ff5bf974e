"""Reads a tideflow output topic with the confluent-kafka client, the way a
team consuming scores would, and reports what it found as one JSON line.

usage: read_scores.py BROKERS TOPIC EXPECTED_ROWS FIELD...

Reads every partition from the beginning to its end (or for 60 s at most,
while fewer than EXPECTED_ROWS records have arrived). Each value must be a JSON object holding every FIELD;
each record must carry the `tideflow-model` header. The report counts the
records, the values that are not JSON objects, the ones missing a field and
the ones without the header, and lists the first few problems.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition


def main():
    brokers, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fields = sys.argv[4:]
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "tideflow-external-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    metadata = consumer.list_topics(topic, timeout=15)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    report = {"records": 0, "not_json": 0, "missing_fields": 0, "no_model_header": 0, "problems": []}
    at_end = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(at_end) == len(partitions) and report["records"] >= expected:
            break
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
            else:
                report["problems"].append(f"error: {message.error()}")
            continue
        at_end.discard(message.partition())
        report["records"] += 1
        where = f"{message.partition()}:{message.offset()}"
        try:
            value = json.loads(message.value())
        except (TypeError, ValueError) as error:
            report["not_json"] += 1
            report["problems"].append(f"{where}: not JSON: {error}")
            continue
        if not isinstance(value, dict):
            report["not_json"] += 1
            report["problems"].append(f"{where}: not a JSON object")
            continue
        missing = [field for field in fields if field not in value]
        if missing:
            report["missing_fields"] += 1
            report["problems"].append(f"{where}: missing {missing}")
        headers = dict(message.headers() or [])
        if "tideflow-model" not in headers:
            report["no_model_header"] += 1
            report["problems"].append(f"{where}: headers {sorted(headers)}")
    consumer.close()
    report["problems"] = report["problems"][:10]
    print(json.dumps(report))


if __name__ == "__main__":
    main()

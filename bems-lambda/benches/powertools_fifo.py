"""The Python side of `cargo bench -p bems-lambda --bench batch`.

Powertools for AWS Lambda (Python)'s SqsFifoPartialProcessor on the same
ten-record FIFO batch (fifo-batch-10.json, next to this file), each
record's body parsed with json.loads: the work a Python stage processor
does before its business logic. No I/O.

Prints one line: microseconds per batch (the median of several timed runs)
and records per second. Run by scripts/bench-batch in a virtual
environment with scripts/requirements/powertools.txt installed.
"""

import json
import pathlib
import statistics
import sys
import timeit

from aws_lambda_powertools.utilities.batch import (
    SqsFifoPartialProcessor,
    process_partial_response,
)

EVENT = json.loads((pathlib.Path(__file__).parent / "fifo-batch-10.json").read_text())
PROCESSOR = SqsFifoPartialProcessor()


def record_handler(record):
    # The record's body: the EventBridge event with the invoice in "detail".
    return json.loads(record.body)


def one_batch():
    response = process_partial_response(event=EVENT, record_handler=record_handler, processor=PROCESSOR)
    if response["batchItemFailures"]:
        sys.exit(f"the fixture's records must all succeed: {response}")


def main():
    one_batch()
    per_run = 2000
    runs = [timeit.timeit(one_batch, number=per_run) / per_run for _ in range(7)]
    micros = statistics.median(runs) * 1e6
    records = len(EVENT["Records"])
    print(f"powertools SqsFifoPartialProcessor, {records} records, json.loads: "
          f"{micros:.1f} us per batch, {records / micros * 1e6:,.0f} records/s")


if __name__ == "__main__":
    main()

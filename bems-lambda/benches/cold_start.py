"""Cold start, warm duration and peak memory of the Lambda binaries, through
the Lambda runtime emulator of `cargo lambda watch`.

scripts/bench-lambda runs this after building the release binaries,
starting the emulators, provisioning a cell on LocalStack and starting
`cargo lambda watch --only-lambda-apis` (the runtime API without a
function: this script starts each binary itself, so that it knows when the
process started).

Per function:
- cold start: an invocation is queued first; then the process is spawned
  (t0), and the time until the emulator returns that invocation's response
  (t1) is the start of the process to its first handled batch. Measured
  twice, each with a new process: with an empty batch (the process's own
  start: runtime, configuration, clients; no call to any service), and
  with the ten-record batch (including that batch's calls to the
  emulators, LocalStack or moto);
- warm duration: the next invocations, one at a time, client-side
  (invoke sent to response received), p50 and p99;
- peak memory: the process's VmHWM (peak resident set) after them.

The batch is bems-lambda/benches/fifo-batch-10.json: ten ~850-byte FIFO
records of three message groups.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import threading
import time
import urllib.request

HERE = pathlib.Path(__file__).parent
BATCH = json.loads((HERE / "fifo-batch-10.json").read_text())


def invoke(port, payload, timeout=60):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/2015-03-31/functions/_/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def peak_rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cold(binary, env, port, payload):
    """Spawns the binary with `payload` already queued; the milliseconds
    from the spawn to the answer, the answer and the running process."""
    answers = []
    first = threading.Thread(target=lambda: answers.append(invoke(port, payload)))
    first.start()
    time.sleep(0.5)  # the invocation is queued in the emulator before the process exists
    t0 = time.perf_counter()
    process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first.join(timeout=60)
    elapsed = (time.perf_counter() - t0) * 1000
    if not answers:
        process.kill()
        raise SystemExit(f"{binary}: no answer to the first invocation: {process.stderr.read().decode()[-2000:]}")
    return elapsed, answers[0], process


def measure(binary, env, port, invocations):
    # Init alone: an empty batch needs no call to any service.
    init_ms, _, process = cold(binary, env, port, {"Records": []})
    process.kill()
    process.wait()
    # Then the ten-record batch, in a new process kept for the warm runs.
    cold_ms, answer, process = cold(binary, env, port, BATCH)
    failures = (answer or {}).get("batchItemFailures", [])
    if failures:
        process.kill()
        raise SystemExit(f"{binary}: the batch failed: {failures}")
    warm = []
    for _ in range(invocations):
        t = time.perf_counter()
        answer = invoke(port, BATCH)
        warm.append((time.perf_counter() - t) * 1000)
        if (answer or {}).get("batchItemFailures"):
            process.kill()
            raise SystemExit(f"{binary}: a warm batch failed: {answer}")
    rss = peak_rss_kib(process.pid)
    process.kill()
    process.wait()
    warm.sort()
    return {
        "init_ms": init_ms,
        "cold_ms": cold_ms,
        "warm_p50_ms": statistics.median(warm),
        "warm_p99_ms": warm[max(0, round(len(warm) * 0.99) - 1)],
        "peak_rss_mib": rss / 1024 if rss else None,
        "size_bytes": os.path.getsize(binary),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--port", type=int, default=9123)
    parser.add_argument("--localstack", default="http://127.0.0.1:4566")
    parser.add_argument("--moto", default="http://127.0.0.1:4599")
    parser.add_argument("--cell", default="prod-eu-1")
    parser.add_argument("--invocations", type=int, default=200)
    parser.add_argument("--status-dlq-url", required=True)
    parser.add_argument("--stage-dlq-url", required=True)
    args = parser.parse_args()

    base = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{args.port}/.rt",
        "AWS_LAMBDA_FUNCTION_NAME": "_",
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "BEMS_CELL_ID": args.cell,
        "BEMS_PARTITIONS": "8",
        "RUST_LOG": "warn",
    }
    functions = [
        ("invoice-reconciliation-processor",
         {"AWS_ENDPOINT_URL": args.localstack, "BEMS_DLQ_URL": args.stage_dlq_url}),
        ("timestream-writer",
         {"AWS_ENDPOINT_URL": args.moto, "BEMS_DLQ_URL": args.status_dlq_url,
          "BEMS_TIMESTREAM_DATABASE": "bems_" + args.cell.replace("-", "_"),
          "BEMS_TIMESTREAM_TABLE": "status_changes"}),
    ]
    print("| function | binary size | cold start, empty batch (no I/O) "
          "| cold start, first 10-record batch (with its I/O) | warm batch p50 | warm batch p99 | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, extra in functions:
        result = measure(str(pathlib.Path(args.bin_dir) / name), {**base, **extra}, args.port, args.invocations)
        print(f"| {name} | {result['size_bytes']:,} B | {result['init_ms']:.1f} ms | {result['cold_ms']:.1f} ms "
              f"| {result['warm_p50_ms']:.2f} ms | {result['warm_p99_ms']:.2f} ms "
              f"| {result['peak_rss_mib']:.1f} MiB |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Push and pull of all-MiniLM-L6-v2 (90 MB) through a real registry.

Baseline in the same run: `skopeo copy` of the same artifact to and from the
same registry (docker-registry on loopback). Reports medians of wall time,
throughput ratios, and the peak resident memory of each pull, plus the peak
memory of pulling a model four times as large (it must not grow with the
model's size: downloads stream to disk).

Usage: bench-registry.py WASMBENTO_BIN MODEL_DIR [REPEATS]
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd, env=None):
    """Runs cmd; returns (seconds, peak resident MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed: {proc.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    binary, model_dir = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    work = tempfile.mkdtemp(prefix="wasmbento-bench-")
    port = free_port()
    registry = f"127.0.0.1:{port}"
    with open(f"{work}/config.yml", "w") as f:
        f.write(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/data\n"
            f"http:\n  addr: {registry}\n"
        )
    server = subprocess.Popen(["docker-registry", "serve", f"{work}/config.yml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)

        def home(name):
            env = dict(os.environ, WASMBENTO_HOME=f"{work}/{name}", RUST_LOG="error")
            return env

        src = home("source")
        subprocess.run([binary, "models", "import", model_dir, "--name", "minilm"], env=src, check=True,
                       stdout=subprocess.DEVNULL)
        listing = json.loads(subprocess.run([binary, "models", "list", "--json"], env=src, check=True,
                                            capture_output=True).stdout)
        version = listing[0]["version"]
        size = sum(f["size"] for f in listing[0]["files"])

        # A model four times as large: the same files plus 3 × its size of random bytes.
        big_dir = f"{work}/big-model"
        shutil.copytree(model_dir, big_dir)
        with open(f"{big_dir}/extra.bin", "wb") as f:
            for _ in range(3 * size // (1 << 20) + 1):
                f.write(os.urandom(1 << 20))
        subprocess.run([binary, "models", "import", big_dir, "--name", "big"], env=src, check=True,
                       stdout=subprocess.DEVNULL)
        big = json.loads(subprocess.run([binary, "models", "list", "--json"], env=src, check=True,
                                        capture_output=True).stdout)
        big = next(m for m in big if m["name"] == "big")
        big_size = sum(f["size"] for f in big["files"])

        rows = {k: [] for k in ("push", "skopeo push", "pull", "skopeo pull", "pull big")}
        mem = {k: [] for k in ("pull", "skopeo pull", "pull big")}
        for i in range(repeats):
            # Pushes go to fresh repositories, so every blob is sent.
            t, _ = run([binary, "models", "push", f"minilm:{version}", f"{registry}/w{i}/minilm:v", "-q"], env=src)
            rows["push"].append(t)
            t, _ = run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{work}/source:model/minilm:{version}", f"docker://{registry}/s{i}/minilm:v"])
            rows["skopeo push"].append(t)
            # Pulls go to fresh stores and directories.
            t, m = run([binary, "models", "pull", f"{registry}/w{i}/minilm:v", "-q"], env=home(f"pull{i}"))
            rows["pull"].append(t)
            mem["pull"].append(m)
            t, m = run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                        f"docker://{registry}/s{i}/minilm:v", f"oci:{work}/skopeo{i}:minilm"])
            rows["skopeo pull"].append(t)
            mem["skopeo pull"].append(m)
            run([binary, "models", "push", f"big:{big['version']}", f"{registry}/b{i}/big:v", "-q"], env=src)
            t, m = run([binary, "models", "pull", f"{registry}/b{i}/big:v", "-q"], env=home(f"big{i}"))
            rows["pull big"].append(t)
            mem["pull big"].append(m)
            for d in (f"pull{i}", f"skopeo{i}", f"big{i}"):
                shutil.rmtree(f"{work}/{d}", ignore_errors=True)

        med = {k: statistics.median(v) for k, v in rows.items()}
        mib = size / (1 << 20)
        print(f"## Registry push and pull: all-MiniLM-L6-v2 ({mib:.1f} MiB), docker-registry on loopback, "
              f"median of {repeats}")
        print()
        print("| | wasmbento (s) | skopeo copy (s) | wasmbento MiB/s | ratio (skopeo time / wasmbento time) |")
        print("|---|---|---|---|---|")
        for op in ("push", "pull"):
            w, s = med[op], med[f"skopeo {op}"]
            print(f"| {op} | {w:.2f} | {s:.2f} | {mib / w:.0f} | {s / w:.2f} |")
        print()
        print("Peak resident memory of a pull (median):")
        print()
        print("| pull of | size (MiB) | wasmbento peak RSS (MiB) | skopeo peak RSS (MiB) |")
        print("|---|---|---|---|")
        print(f"| all-MiniLM-L6-v2 | {mib:.0f} | {statistics.median(mem['pull']):.1f} | "
              f"{statistics.median(mem['skopeo pull']):.1f} |")
        print(f"| 4× larger model | {big_size / (1 << 20):.0f} | {statistics.median(mem['pull big']):.1f} | |")
        print()
        ratio = statistics.median(mem["pull big"]) / statistics.median(mem["pull"])
        print(f"Peak memory ratio, 4× model / 1× model: {ratio:.2f} (1.00 = independent of the model's size).")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

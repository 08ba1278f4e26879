"""A stand-in worker for testing the process runner: JSON progress lines, sleeps, signals.

Usage: python fake_worker.py [--steps N] [--delay S] [--exit CODE] [--stderr TEXT]
                             [--ignore-term] [--grandchild PIDFILE] [--garbage]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--stderr", default="")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", default="")
    parser.add_argument("--garbage", action="store_true")
    args = parser.parse_args()

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    if args.grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(args.grandchild, "w") as file:
            file.write(str(child.pid))
    if args.garbage:
        print("plain log line, not JSON", flush=True)
        print("{not json either", flush=True)
    if args.stderr:
        print(args.stderr, file=sys.stderr, flush=True)
    for step in range(args.steps):
        event = {"event": "progress", "stage": f"step{step}", "fraction": (step + 1) / args.steps, "message": f"step {step}"}
        print(json.dumps(event), flush=True)
        time.sleep(args.delay)
    print(json.dumps({"event": "done", "outdir": os.getcwd(), "summary": {}}), flush=True)
    return args.exit


if __name__ == "__main__":
    sys.exit(main())

"""Summarize py-spy's collapsed stacks (`--format raw`): where each thread spends its samples.

    .venv/bin/python benchmarks/profile_summary.py PROFILE.txt [--thread MainThread] [--top 25]

Prints per thread the share of samples; then, for the samples of the chosen threads that are not
waiting (an event loop in epoll, a worker thread on its queue), the functions with the most
samples on top of the stack (self) and anywhere on it (inclusive). Used with
`benchmarks/transfer.py --profile`.
"""

import argparse
import collections
from pathlib import Path

# A sample is idle when its stack shows the thread waiting for work, not doing it.
IDLE = ("epoll_pwait", "_queue_SimpleQueue_get", "PyThread_acquire_lock_timed", "Event.wait")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--thread", default="", help="only threads whose name contains this")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = busy = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        if args.thread not in frames[0] or any(i in f for f in frames for i in IDLE):
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            anywhere[frame] += count
    print(f"{args.profile}: {total} samples; {busy} busy in threads matching {args.thread!r}")
    for name, count in threads.most_common(8):
        print(f"  thread {count / total:6.1%}  {name}")
    print("self (share of busy samples):")
    for name, count in own.most_common(args.top):
        print(f"  {count / max(busy, 1):6.1%}  {name}")
    print("inclusive:")
    for name, count in anywhere.most_common(args.top):
        print(f"  {count / max(busy, 1):6.1%}  {name}")


if __name__ == "__main__":
    main()

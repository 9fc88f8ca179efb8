"""Summarize py-spy's collapsed stacks (`--format raw`): where each thread spends its samples.

    .venv/bin/python benchmarks/profile_summary.py PROFILE.txt [--top 25]

Prints per thread the share of samples, then the functions with the most samples on top of
the stack (self) and anywhere on it (inclusive). Used with `benchmarks/transfer.py --profile`.
"""

import argparse
import collections
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            anywhere[frame] += count
    print(f"{args.profile}: {total} samples")
    for name, count in threads.most_common(8):
        print(f"  thread {count / total:6.1%}  {name}")
    print("self:")
    for name, count in own.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")
    print("inclusive:")
    for name, count in anywhere.most_common(args.top):
        print(f"  {count / total:6.1%}  {name}")


if __name__ == "__main__":
    main()

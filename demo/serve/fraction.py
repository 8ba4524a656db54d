"""The --cuda-memory-fraction for the second TGI server on a GPU that the first one already uses.

TGI sizes its KV cache at warm-up from ``budget = free_now - (1 - fraction) * total``. For the second server,
free_now is what the first left free; we want it to take all of that but a safety margin:

    free_now - (1 - fraction) * total = free_now - margin   =>   fraction = 1 - margin / total

free_now cancels out, but it must exceed the margin or the second server has nothing to take.

Usage: python3 demo/serve/fraction.py FREE_MIB TOTAL_MIB MARGIN_MIB  (prints the fraction, 4 decimals)
"""

from __future__ import annotations

import math
import sys

LOWEST = 0.05
HIGHEST = 0.98


def second_server_fraction(free_mib: float, total_mib: float, margin_mib: float) -> float:
    """The fraction that leaves `margin_mib` of the GPU free once the second server has taken its share.

    Clamped to [0.05, 0.98]: the upper bound keeps at least 2 % of the card spare whatever the margin.
    Raises ValueError for impossible readings or when no more than the margin is free.
    """
    if total_mib <= 0 or not 0 <= free_mib <= total_mib or margin_mib < 0:
        raise ValueError(f"impossible GPU reading: free {free_mib} MiB, total {total_mib} MiB, margin {margin_mib} MiB")
    if free_mib <= margin_mib:
        raise ValueError(
            f"only {free_mib:.0f} MiB free on the GPU, not more than the {margin_mib:.0f} MiB margin: "
            "lower FRACTION_A or MARGIN_MIB"
        )
    return min(HIGHEST, max(LOWEST, 1 - margin_mib / total_mib))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: fraction.py FREE_MIB TOTAL_MIB MARGIN_MIB", file=sys.stderr)
        return 2
    try:
        free, total, margin = (float(arg) for arg in argv)
        fraction = second_server_fraction(free, total, margin)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Round down: a hair more margin, never less.
    print(f"{math.floor(fraction * 10_000) / 10_000:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""DAE's training mixture: the general instruction rows plus domain rows at a given share.

KD-DAE's DAE stage trains on data of which about 10 % is domain data (distilled from the domain
expert) and the rest general data (distilled from the general teacher). Rows of the instruction
set whose domain is a target domain are dropped from the general part, so the share is exact.

    python -m distill.data.mixture --general results/data/instructions/train.jsonl \
        --domain results/data/math/train.jsonl --domains arithmetic algebra --share 0.1 \
        --seed 0 --out results/data/dae/train.jsonl
"""

from __future__ import annotations

import argparse
import random

from distill.io import InputError, main_guard, read_examples, setup_logging, write_jsonl


def mix(general: list[dict], domain: list[dict], domains: set[str], share: float, seed: int):
    """All general rows outside `domains`, plus round(share/(1−share)·n_general) domain rows."""
    general = [r for r in general if r["domain"] not in domains]
    pool = [r for r in domain if r["domain"] in domains]
    wanted = round(share / (1 - share) * len(general))
    if wanted > len(pool):
        raise InputError(
            f"dae.domain_share = {share}: needs {wanted} domain rows, the domain set has "
            f"{len(pool)} in {sorted(domains)}. Fix: lower the share or generate more math rows."
        )
    rng = random.Random(seed)
    rows = general + rng.sample(pool, wanted)
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--general", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--domains", nargs="+", required=True)
    parser.add_argument("--share", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True, help="config `seed`")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()
    if not 0 < args.share < 1:
        raise InputError(f"dae.domain_share = {args.share}: must be strictly between 0 and 1.")
    general, domain = read_examples(args.general), read_examples(args.domain)
    rows = mix(general, domain, set(args.domains), args.share, args.seed)
    n_domain = sum(r["domain"] in args.domains for r in rows)
    write_jsonl(args.out, rows)
    log.info("wrote %d rows (%d domain, %.1f %%) to %s", len(rows), n_domain,
             100 * n_domain / len(rows), args.out)  # fmt: skip


if __name__ == "__main__":
    main_guard(main)

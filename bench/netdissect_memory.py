"""Memory of ``dissect --method netdissect`` as the number of images grows 10x (issue #15).

Writes a Broden-layout folder of N and 10 N demo scenes (tests/broden_fixtures.py),
and runs init + ``dissect --method netdissect`` on each in a fresh process, which
reports its peak resident memory (``ru_maxrss``), its time, and the bytes of the
quantiles' state that :mod:`rfstore.stats.quantile` predicts (units x kept(0.995, n)
x 4 per layer, twice that while compacting). The only memory that grows with the
image count is that state (0.5% of each unit's activation values); NetDissect-Lite
keeps a float64 memmap of every activation map, whose size is printed beside.

    python bench/netdissect_memory.py [--images 100] [--factor 10] [--out bench-out/netdissect]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = "features.1,features.4,features.11"

CHILD = """
import json, resource, sys, time
from pathlib import Path
from rfstore.models import ModelSpec
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.netdissect import NetDissectConfig, make_plan, open_broden, run_netdissect
from rfstore.store import open_store

data, store_path, layers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
with open_store(store_path, "a") as store:
    run_init(store, InitConfig(model=ModelSpec("rfstore.demo.network:tiny_alexnet_trained", None, 0), data=data,
                               layers=layers))
    ctx = NetworkContext.open(store)
    run_netdissect(ctx, NetDissectConfig(device="cpu", num_workers=0, batch_size=32))
    plan = make_plan(ctx, open_broden(ctx), NetDissectConfig(), 1024)
    state = sum(units * kept * 4 for units, kept in plan.capacity().values())
    maps = sum(plan.max_count(layer) * plan.units[layer] * 8 for layer in plan.layers)
print(json.dumps({"images": len(plan.images), "seconds": time.perf_counter() - start, "state_bytes": state,
                  "memmap_bytes": maps, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(images: int, out: Path) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from broden_fixtures import write_broden

    data, store = out / f"broden{images}", out / f"store{images}.zarr"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    write_broden(data, n_images=images)
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(store), LAYERS], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "netdissect")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [measure(n, args.out) for n in (args.images, args.images * args.factor)]
    mib = 1 << 20
    print(f"{'images':>8}{'peak RSS MiB':>14}{'quantile state MiB':>20}{'NetDissect-Lite memmap MiB':>28}{'s':>8}")
    for row in rows:
        print(f"{row['images']:>8}{row['peak_rss_bytes'] / mib:>14.1f}{row['state_bytes'] / mib:>20.3f}"
              f"{row['memmap_bytes'] / mib:>28.1f}{row['seconds']:>8.1f}")
    small, large = rows
    print(f"peak RSS grew {(large['peak_rss_bytes'] - small['peak_rss_bytes']) / mib:.1f} MiB for {args.factor}x "
          f"the images; the quantile state predicts at most "
          f"{2 * (large['state_bytes'] - small['state_bytes']) / mib:.2f} MiB of that "
          f"(bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

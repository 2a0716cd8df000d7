"""Build a small ImageNet-shaped cache with the real libraries: ROOT/{hub,datasets}."""

import os
import sys
from pathlib import Path

from hf_loader import fixtures

root, dataset = Path(sys.argv[1]), sys.argv[2]
# Train images (default 48); the seed scenario wants files large enough to stop a copy midway.
n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 48
splits, names = fixtures.tiny_splits(n_train=n_train, n_val=16, classes=4, size=(96, 80))
snapshot = fixtures.make_hub_snapshot(root / "hub", dataset, splits, names, shards=2)
fixtures.make_arrow_cache(root / "datasets", dataset, snapshot)
for lock in (root / "datasets").glob("*.lock"):
    lock.unlink()
# Leave without interpreter teardown: parquet reader threads still winding down then can
# abort the process ("terminate called without an active exception", apache/arrow#45214),
# seen here under load after every file above was written and closed.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)

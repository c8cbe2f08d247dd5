"""What an image collection costs in memory once every partition and the test set are loaded, against its uint8
size: `python benchmarks/image_memory.py FOLDER [num_partitions]` (FOLDER: class folders of images). Prints
one JSON line: images, uint8 bytes, resident-memory growth, their ratio, load seconds."""

from __future__ import annotations

import gc
import json
import sys
import time


def resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def measure(folder: str, num_partitions: int = 50) -> dict:
    from PIL import Image  # noqa: F401 - imported before the baseline: libraries are not the collection's cost

    from fedsim.data import federated_data
    from fedsim.scenario import DataSection

    gc.collect()
    before = resident_bytes()
    start = time.perf_counter()
    data = federated_data(DataSection(dataset=f"folder:{folder}", test_fraction=0.1,
                                      partitioner={"num_partitions": num_partitions}), 0)
    parts = [data.partition(i)[0] for i in range(num_partitions)]
    seconds = time.perf_counter() - start
    gc.collect()
    grown = resident_bytes() - before
    stored = sum(p.numel() for p in parts) + data.test[0].numel()
    return {"images": sum(len(p) for p in parts) + len(data.test[0]), "uint8_bytes": stored,
            "resident_growth_bytes": grown, "ratio": round(grown / stored, 3), "load_s": round(seconds, 1)}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], *(int(a) for a in sys.argv[2:]))))

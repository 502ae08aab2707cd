"""`imgcls predict DIR --ray` against `imgcls predict DIR`: whole commands, Ray's start-up
and shut-down included, on the same photos.

    PYTHONPATH=src python benchmarks/ray_predict.py            # 3000 photos, 3 rounds each

The script writes `--images` photos as benchmarks/performance.py does (random crops, at
400-1600 px, of the real photos this machine has offline, JPEG quality 90), warms the
export cache once, then runs the two commands as a user types them, each with a fresh
`--output preds.jsonl`, alternating for `--rounds` rounds (a shared machine slows some
runs; alternating spreads that over both). It reports each command's images/s (images /
wall time of the whole command), the load average around each run, whether the two
JSONL files agree (same paths, same top-k, scores within 1e-5), and then where a --ray
run's time goes — Ray's start, the actors' start (to the first result), the steady
images/s after it, Ray's shut-down — twice for the default layout (an actor per core, one
thread each) and twice, alternating, for one actor of two threads.

Measured 2026-12-03 09:11 UTC on 2 cores of an Intel Xeon (AVX-512, AMX), no GPU, Ray
2.60, ONNX Runtime 1.32, EfficientNet-Lite0, 3000 photos, 3 rounds; the machine was shared
with three other engineers' jobs (load average 2.1 rising to 6.6):

    local  84.6 86.2 82.6 images/s    --ray  81.8 65.5 69.9 images/s    median 0.83x
    answers: same top-k, max score difference 0.0e+00
    --ray phases: Ray starts 4.0 s, actors start 6.4-7.0 s, then 108-121 images/s
                  (one actor of 2 threads: 83-97), Ray shuts down 1.3-1.6 s

An earlier run under heavier load (3.2 -> 7.4) gave 70.7 vs 72.4 images/s (1.02x): loaded
rounds flatter --ray, whose processes win a larger share of the shared cores.
docs/scale.md ("What --ray costs on one machine") explains where the rest goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from performance import write_photo_set  # the photos of docs/performance.md

REPO = Path(__file__).resolve().parent.parent
# One --ray run's phases, in the calls `imgcls predict --ray` makes: Ray's start, the
# actors' start (up to the first result), the steady stream, Ray's shut-down; with
# ACTORS actors of THREADS threads each (argv: DIR ACTORS THREADS).
TIMELINE = """
import sys, time
from imgcls import ImageClassifier
from imgcls.data.images import list_images
import imgcls.ray
files = [str(p) for p in list_images(sys.argv[1])]
actors, threads = int(sys.argv[2]), int(sys.argv[3])
classifier = ImageClassifier(backend="onnx")
t0 = time.perf_counter()
with imgcls.ray.session():
    t1 = time.perf_counter()
    runner = imgcls.ray.RayClassifier(classifier, actors=actors)
    runner.actor_options["threads"] = threads
    runner.map_options["num_cpus"] = threads - imgcls.ray.LEFT_FOR_READS
    results = runner.classify_paths(files)
    next(results)
    t2 = time.perf_counter()
    rest = sum(1 for _ in results)
    t3 = time.perf_counter()
print(t1 - t0, t2 - t1, rest / (t3 - t2), time.perf_counter() - t3)
"""


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds of `python -m imgcls ARGS`, and the 1-minute load before and after."""
    before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "imgcls", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"imgcls {' '.join(args)} failed:\n{done.stderr}")
    return seconds, before, os.getloadavg()[0]


def agree(local: Path, on_ray: Path) -> str:
    """Whether two predict outputs hold the same answers (scores within 1e-5)."""
    a = {r["path"]: r for r in map(json.loads, local.read_text().splitlines())}
    b = {r["path"]: r for r in map(json.loads, on_ray.read_text().splitlines())}
    if a.keys() != b.keys():
        return f"different paths ({len(a)} vs {len(b)})"
    worst = 0.0
    for path, record in a.items():
        p, q = record["predictions"], b[path]["predictions"]
        if [x["index"] for x in p] != [x["index"] for x in q]:
            return f"different top-k for {path}"
        worst = max(worst, *(abs(x["score"] - y["score"]) for x, y in zip(p, q, strict=True)))
    return f"same top-k, max score difference {worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, help="use these images instead of writing some")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ray-predict-"))
    env = dict(os.environ, IMGCLS_CACHE_DIR=str(scratch / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    data = options.data or write_photo_set(scratch / "photos", options.images)
    images = sum(1 for p in data.iterdir() if p.suffix == ".jpg")
    run(["predict", str(REPO / "samples"), "--json"], env)  # the export, into the cache
    print(f"{images} images in {data}; {os.cpu_count()} cores")

    speeds: dict[str, list[float]] = {"local": [], "--ray": []}
    for round_ in range(options.rounds):
        for name, extra in (("local", []), ("--ray", ["--ray"])):
            output = scratch / f"{name.strip('-')}.jsonl"
            output.unlink(missing_ok=True)
            seconds, before, after = run(
                ["predict", str(data), "--output", str(output), *extra], env
            )
            speeds[name].append(images / seconds)
            print(
                f"round {round_ + 1} {name:>6}: {images / seconds:6.1f} images/s "
                f"({seconds:5.1f} s; load {before:.1f} -> {after:.1f})",
                flush=True,
            )
    local, on_ray = (statistics.median(speeds[k]) for k in ("local", "--ray"))
    print(f"median: local {local:.1f}, --ray {on_ray:.1f} images/s: {on_ray / local:.2f}x")
    print("answers:", agree(scratch / "local.jsonl", scratch / "ray.jsonl"))
    for actors, threads in [(2, 1), (1, 2)] * 2:  # the default layout, and one actor
        command = [sys.executable, "-c", TIMELINE, str(data), str(actors), str(threads)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        started, first, steady, stopped = map(float, done.stdout.split())
        print(
            f"--ray phases, {actors} actor(s) x {threads} thread(s): Ray starts {started:.1f} "
            f"s, actors start {first:.1f} s (to the first result), then {steady:.1f} "
            f"images/s, Ray shuts down {stopped:.1f} s (load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()

"""Command-line benchmark: a command run twice on the same input, the second run reusing the
compiled (and traced) programs of the first from the persistent caches (`curvax.compilation`).

    .venv/bin/python benchmarks/bench_cli.py                  # Si (primitive, 2×2×2) and SnO2 (DFT set)
    .venv/bin/python benchmarks/bench_cli.py --cases si --repeat 2

For each case: `--repeat` rounds, each with a fresh empty $CURVAX_JAX_CACHE, of the command run
twice (wall time of the whole process, as a user sees it); prints the median first and second
run, their ratio (issue 13's target: ≥ 5), and whether the two runs wrote identical
properties.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "nequix-mp-1.nqx"
CURVAX = [str(Path(sys.executable).parent / "curvax")]  # the installed command, as a user runs it


def si_cell(folder: Path) -> Path:
    from ase.build import bulk

    path = folder / "Si.vasp"
    bulk("Si", "diamond", a=5.43).write(path, format="vasp")
    return path


CASES = {  # name: (arguments after `curvax phonons`, given a scratch folder)
    "si": lambda d: [str(si_cell(d)), "--supercell", "2", "2", "2"],
    "sno2": lambda d: [str(SHARED / "data" / "phonons" / "SnO2" / "phonopy_disp.yaml"), "--compare-dft",
                       str(SHARED / "data" / "phonons" / "SnO2")],
}


def run_twice(arguments, folder: Path):
    cache = folder / "cache"
    cache.mkdir()
    env = {**os.environ, "CURVAX_JAX_CACHE": str(cache)}
    walls, outputs = [], []
    for i in range(2):
        out = folder / f"out{i}"
        t0 = time.perf_counter()
        run = subprocess.run([*CURVAX, "phonons", *arguments, "--model", str(MODEL), "--no-plot", "--no-progress",
                              "--out", str(out)], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"curvax phonons {' '.join(arguments)} failed:\n{run.stderr[-2000:]}")
        walls.append(time.perf_counter() - t0)
        outputs.append((out / "properties.json").read_bytes())
    return walls, outputs[0] == outputs[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not MODEL.is_file():
        parser.error(f"{MODEL}: model file missing (the benchmark reads ../shared)")
    print(f"{'case':6} {'first [s]':>10} {'second [s]':>11} {'ratio':>6}  identical")
    for name in args.cases:
        firsts, seconds, same = [], [], True
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                arguments = CASES[name](Path(tmp))
                (first, second), identical = run_twice(arguments, Path(tmp))
            firsts.append(first)
            seconds.append(second)
            same &= identical
        f, s = statistics.median(firsts), statistics.median(seconds)
        print(f"{name:6} {f:10.2f} {s:11.2f} {f / s:6.2f}  {same}", flush=True)


if __name__ == "__main__":
    main()

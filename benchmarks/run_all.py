"""Run every fcn_jax-vs-PyTorch benchmark, each in its own process; JSON lands in benchmarks/results/.

  python -m benchmarks.run_all [--quick]

Default: inference (16 cases), train_step (4 cases), compile, layers (caffe 500x500): about 15
minutes on an idle 2-core CPU, longer when the machine is shared (the ratios stay comparable,
the times do not). --quick: the headline cases only (a few minutes).
Needs the bench venv (pip install -e ".[train,prepare,bench]": torch). upsample.py, input_pipeline.py and
onnx_runtime.py are separate benchmarks and not run here.
"""
import argparse
import subprocess
import sys
import time

STEPS = {
    "default": (["benchmarks.inference"], ["benchmarks.train_step"], ["benchmarks.compile"],
                ["benchmarks.layers", "--reps", "2"]),
    "quick": (["benchmarks.inference", "--cases", "quick"], ["benchmarks.train_step", "--cases", "quick"],
              ["benchmarks.compile", "--parts", "init,eval"]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed = []
    for step in STEPS["quick" if args.quick else "default"]:
        start = time.perf_counter()
        print(f"== python -m {' '.join(step)}", flush=True)
        if subprocess.run([sys.executable, "-m", *step]).returncode != 0:
            failed.append(step[0])
        print(f"== {step[0]}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

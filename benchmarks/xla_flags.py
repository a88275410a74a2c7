"""Do any XLA:CPU flags speed up FCN convolutions? One process per flag setting, torch as yardstick.

Each setting runs `benchmarks.inference --case ...` in a fresh process (XLA reads XLA_FLAGS once,
at start-up), which checks fcn_jax against torch and times both interleaved; the ratio
fcn_jax/torch makes settings comparable although they ran at different times on a shared machine.
A flag this jaxlib rejects shows up as a failed run.

  python -m benchmarks.xla_flags [--case fcn8s,same,224,1,fp32,4] [--out benchmarks/results/xla_flags.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import common

SETTINGS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_prefer_vector_width=512",
)


def run_setting(flags: str, case: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "inference.json")
        env = {**os.environ, "XLA_FLAGS": flags}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--case", case,
                               "--formats", "channels_last", "--out", out], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"xla_flags": flags, "error": proc.stderr.strip().splitlines()[-1:]}
        with open(out) as f:
            row = json.load(f)["results"][0]
    return {"xla_flags": flags, "ratio_fcn_jax_over_torch": row["ratio_fcn_jax_over_torch"],
            "fcn_jax_median_s": row["stats"]["fcn_jax"]["median_s"], "jax_compile_s": row["jax_compile_s"],
            "relative_error_vs_torch": row["relative_error_vs_fcn_jax"], "loadavg": row["loadavg"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="fcn8s,same,224,1,fp32,4")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report = {"benchmark": "xla_flags", "case": args.case, **common.machine_info(), "results": []}
    for flags in SETTINGS:
        row = run_setting(flags, args.case)
        report["results"].append(row)
        print(f"{flags or '(none)':80s} " + (f"ratio {row['ratio_fcn_jax_over_torch']}" if "error" not in row
                                             else f"failed: {row['error']}"), flush=True)
        common.write_report("xla_flags", report, args.out)


if __name__ == "__main__":
    main()

"""Markdown tables of benchmarks/results/*.json (the numbers in BENCHMARKS.md come from here).

  python -m benchmarks.report [--results benchmarks/results]
"""
import argparse
import json
import os


def _load(results, name):
    path = os.path.join(results, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _speed_table(report, unit):
    lines = [f"| net | geometry | size | batch | dtype | fcn_jax s/{unit} | torch NCHW | torch channels_last "
             "| ratio (median) | ratio (min) | fcn_jax GFLOP/s | rel. error | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        s = row["stats"]
        torch_s = [f"{s[k]['median_s']:.2f}" if k in s else "-" for k in ("torch_nchw", "torch_channels_last")]
        r = row["ratio_fcn_jax_over_torch"]
        err = max(row["relative_error_vs_fcn_jax"].values()) if "relative_error_vs_fcn_jax" in row else None
        lines.append(f"| {row['variant']} | {row['geometry']} | {row['size']} | {row['batch']} | {row['dtype']} "
                     f"| {s['fcn_jax']['median_s']:.2f} | {torch_s[0]} | {torch_s[1]} | **{r['median']:.2f}** "
                     f"| {r['min']:.2f} | {s['fcn_jax']['gflops_per_s']} | {'-' if err is None else f'{err:.1e}'} "
                     f"| {row['loadavg'][0]} |")
    return "\n".join(lines)


def _memory_table(*reports):
    lines = ["| benchmark | net | geometry | size | batch | dtype | fcn_jax MB | torch NCHW MB "
             "| torch channels_last MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, report in reports:
        for row in report["results"]:
            s = row["stats"]
            mb = [f"{s[k]['peak_rss_rise_mb']:.0f}" if k in s else "-"
                  for k in ("fcn_jax", "torch_nchw", "torch_channels_last")]
            lines.append(f"| {name} | {row['variant']} | {row['geometry']} | {row['size']} | {row['batch']} "
                         f"| {row['dtype']} | {' | '.join(mb)} |")
    return "\n".join(lines)


def _layers_table(report):
    lines = ["| layer | GFLOP | fwd fcn_jax conv | fwd fcn_jax gemm | fwd torch CL | fwd torch NCHW "
             "| fwd+bwd fcn_jax conv | fwd+bwd fcn_jax gemm | fwd+bwd torch CL | fwd+bwd torch NCHW |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        cells = []
        for phase in ("forward", "forward_backward"):
            for name in ("jax_conv", "jax_gemm", "torch_channels_last", "torch_nchw"):
                cells.append(f"{row[phase][name]['median_ms']:.0f}" if name in row[phase] else "-")
        lines.append(f"| {row['layer']} | {row['gflop_forward']:.1f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    inference, train = _load(args.results, "inference"), _load(args.results, "train_step")
    if inference:
        print("### Inference (s per batch, ratio = fcn_jax / faster torch)\n\n" + _speed_table(inference, "batch"))
    if train:
        print("\n### Training step (s per step)\n\n" + _speed_table(train, "step"))
    if inference and train:
        print("\n### Peak RSS rise during one call (MB)\n\n" + _memory_table(("inference", inference),
                                                                          ("train_step", train)))
    layers = _load(args.results, "layers_caffe500")
    if layers:
        print("\n### Per layer, FCN-8s caffe 500x500 (ms, median)\n\n" + _layers_table(layers))


if __name__ == "__main__":
    main()

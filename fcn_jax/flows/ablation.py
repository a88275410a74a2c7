"""Ablation sweeps: train a base config and named variants of it, one workdir each; tabulate and plot
(python -m fcn_jax.ablate).

A sweep file defines `get_sweep(num_steps=...) -> (base ConfigDict, [(name, overrides), ...])`, where
overrides map dotted config keys to values ({"model.variant": "fcn32s"}). `init_from: "@name"` starts a
variant from an earlier variant's final checkpoint (the paper's staged 32s -> 16s -> 8s training).
--steps passes num_steps to get_sweep, so the sweep file scales its own eval and checkpoint cadence.

Each variant trains in `workdir/<name>` through `train.job.train_and_evaluate`, one after another, in this
process or (--processes) one subprocess each. Rerunning resumes the sweep: a variant is finished when
it holds result.json (written by the training loop once it finished) and is then not trained again; a
half-trained one resumes from its latest checkpoint. A workdir that was trained with another config is an
error, not a silent mix.

Outputs: `workdir/results.md` (the paper's table: pixel acc, mean acc, mean IU, fw IU, plus params and
training throughput) and `workdir/results.png` (final mean IU per variant, mean IU over training).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
from typing import Any

import ml_collections

from fcn_jax.core.constants import CLASS_SCORES, MORE_SCORES, SCORES
from fcn_jax.train import preemption
from fcn_jax.weights import artifacts

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------- the sweep definition


class SweepError(ValueError):
    """A sweep file or a workdir that cannot be used; the CLI prints it as one line."""


def load_sweep(path: str, num_steps: int | None = None):
    """(base config, [(name, overrides)]) from a sweep file's get_sweep()."""
    if not os.path.isfile(path):
        raise SweepError(f"sweep file {path} does not exist")
    spec = importlib.util.spec_from_file_location("_fcn_jax_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"sweep file {path} defines no get_sweep()")
    return module.get_sweep() if num_steps is None else module.get_sweep(num_steps=num_steps)


def apply_overrides(base: ml_collections.ConfigDict, overrides: dict[str, Any], name: str) -> ml_collections.ConfigDict:
    """A copy of `base` with dotted keys set; an unknown key is an error (a typo must not train the base)."""
    config = ml_collections.ConfigDict(base.to_dict())
    for key, value in overrides.items():
        *parents, field = key.split(".")
        node = config
        for parent in parents:
            if parent not in node or not isinstance(node[parent], ml_collections.ConfigDict):
                raise SweepError(f"variant {name!r}: unknown config key {key!r}")
            node = node[parent]
        if field not in node:
            raise SweepError(f"variant {name!r}: unknown config key {key!r}")
        try:
            node[field] = value
        except TypeError as error:  # ml_collections refuses another type
            raise SweepError(f"variant {name!r}: {key}={value!r}: {error}") from None
    return config


def build_variants(base: ml_collections.ConfigDict, overrides: list[tuple[str, dict]], workdir: str):
    """[(name, description, config)] with `@name` init_from resolved to that earlier variant's workdir."""
    from fcn_jax.train import config_checks

    seen, variants = set(), []
    for name, changes in overrides:
        if not _NAME.match(name):
            raise SweepError(f"variant name {name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
        if name in seen:
            raise SweepError(f"variant name {name!r} appears twice in the sweep")
        config = apply_overrides(base, changes, name)
        config_checks.resolve_num_classes(config)  # as training stores it, so a finished variant is recognised
        if config.init_from.startswith("@"):
            parent = config.init_from[1:]
            if parent not in seen:
                raise SweepError(f"variant {name!r}: init_from {config.init_from!r} names no earlier variant")
            config.init_from = os.path.abspath(os.path.join(workdir, parent))
        description = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(base)"
        variants.append((name, description, config))
        seen.add(name)
    return variants


def parent_of(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The sweep variant a config was initialised from, if any."""
    if config.init_from and os.path.dirname(config.init_from) == os.path.abspath(workdir):
        return os.path.basename(config.init_from)
    return None


# ----------------------------------------------------------------------------- one variant


def finished_result(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """The result of a variant that finished in `workdir` under `config`, None if unfinished; a workdir trained
    or finished under another config is a SweepError."""
    try:
        return artifacts.finished_or_resumable(json.loads(config.to_json()), os.path.abspath(workdir))
    except artifacts.WorkdirError as error:
        raise SweepError(str(error)) from None


def run_variant(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train `config` in `workdir` unless it finished there; returns its scores, params and images/s."""
    from fcn_jax.train import job

    result = finished_result(config, workdir)
    return job.train_and_evaluate(config, os.path.abspath(workdir)) if result is None else result


# ----------------------------------------------------------------------------- the sweep


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """--set key=value pairs -> {dotted key: value}; values are Python literals (3, 0.5, (64, 64), True) or text."""
    import ast

    parsed = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {setting!r}: expected key=value, e.g. data.source=folder")
        try:
            parsed[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed[key] = text
    return parsed


def run(sweep: str, workdir: str, *, steps: int | None = None, processes: bool = False,
        only: str | None = None, settings: list[str] = ()) -> list[dict]:
    """Run every unfinished variant of the sweep file (or only the one named), then write the results.

    settings: "key=value" overrides of the sweep's base config (e.g. another dataset), under every variant's own."""
    base, overrides = load_sweep(sweep, steps)
    base = apply_overrides(base, parse_settings(list(settings)), "--set")
    variants = build_variants(base, overrides, workdir)
    if only is not None:
        if only not in [name for name, _, _ in variants]:
            raise SweepError(f"--variant {only!r} is not in {sweep} ({', '.join(n for n, _, _ in variants)})")
        config = {name: config for name, _, config in variants}[only]
        return [run_variant(config, os.path.join(workdir, only))]
    os.makedirs(workdir, exist_ok=True)
    results = []
    for index, (name, description, config) in enumerate(variants, start=1):
        logging.info("variant %d/%d %s: %s", index, len(variants), name, description)
        variant_dir = os.path.join(workdir, name)
        if processes and finished_result(config, variant_dir) is None:
            command = [sys.executable, "-m", "fcn_jax.ablate", "--sweep", sweep, "--workdir", workdir,
                       "--variant", name] + ([] if steps is None else ["--steps", str(steps)]) + [
                f"--set={setting}" for setting in settings]
            returncode = run_child(command)
            if returncode == preemption.EXIT_CODE:
                raise preemption.Stopped(f"variant {name} stopped by a signal, its checkpoint and the finished "
                                         f"variants kept; run the same command to resume (exit code {returncode})")
            if returncode:
                raise RuntimeError(f"variant {name} failed (exit code {returncode}): {' '.join(command)}")
        results.append(run_variant(config, variant_dir))
    command = " ".join(["python -m fcn_jax.ablate --sweep", sweep, "--workdir", workdir]
                       + ([] if steps is None else ["--steps", str(steps)])
                       + [f"--set {setting}" for setting in settings])  # --processes: same results
    write_results(base, variants, results, workdir, title=f"{sweep}, {base.train.num_steps} steps each",
                  command=command)
    return results


def run_child(command: list[str]) -> int:
    """Run a variant's process; a signal stopping this one (KeyboardInterrupt) stops it first, with its checkpoint,
    instead of leaving it orphaned and training beside the rerun."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGTERM)
        while process.poll() is None:  # a second signal must not orphan it either
            try:
                process.wait()
            except KeyboardInterrupt:
                pass
        if process.returncode == preemption.EXIT_CODE:  # it saved its step: say which variant stopped
            return process.returncode
        raise


def total_steps(variants, workdir: str) -> dict[str, int]:
    """Training steps behind each variant, those of the variants it was initialised from included."""
    configs = {name: config for name, _, config in variants}
    totals: dict[str, int] = {}
    for name, _, config in variants:  # parents come first (build_variants checks it)
        parent = parent_of(config, workdir)
        totals[name] = config.train.num_steps + (totals[parent] if parent in configs else 0)
    return totals


def results_table(variants, results: list[dict], workdir: str) -> str:
    """Markdown table like the paper's, scores in percent."""
    totals = total_steps(variants, workdir)
    titles = [title for _, title in SCORES + MORE_SCORES]
    lines = ["| variant | changes from the base | steps | " + " | ".join(titles) + " | params | train images/s |",
             "|---" * (len(titles) + 5) + "|"]
    for (name, description, _), result in zip(variants, results):
        scores = " | ".join(_percent(result.get(key), ".2f") for key, _ in SCORES + MORE_SCORES)
        lines.append(f"| {name} | {description} | {totals[name]} | {scores} | {result['params']:,} | "
                     f"{result['images_per_s']:.1f} |")
    return "\n".join(lines)


def describe_base(config: ml_collections.ConfigDict) -> str:
    model, data, optim, train_config = config.model, config.data, config.optim, config.train
    return (f"{model.variant}, {model.geometry} geometry, width {model.width:g}, "
            f"{'learned' if model.learnable_upsample else 'frozen bilinear'} upsampling; "
            f"{data.source} data ({data.train_split} -> {data.eval_split}), crops "
            f"{data.crop_size[0]}x{data.crop_size[1]}, batch {train_config.global_batch_size}; "
            f"{optim.optimizer} lr {optim.learning_rate:g} ({optim.schedule}), {config.loss_reduction} loss; "
            f"{train_config.num_steps} steps")


def _percent(value, spec: str) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:{spec}}"


def class_table(variants, results: list[dict], key: str = "per_class_iou", title: str = "IU") -> str:
    """Per-class `key` scores (%) of every variant, a row a class, named by the dataset (the runs' per_class_*)."""
    names = [name for name, _, _ in variants]
    per_class = results[0].get(key) if results else None
    if not isinstance(per_class, dict):  # a result.json from before classes were named, or without this score
        return ""
    rows = [f"## {title} per class (%)", "", "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for cls in per_class:
        values = [result.get(key, {}).get(cls) for result in results]
        rows.append(f"| {cls} | " + " | ".join(_percent(v, ".1f") for v in values) + " |")
    return "\n".join(rows)


def write_results(base: ml_collections.ConfigDict, variants, results: list[dict], workdir: str,
                  title: str, command: str) -> tuple[str, str]:
    """workdir/results.md and workdir/results.png; `command` is the line that reproduces them."""
    text = [f"# Ablations: {title}", "", f"Made by `{command}`.", "", f"Base: {describe_base(base)}.", "",
            results_table(variants, results, workdir), "",
            f"Scores (%) on {base.data.eval_split} after the last step; steps include those of the variant a run "
            "was initialised from; train images/s is the median over logging windows.", "",
            "![results](results.png)", "",
            *(f"{class_table(variants, results, key, title)}\n" for key, title in CLASS_SCORES)]
    md_path = os.path.join(workdir, "results.md")
    with open(md_path, "w") as f:
        f.write("\n".join(text))
    png_path = os.path.join(workdir, "results.png")
    plot_results(variants, results, workdir, png_path, title)
    return md_path, png_path


def plot_results(variants, results: list[dict], workdir: str, path: str, title: str) -> None:
    """Final mean IU per variant (bars) and mean IU over training steps (curves; staged runs continue their parent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [name for name, _, _ in variants]
    figure = Figure(figsize=(13, 0.5 * len(names) + 3))
    FigureCanvasAgg(figure)
    bars, curves = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    values = [100 * r["mean_iou"] for r in results]
    positions = range(len(names))
    bars.barh(positions, values, color=[f"C{i % 10}" for i in positions])
    bars.set_yticks(list(positions), names)
    bars.invert_yaxis()
    for y, value in zip(positions, values):
        bars.text(value, y, f" {value:.1f}", va="center", fontsize="small")
    bars.set_xlim(0, max(values + [1]) * 1.15)
    bars.set_xlabel("mean IU (%) after the last step")
    bars.set_title("final mean IU")

    totals = total_steps(variants, workdir)
    for i, (name, _, config) in enumerate(variants):
        evals = [r for r in artifacts.read_metrics(os.path.join(workdir, name)) if r["split"] != "train"]
        offset = totals[name] - config.train.num_steps
        # Marker and line style vary with the colour, so equal curves (two stuck at one value) both show.
        curves.plot([offset + r["step"] for r in evals], [100 * r["mean_iou"] for r in evals],
                    marker="osD^v"[i % 5], markersize=4, linestyle=("-", "--", "-.", ":")[i % 4],
                    color=f"C{i % 10}", label=name)
    curves.set_xlabel("training steps (staged runs: counted from the start of their first stage)")
    curves.set_ylabel("mean IU (%)")
    curves.set_title("mean IU during training")
    curves.grid(alpha=0.3)
    curves.legend(fontsize="small", loc="best")
    figure.suptitle(f"Ablations: {title}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)

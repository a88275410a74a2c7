"""Run artifacts (the workdir contract): the files a training workdir and a converted-weights folder hold, and what
reads them back.

A training workdir holds
    config.json      the config it was trained with (written at the start, compared on every resume)
    metrics.jsonl    one JSON object a line: {"step", "split", ...values} (train rows and evaluations)
    tensorboard/     the same values as TensorBoard events
    checkpoints/     orbax checkpoints (weights.checkpoints)
    samples/         predicted and ground-truth masks of a few validation images per evaluation
    result.json      {"config", "result"}: written once the run finished; a rerun returns it unchanged
A converted-weights folder (python -m fcn_jax.convert, the pipeline's convolutionalized/) holds
    fcn_jax_weights.json   the model settings and the input normalisation the weights expect
    checkpoint/            orbax, {"params": ...}
Only process 0 writes the JSON files; every write of a whole file is atomic (temp file + os.replace).
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Any

from fcn_jax.core.normalization import check_normalization

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
WEIGHTS_SIDECAR = "fcn_jax_weights.json"
WEIGHTS_CHECKPOINT = "checkpoint"
# What a network needs besides its params; stored with the weights (sidecar) or in the run's config.json.
SETTINGS = ("variant", "num_classes", "width", "geometry", "normalization")


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked (another config, ...); the CLIs print it as one line."""


# ----------------------------------------------------------------------------- JSON files


def write_json(path: str, value: Any) -> None:
    """Write `value` as JSON atomically: a reader (or a kill -9) never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def json_clean(value: Any) -> Any:
    """`value` with NaN floats (a class absent from a split) as None: standard JSON, equal after a round trip."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    return value


def read_json(path: str) -> Any:
    """A JSON file of a workdir or weights folder; one edited into invalid JSON is a WorkdirError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise WorkdirError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                           "fix or restore it") from None
    except UnicodeDecodeError as error:
        raise WorkdirError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); fix or restore it"
                           ) from None


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(workdir: str) -> list[dict]:
    """Every row of workdir/metrics.jsonl; a partial last line (a write cut by a kill) is left out."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise WorkdirError(f"{path}: line {len(rows) + 1} is not JSON: {line[:80]!r}") from None
    return rows


def truncate_metrics(workdir: str, max_step: int) -> None:
    """Drop the rows after `max_step` (they belong to a future lost with the run that wrote them)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return
    _rewrite_metrics(path, [row for row in read_metrics(workdir) if row["step"] <= max_step])


def _rewrite_metrics(path: str, rows: list[dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp, path)


def median_train_speed(workdir: str) -> float:
    """Median training images/s over the logged windows: robust to windows holding a compile or an eval."""
    speeds = [row["images_per_s"] for row in read_metrics(workdir) if row["split"] == "train"]
    return statistics.median(speeds) if speeds else float("nan")


class Writer:
    """metrics.jsonl + TensorBoard events; inactive (writes nothing) unless `active` (process 0)."""

    def __init__(self, workdir: str, resume_step: int, active: bool = True):
        self.active = active
        if not active:
            return
        from tensorboardX import SummaryWriter

        truncate_metrics(workdir, resume_step)
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, step: int, split: str, values: dict, replace: bool = False) -> None:
        """Append a row; `replace`: drop the rows of the same step and split first."""
        if not self.active:
            return
        if replace and os.path.exists(self.path):
            _rewrite_metrics(self.path, [row for row in read_metrics(self.workdir)
                                         if (row["step"], row["split"]) != (step, split)])
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                self.tb.add_scalar(f"{split}/{key}", value, step)
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.tb.close()


# ----------------------------------------------------------------------------- configs and results


def config_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in config_differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _differences(old: dict, new: dict, may_differ: tuple[str, ...]) -> tuple[list, list]:
    """(differences allowed by `may_differ` (dotted keys or their prefixes), the others)."""
    allowed, other = [], []
    for difference in config_differences(old, new):
        key = difference[0]
        (allowed if any(key == k or key.startswith(k + ".") for k in may_differ) else other).append(difference)
    return allowed, other


def _raise_if(differences: list, what: str) -> None:
    if differences:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in differences[:4])
        raise WorkdirError(f"{what} ({listed}); use a new workdir or delete that folder")


def check_same_config(config: dict, workdir: str, may_differ: tuple[str, ...] = ()) -> None:
    """A workdir resumes only under the config that started it (its config.json), but for `may_differ` keys."""
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(path):
        _raise_if(_differences(read_json(path), config, may_differ)[1], f"{workdir} was trained with another config")


def read_result(config: dict, workdir: str, may_differ: tuple[str, ...] = ()) -> dict | None:
    """The stored result of a run that finished in `workdir` under `config`; None if it has not finished, or
    finished under a config that differs only in `may_differ` keys (it may go on: e.g. more steps)."""
    path = os.path.join(workdir, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    stored = read_json(path)
    allowed, other = _differences(stored["config"], config, may_differ)
    _raise_if(other, f"{workdir} finished with another config")
    return None if allowed else stored["result"]


def finished_or_resumable(config: dict, workdir: str, may_differ: tuple[str, ...] = ()) -> dict | None:
    """read_result, and when unfinished check_same_config: the result, None to train, or a WorkdirError."""
    result = read_result(config, workdir, may_differ)
    if result is None:
        check_same_config(config, workdir, may_differ)
    return result


def write_result(config: dict, workdir: str, result: dict) -> dict:
    """Store `result` as the workdir's result.json; returns it as stored (json_clean), so callers see what a
    rerun will read back."""
    result = json_clean(result)
    write_json(os.path.join(workdir, RESULT_FILE), {"config": config, "result": result})
    return result


# ----------------------------------------------------------------------------- model settings stored with weights


def stored_settings(weights: str) -> dict:
    """Model settings saved with the weights: the converted sidecar, else the training run's config.json.

    A checkpoints/ dir reads the config.json of the workdir above it. {} when the folder holds neither.
    """
    path = os.path.abspath(os.path.expanduser(weights))
    if os.path.isfile(path):
        raise ValueError(f"--weights {weights} is a file; pass a training workdir or a folder written by "
                         "python -m fcn_jax.convert (which converts .caffemodel and .pth files)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--weights {weights} does not exist")
    sidecar = os.path.join(path, WEIGHTS_SIDECAR)
    if os.path.isfile(sidecar):
        meta = read_json(sidecar)
        return {k: meta[k] for k in (*SETTINGS, "dtype", "heads", "resnet", "crf") if k in meta}
    config = run_config(path)
    if config is None:
        return {}
    settings = {k: config["model"][k] for k in ("variant", "num_classes", "width", "geometry", "dtype")}
    return {**settings, "heads": config["model"].get("heads", []), "resnet": config["model"].get("resnet", {}),
            "crf": config["model"].get("crf", {}), "normalization": config["data"]["normalization"]}


def run_config(weights: str) -> dict | None:
    """The config.json of the training run behind weights (a workdir or its checkpoints/ dir), if any."""
    path = os.path.abspath(os.path.expanduser(weights))
    for directory in (path, os.path.dirname(path)):
        if os.path.isfile(os.path.join(directory, CONFIG_FILE)):
            return read_json(os.path.join(directory, CONFIG_FILE))
    return None


def model_settings(weights: str, overrides: dict | None = None) -> dict:
    """Stored settings with the non-None `overrides` on top; every one of SETTINGS must end up known."""
    settings = {"dtype": "float32", "heads": (), "resnet": {}, **stored_settings(weights)}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"{weights} holds neither {WEIGHTS_SIDECAR} nor a training {CONFIG_FILE}; "
                         f"pass {' '.join('--' + k for k in missing)}")
    check_normalization(settings["normalization"])
    settings["num_classes"], settings["width"] = int(settings["num_classes"]), float(settings["width"])
    settings["heads"] = tuple((str(name), int(k)) for name, k in settings["heads"])  # JSON lists -> tuples
    return settings

"""Config flags (absl + ml_collections' --config FILE --config.key=value) parsed with one-line errors.

`python -m fcn_jax.main` and `python -m fcn_jax.pipeline` parse their command lines through `parse_flags`: an
unknown key, a bad value or a key given twice ends in `error: ...` on stderr (exit 1), never a traceback.
"""
from __future__ import annotations

from absl import flags


def repeated_overrides(argv: list[str]) -> list[str]:
    """--config.<key> flags given more than once (absl would concatenate a repeated tuple value)."""
    keys = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    return sorted({key for key in keys if keys.count(key) > 1})


def parse_flags(argv: list[str], flag_values=flags.FLAGS) -> list[str]:
    """absl flag parsing where a bad flag or config key is one line on stderr (exit 1), not a traceback."""
    repeated = repeated_overrides(argv)
    if repeated:
        raise SystemExit(f"error: {', '.join(repeated)} given more than once; give each config key once")
    try:
        return flag_values(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as error:  # unknown key, bad value
        message = " ".join(str(error).replace("\\n", " ").replace("\\'", "").strip("'\"").split())
        if isinstance(error, (KeyError, AttributeError)):
            message = f"unknown config key {message}"
        raise SystemExit(f"error: {message}") from None

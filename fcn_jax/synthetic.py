"""Write the synthetic datasets: a VOC2012 + SBD look-alike, or (--layout folder) a folder dataset of your own kind.

    python -m fcn_jax.synthetic --out data/synthetic_voc
    python -m fcn_jax.synthetic --layout folder --out data/shapes

Seeded and byte-for-byte deterministic; a complete tree is never rewritten (fcn_jax.data.synthetic).
"""
from __future__ import annotations

import argparse

from fcn_jax.data import synthetic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fcn_jax.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="root folder (use it as the dataset's --manual_dir)")
    parser.add_argument("--layout", choices=("voc", "folder"), default="voc",
                        help="voc: VOCdevkit + SBD trees; folder: images/, RGB labels/, classes.json")
    parser.add_argument("--num_train", type=int, default=300)
    parser.add_argument("--num_val", type=int, default=60)
    parser.add_argument("--num_sbd_only", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.layout == "folder":
            print(synthetic.write_synthetic_folder(args.out, num_train=args.num_train, num_val=args.num_val,
                                                   seed=args.seed))
        else:
            print(synthetic.write_synthetic_voc(args.out, num_train=args.num_train, num_val=args.num_val,
                                                num_sbd_only=args.num_sbd_only, seed=args.seed))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()

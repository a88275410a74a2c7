"""What the labels of a dataset say about its description: classes no pixel is labelled with, and 0/255 masks.

A class with no labelled pixel is never trained, and its IU is n/a, so mean IU and mean acc leave it out: binary masks
stored as 0/255 under the default ignore label 255 train and score the background alone (mean IU 1.0, the object
n/a). The build (data.folder_builder), evaluate's report (infer.evaluation) and validation (train.validation) say
so in one line, naming the 0/255 form and its fix when the labels look like it. No TensorFlow here.
"""
from __future__ import annotations

from typing import Sequence

from fcn_jax.core.constants import IGNORE_LABEL
from fcn_jax.data.dataset_info import DatasetInfo

BINARY_ID_MAP = '"id_map": {"0": 0, "255": 1}'  # raw 0 -> class 0, raw 255 -> class 1 (it wins over ignore_label)
UNUSED = "unused"  # a class named "unused ..." is declared empty (the synthetic VOC look-alike's 15 unused VOC ids)


def unlabelled_classes(info: DatasetInfo, labelled: Sequence[int]) -> list[str]:
    """Names of the classes of `info` without a labelled pixel (but those declared unused); labelled: pixels per
    class (K,)."""
    return [name for name, count in zip(info.classes, labelled) if int(count) == 0 and not name.startswith(UNUSED)]


def looks_like_binary_masks(info: DatasetInfo, labelled: Sequence[int], ignored: int | None = None) -> bool:
    """Class 0 alone labelled (and some pixels ignored, where counted) with raw 255 the ignore label and no id_map:
    0/255 masks whose 255 meant the object."""
    return (info.encoding != "rgb" and not info.id_map and info.ignore_label == IGNORE_LABEL and len(labelled) > 1
            and int(labelled[0]) > 0 and not any(int(c) for c in labelled[1:]) and ignored != 0)


def unlabelled_warning(info: DatasetInfo, labelled: Sequence[int], where: str, *, ignored: int | None = None,
                       fix_in: str = "the dataset's classes.json") -> str:
    """'' when every class has labelled pixels, else one line naming the classes that have none `where` (e.g. "in
    any split"), and how to declare 0/255 masks (in `fix_in`) when the labels look like them."""
    names = unlabelled_classes(info, labelled)
    if not names:
        return ""
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    them, their = ("them", "their") if len(names) > 1 else ("it", "its")
    line = (f"no labelled pixel of class{'es' if len(names) > 1 else ''} {shown} {where}: no score measures {them} "
            f"({their} IU is n/a, or 0 where predicted)")
    if looks_like_binary_masks(info, labelled, ignored):
        line += (f"; the labels hold only 0 and {IGNORE_LABEL}, and {IGNORE_LABEL} is the ignore label: for 0/255 "
                 f"masks (255 = {info.classes[1]}) add {BINARY_ID_MAP} to {fix_in}")
    return line

"""python -m fcn_jax.predict: palette masks equal the argmax of a direct forward on the unpadded image."""
import os

import numpy as np
import pytest
from evaluate_test import direct_mask, forward_fn, random_params, save_converted_weights, write_images
from PIL import Image

from fcn_jax import predict
from fcn_jax.data import visualize
from fcn_jax.infer import batching


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    params = random_params("fcn8s", seed=3)
    return params, save_converted_weights(tmp_path_factory.mktemp("w") / "converted", params)


def _check_outputs(out_dir, stem, image, expected_mask, figure):
    mask_image = Image.open(out_dir / f"{stem}.png")
    assert mask_image.mode == "P"
    np.testing.assert_array_equal(np.asarray(mask_image.getpalette(), np.uint8).reshape(-1, 3),
                                  visualize.voc_palette())
    np.testing.assert_array_equal(np.asarray(mask_image), expected_mask)
    overlay = Image.open(out_dir / f"{stem}_overlay.jpg")
    assert overlay.format == "JPEG" and overlay.mode == "RGB" and overlay.size == (image.shape[1], image.shape[0])
    assert os.path.exists(out_dir / f"{stem}_figure.png") == figure
    if figure:
        assert Image.open(out_dir / f"{stem}_figure.png").format == "PNG"


def test_masks_equal_the_argmax_of_a_direct_forward(converted, tmp_path, capsys):
    params, weights = converted
    folder_images = write_images(tmp_path / "folder", sizes=((37, 45), (50, 29), (37, 45)), seed=5)
    single = write_images(tmp_path / "single", sizes=((23, 61),), seed=6, suffix=".jpg")[0]
    os.rename(tmp_path / "single" / "img0.jpg", tmp_path / "single" / "lone.jpg")
    single = np.asarray(Image.open(tmp_path / "single" / "lone.jpg").convert("RGB"))  # as decoded (JPEG is lossy)
    out = tmp_path / "out"
    rc = predict.main(["--weights", weights, "--input", str(tmp_path / "folder"), str(tmp_path / "single/lone.jpg"),
                       "--output", str(out), "--figure", "--batch_size", "2"])
    assert rc == 0
    assert capsys.readouterr().out.startswith(f"wrote 4 mask(s) to {out}: 3 compilation(s) ")  # 3 distinct sizes
    forward = forward_fn()
    classes = set()
    for stem, image in [(f"img{i}", im) for i, im in enumerate(folder_images)] + [("lone", single)]:
        expected = direct_mask(forward, params, image)
        classes |= set(np.unique(expected).tolist())
        _check_outputs(out, stem, image, expected, figure=True)
    assert len(classes) > 5  # the random weights predict many classes, so equality is a real check
    assert sorted(os.listdir(out)) == sorted(f"{s}{e}" for s in ("img0", "img1", "img2", "lone")
                                             for e in (".png", "_overlay.jpg", "_figure.png"))


def test_padded_batches_give_the_padded_forward_cropped(converted, tmp_path):
    params, weights = converted
    images = write_images(tmp_path / "in", sizes=((37, 45), (50, 29), (60, 33)), seed=7)
    out = tmp_path / "out"
    assert predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(out),
                         "--pad_multiple", "32", "--batch_size", "3"]) == 0
    forward = forward_fn()
    for i, image in enumerate(images):
        expected = direct_mask(forward, params, image, pad_to=batching.padded_shape(*image.shape[:2], 32))
        _check_outputs(out, f"img{i}", image, expected, figure=False)


def test_buckets_bound_the_compilations_and_give_the_bucket_padded_forward(converted, tmp_path, capsys):
    params, weights = converted
    sizes = ((37, 45), (50, 29), (60, 33), (37, 44), (21, 20))
    images = write_images(tmp_path / "in", sizes=sizes, seed=8)
    out = tmp_path / "out"
    assert predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--output", str(out),
                         "--buckets", "2", "--batch_size", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 5 mask(s) to {out}: 2 compilation(s) ")
    buckets = batching.bucket_shapes(sizes, 2)
    assert sorted(set(buckets.values())) == [(37, 45), (60, 33)]  # the fewest padded pixels for two shapes
    forward = forward_fn()
    for i, image in enumerate(images):
        expected = direct_mask(forward, params, image, pad_to=buckets[image.shape[:2]])
        _check_outputs(out, f"img{i}", image, expected, figure=False)


def _error(capsys, argv) -> str:
    assert predict.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


def test_bad_inputs_fail_with_one_line_naming_them(converted, tmp_path, capsys):
    base = ["--weights", converted[1], "--output", str(tmp_path / "out")]
    assert _error(capsys, base + ["--input", str(tmp_path / "missing.jpg")]) == (
        f"error: input {tmp_path / 'missing.jpg'} does not exist")
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert _error(capsys, base + ["--input", str(tmp_path / "empty")]).startswith(
        f"error: input folder {tmp_path / 'empty'} holds no images (.jpg, .jpeg, .png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert _error(capsys, base + ["--input", str(tmp_path / "broken.jpg")]).startswith(
        f"error: cannot read image {tmp_path / 'broken.jpg'}: ")
    write_images(tmp_path / "a", sizes=((8, 8),))
    assert _error(capsys, base + ["--input", str(tmp_path / "a"), "--buckets", "2", "--flip"]).startswith(
        "error: --buckets bounds the shapes of whole-image inference")
    write_images(tmp_path / "b", sizes=((8, 8),))
    assert _error(capsys, base + ["--input", str(tmp_path / "a"), str(tmp_path / "b")]) == (
        f"error: inputs {tmp_path / 'a' / 'img0.png'} and {tmp_path / 'b' / 'img0.png'} would both write img0.png; "
        "rename one")
    write_images(tmp_path / "cut", sizes=((40, 40),), suffix=".jpg")
    data = (tmp_path / "cut" / "img0.jpg").read_bytes()
    (tmp_path / "cut" / "img0.jpg").write_bytes(data[:len(data) // 2])  # header fine, pixels cut off
    assert predict.main(base + ["--input", str(tmp_path / "cut")]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"error: cannot read image {tmp_path / 'cut' / 'img0.jpg'}: image file is truncated")
    (tmp_path / "file").write_text("")
    assert _error(capsys, ["--weights", converted[1], "--input", str(tmp_path / "a"), "--output",
                           str(tmp_path / "file")]) == (f"error: --output {tmp_path / 'file'} is an existing file, "
                                                        "not a folder")

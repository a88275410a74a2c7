"""Convolutionalization (FCN paper sec. 3.1, fig. 2): a classifier's Dense head as convolutions.

`VGG16Classifier` has the real VGG16 geometry: 13 3x3 convs, five 2x2/2 max pools to a 7x7xC
pool5, which is flattened in (H, W, C) order into Dense fc6, then Dense fc7 and fc8. The Dense fc6
kernel (7*7*C, F) is a 7x7 VALID conv kernel (7, 7, C, F), and fc7 and fc8 are 1x1 convs.
`convolutionalize_params` does the reshape, and `ConvolutionalVGG16` runs the result on any input
large enough for one pool5 window, giving a score map with stride 32. On a 384x384 input that is
a 6x6 map, cell (i, j) looking at the 224x224 window at (32i, 32j).

Caveat, zero padding: the claim "cell (i, j) equals the classifier's output on the 224x224 crop
at (32i, 32j)" holds exactly only where zero padding cannot leak in. The real net pads its 3x3
convs, so a crop's border rows see zeros where the full image has pixels. Each conv carries the
difference one cell further in, and each pool halves it, so 3 of the 7 pool5 rows and columns
on each side of a crop differ from the full image's (only the centre one matches). fc6 reads all
49 pool5 cells, so with padding no score cell equals its crop's output; it is only close. With
`padded=False` (VALID 3x3 convs) the stack commutes with shifts by multiples of 32, and the
equality is exact: a 404x404 crop gives the 7x7 pool5, and a 564x564 input gives a 6x6 map whose
cell (i, j) is the classifier's output on the 404x404 crop at (32i, 32j).

`fcn_params_from_classifier` puts a classifier's weights into an FCN's backbone (convs, fc6 as a
7x7 conv, fc7 as 1x1) and, if asked, fc8 into score_fr. The paper drops fc8 and zero-initialises
score_fr instead.

The classifier's own helpers live here too: image-level labels from masks, its inputs and batches,
He initialisation, its train step and its predictions (the pipeline trains it with fcn_jax.loop).
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.ndimage
from flax import traverse_util
from PIL import Image

from fcn_jax import inference, parallel
from fcn_jax.constants import IGNORE_LABEL
from fcn_jax.models import FC_CHANNELS, VGG16_BLOCKS, scaled_channels

POOL5 = 7  # VGG16's fc6 reads a 7x7 pool5


def _vgg16_convs(x, width: float, padded: bool):
    """VGG16's 13 convs (padding 1, or none) with ReLU and 2x2/2 max pools: pool5."""
    for layers in VGG16_BLOCKS:
        for name, channels in layers:
            x = nn.relu(nn.Conv(scaled_channels(channels, width), (3, 3),
                                padding=1 if padded else "VALID", name=name)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x


class VGG16Classifier(nn.Module):
    """VGG16 image classifier (inference only): (N, H, W, 3) -> (N, num_classes) logits.

    padded=True is the real net, which reads 224x224 images; padded=False reads 404x404.
    """
    num_classes: int = 1000
    width: float = 1.0
    padded: bool = True

    @nn.compact
    def __call__(self, images):
        x = _vgg16_convs(images, self.width, self.padded)
        if x.shape[1:3] != (POOL5, POOL5):
            raise ValueError(f"VGG16Classifier needs a 7x7 pool5 (224x224 input padded, 404x404 "
                             f"unpadded), got input {images.shape[1:3]} -> pool5 {x.shape[1:3]}")
        x = x.reshape(x.shape[0], -1)  # (N, 7*7*C) in (H, W, C) order
        fc = scaled_channels(FC_CHANNELS, self.width)
        x = nn.relu(nn.Dense(fc, name="fc6")(x))
        x = nn.relu(nn.Dense(fc, name="fc7")(x))
        return nn.Dense(self.num_classes, name="fc8")(x)


class ConvolutionalVGG16(nn.Module):
    """The convolutionalized classifier: (N, H, W, 3) -> (N, h, w, num_classes) score map.

    Same fields and parameter names as VGG16Classifier; load `convolutionalize_params(...)`.
    """
    num_classes: int = 1000
    width: float = 1.0
    padded: bool = True

    @nn.compact
    def __call__(self, images):
        x = _vgg16_convs(images, self.width, self.padded)
        if min(x.shape[1:3]) < POOL5:
            raise ValueError(f"ConvolutionalVGG16 needs pool5 >= 7x7, got input "
                             f"{images.shape[1:3]} -> pool5 {x.shape[1:3]}")
        fc = scaled_channels(FC_CHANNELS, self.width)
        x = nn.relu(nn.Conv(fc, (POOL5, POOL5), padding="VALID", name="fc6")(x))
        x = nn.relu(nn.Conv(fc, (1, 1), name="fc7")(x))
        return nn.Conv(self.num_classes, (1, 1), name="fc8")(x)


def convolutionalize_params(params: dict) -> dict:
    """VGG16Classifier params -> ConvolutionalVGG16 params (Dense kernels reshaped to HWIO)."""
    fc6 = params["fc6"]["kernel"]
    if fc6.shape[0] % (POOL5 * POOL5):
        raise ValueError(f"fc6 kernel {fc6.shape} does not read a flattened 7x7xC pool5")
    params = flax.core.unfreeze(params)
    params["fc6"] = dict(params["fc6"], kernel=fc6.reshape(POOL5, POOL5, -1, fc6.shape[1]))
    for name in ("fc7", "fc8"):
        params[name] = dict(params[name], kernel=params[name]["kernel"][None, None])
    return params


def fcn_params_from_classifier(classifier_params: dict, fcn_params: dict,
                               use_fc8: bool = False) -> dict:
    """fcn_params with its backbone (and score_fr if use_fc8) taken from a VGG16Classifier.

    Strict: every copied array must match the FCN's shape (same width; for fc8, same classes).
    """
    conv = convolutionalize_params(classifier_params)
    names = [name for layers in VGG16_BLOCKS for name, _ in layers] + ["fc6", "fc7"]
    copies = [(("backbone", name), conv[name]) for name in names]
    if use_fc8:
        copies.append((("score_fr",), conv["fc8"]))
    out = flax.core.unfreeze(fcn_params)
    for path, layer in copies:
        target = out
        for key in path[:-1]:
            target = target[key]
        for param, value in layer.items():
            expected = target[path[-1]][param].shape
            if value.shape != expected:
                raise ValueError(f"classifier param for {'/'.join(path)}/{param} has shape "
                                 f"{value.shape} but the FCN expects {expected}")
        target[path[-1]] = {param: jnp.asarray(value) for param, value in layer.items()}
    return out


# ----------------------------------------------------------------------------- the classifier's helpers


def largest_object_class(label: np.ndarray, background: int | None = 0) -> int:
    """The class of the largest object in a label mask: its biggest 4-connected region of one class.

    The `background` class (None: a dataset without one) and ignore (255) are never objects; background (or 0)
    when there is none. Ties go to the lower class id. A region, not a class's total area: two small cats lose
    to one larger dog.
    """
    best_class, best_size = background or 0, 0
    for value in np.unique(label):
        if value in (background, IGNORE_LABEL):
            continue
        regions, count = scipy.ndimage.label(label == value)
        size = int(np.bincount(regions.ravel(), minlength=count + 1)[1:].max())
        if size > best_size:
            best_class, best_size = int(value), size
    return best_class


def classifier_input(image: np.ndarray, size: int, normalization: str,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3): normalised, shrunk only if larger, placed on a mean canvas.

    Images are not enlarged, so objects keep the scale the FCN later sees. With `rng` (training) the
    image lands at a random position and is flipped half the time; without it, it is centred.
    """
    height, width = image.shape[:2]
    scale = min(1.0, size / max(height, width))
    if scale < 1.0:
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    x = inference.normalize(image, normalization)
    if rng is None:
        top, left = (size - height) // 2, (size - width) // 2
    else:
        top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
        if rng.random() < 0.5:
            x = x[:, ::-1]
    canvas = np.zeros((size, size, 3), np.float32)  # 0 = the mean pixel after normalisation
    canvas[top:top + height, left:left + width] = x
    return canvas


def classifier_examples(source, background: int | None = 0) -> list[tuple[np.ndarray, int]]:
    """(image, class of the largest object) for every example of a segmentation source."""
    examples = []
    for index in range(len(source)):
        example = source[index]
        label = example["label"] if example["label"].ndim == 2 else example["label"][..., 0]  # the first head's
        examples.append((example["image"], largest_object_class(label, background)))
    return examples


def classifier_batch(examples, step: int, cfg) -> dict[str, np.ndarray]:
    """Training batch `step`: a pure function of (seed, step), so a resumed run sees the same batches."""
    rng = np.random.default_rng((cfg.seed, step))
    indices = rng.choice(len(examples), cfg.batch_size, replace=len(examples) < cfg.batch_size)
    return {"image": np.stack([classifier_input(examples[i][0], cfg.input_size, cfg.normalization, rng)
                               for i in indices]),
            "label": np.asarray([examples[i][1] for i in indices], np.int32)}



def he_initialised(params: dict, rng: jax.Array) -> dict:
    """Kernels drawn from N(0, 2 / fan_in) (He et al. 2015), biases and the last layer (fc8) zero.

    Flax's default LeCun scaling (1 / fan_in) halves the activation variance at every ReLU, 2^-15 over
    VGG16's 15 layers, and the net then hardly trains from scratch in a few hundred steps. He scaling keeps
    the variance; a zero fc8 starts from uniform class probabilities.
    """
    flat = traverse_util.flatten_dict(params)
    out = {}
    for key, (path, value) in zip(jax.random.split(rng, len(flat)), flat.items()):
        if path[-1] == "kernel" and path[0] != "fc8":
            fan_in = int(np.prod(value.shape[:-1]))
            out[path] = jax.random.normal(key, value.shape, value.dtype) * np.sqrt(2.0 / fan_in)
        else:
            out[path] = jnp.zeros_like(value)
    return traverse_util.unflatten_dict(out)


def classifier_train_step(state, batch: dict, rng: jax.Array) -> tuple[Any, dict]:
    """Adam step on softmax cross entropy over the image-level labels (no dropout: `rng` is unused)."""
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


def classifier_predictions(model, params, examples, cfg, mesh) -> np.ndarray:
    """Predicted classes of the centred examples, in batches of the mesh's size (last batch padded)."""
    rows = inference.global_batch_size(cfg.batch_size, mesh)
    step = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1),
                   out_shardings=parallel.replicated(mesh))
    predictions = []
    for start in range(0, len(examples), rows):
        chunk = [classifier_input(image, cfg.input_size, cfg.normalization)
                 for image, _ in examples[start:start + rows]]
        images = np.zeros((rows, cfg.input_size, cfg.input_size, 3), np.float32)
        images[:len(chunk)] = chunk
        out = step(params, parallel.host_to_global({"image": images}, mesh)["image"])
        predictions.append(parallel.fetch(out)[:len(chunk)])
    return np.concatenate(predictions)


def dense_vs_convolutional(classifier_params, images: np.ndarray, cfg) -> float:
    """Max |Dense classifier logits - ConvolutionalVGG16 scores| on 224x224 inputs (1x1 score maps)."""
    dense = VGG16Classifier(num_classes=cfg.num_classes, width=cfg.width)
    conv = ConvolutionalVGG16(num_classes=cfg.num_classes, width=cfg.width)
    logits = jax.jit(lambda p, x: dense.apply({"params": p}, x))(classifier_params, images)
    scores = jax.jit(lambda p, x: conv.apply({"params": p}, x))(
        convolutionalize_params(classifier_params), images)
    return float(jnp.max(jnp.abs(scores[:, 0, 0] - logits)))

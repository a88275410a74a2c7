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

Both nets are built from models.vgg's layers (the FCN backbone's), so their convolutions, ReLUs and pools are the
FCN's own. The classifier's training (image-level labels, its step) lives in flows.classifier.
"""
import flax
import flax.linen as nn
import jax.numpy as jnp

from fcn_jax.models import layers, vgg

POOL5 = 7  # VGG16's fc6 reads a 7x7 pool5


def _pool5(images, width: float, padded: bool):
    """VGG16's 13 convs (padding 1, or none) with ReLU and 2x2/2 max pools: pool5."""
    padding = {} if padded else dict.fromkeys(vgg.CONV_NAMES, 0)
    return vgg.convs(images, width=width, padding=padding)["pool5"]


class _VGG16Net(nn.Module):
    """The fields both nets share: padded=True is the real net (3x3 convs padded by 1), padded=False VALID convs."""
    num_classes: int = 1000
    width: float = 1.0
    padded: bool = True


class VGG16Classifier(_VGG16Net):
    """VGG16 image classifier (inference only): (N, H, W, 3) -> (N, num_classes) logits.

    padded=True reads 224x224 images; padded=False reads 404x404.
    """

    @nn.compact
    def __call__(self, images):
        x = _pool5(images, self.width, self.padded)
        if x.shape[1:3] != (POOL5, POOL5):
            raise ValueError(f"VGG16Classifier needs a 7x7 pool5 (224x224 input padded, 404x404 "
                             f"unpadded), got input {images.shape[1:3]} -> pool5 {x.shape[1:3]}")
        x = x.reshape(x.shape[0], -1)  # (N, 7*7*C) in (H, W, C) order
        fc = vgg.scaled_channels(vgg.FC_CHANNELS, self.width)
        x = layers.relu(nn.Dense(fc, name="fc6")(x))
        x = layers.relu(nn.Dense(fc, name="fc7")(x))
        return nn.Dense(self.num_classes, name="fc8")(x)


class ConvolutionalVGG16(_VGG16Net):
    """The convolutionalized classifier: (N, H, W, 3) -> (N, h, w, num_classes) score map.

    Same fields and parameter names as VGG16Classifier; load `convolutionalize_params(...)`.
    """

    @nn.compact
    def __call__(self, images):
        x = _pool5(images, self.width, self.padded)
        if min(x.shape[1:3]) < POOL5:
            raise ValueError(f"ConvolutionalVGG16 needs pool5 >= 7x7, got input "
                             f"{images.shape[1:3]} -> pool5 {x.shape[1:3]}")
        fc = vgg.scaled_channels(vgg.FC_CHANNELS, self.width)
        x = layers.relu(nn.Conv(fc, (POOL5, POOL5), padding="VALID", name="fc6")(x))
        x = layers.relu(nn.Conv(fc, (1, 1), name="fc7")(x))
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
    names = [*vgg.CONV_NAMES, "fc6", "fc7"]
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

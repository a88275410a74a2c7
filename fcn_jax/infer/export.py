"""Export a network as artifacts that run without fcn_jax: StableHLO, a TF SavedModel, ONNX (python -m fcn_jax.export).

The output folder holds
    model.jax_export  jax.export (StableHLO) of segment(params, images) -> (logits, masks); any jax reloads it
    params.npz        the params it takes, flat: p0, p1, ... in its argument order
    saved_model/      a TF SavedModel (jax2tf): signature serving_default(images) -> {logits, masks}, params as
                      variables; runs with TensorFlow alone (TF Serving, tf.saved_model.load)
    model.onnx        ONNX (opset 17, infer.onnx_export) of images -> (logits, masks), the params inside; runs with
                      onnxruntime alone (also TensorRT, OpenVINO)
    segment.py        segments image files with the jax or the ONNX artifact, importing only numpy, Pillow and jax
                      or onnxruntime
    export.json       what the artifacts take and give, the sizes they accept, settings, versions
    dataset.json      the class names and colours
All take uint8 RGB images (batch, height, width, 3) of one size, normalised inside as the weights expect, and
give the float32 logits (batch, height, width, classes of all heads) and uint8 masks (batch, height, width),
(..., heads) for several heads: what predict computes (its whole-image mode). Batch, height and width are
symbolic unless --batch / --size fix them, so one artifact takes every size (each new shape compiles once in
the process that loads it).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.core.normalization import normalize
from fcn_jax.data import dataset_info
from fcn_jax.infer.network import Network
from fcn_jax.infer.steps import head_masks
from fcn_jax.models import crf, zoo

JAX_FILE, PARAMS_FILE, SAVED_MODEL_DIR, ONNX_FILE = "model.jax_export", "params.npz", "saved_model", "model.onnx"
SCRIPT_FILE, META_FILE = "segment.py", "export.json"
SCRIPT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exported_segment.py")
FORMATS = ("stablehlo", "saved_model", "onnx")
ONNX_OPSET = 17  # onnxruntime >= 1.13, TensorRT 8.6, OpenVINO 2023
DEFAULT_FORMATS = ("stablehlo", "saved_model")


def serving_function(network: Network):
    """(segment(flat_params, images) -> (logits, masks), the flat params as host arrays): predict's whole-image
    path (core.normalization.normalize, the model, infer.steps.head_masks) as one traceable function of plain
    arrays; its convolutions direct (zoo.direct_convolutions)."""
    leaves, treedef = jax.tree.flatten(jax.device_get(network.params))
    normalization, heads = network.settings["normalization"], network.heads
    model = zoo.direct_convolutions(network.model)

    def segment(flat_params, images):
        params = jax.tree.unflatten(treedef, flat_params)
        logits = model.apply({"params": params}, normalize(images, normalization), train=False)
        logits = logits.astype(jnp.float32)
        return logits, head_masks(logits, heads)

    return segment, [np.asarray(x) for x in leaves]


def shape_spec(batch: int | None, size: tuple[int, int] | None) -> str:
    """The images' shape in jax.export's symbolic syntax: fixed numbers where given, else b, h, w."""
    height, width = size if size else ("h", "w")
    return f"({batch or 'b'}, {height}, {width}, 3)"


def export_stablehlo(segment, params: list[np.ndarray], spec: str, platforms: tuple[str, ...]):
    """jax.export of `segment` for the images' shape `spec`: the Exported (serialize() gives the file's bytes)."""
    from jax import export

    args = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in params],
            jax.ShapeDtypeStruct(export.symbolic_shape(spec), jnp.uint8))
    return export.export(jax.jit(segment), platforms=platforms)(*args)


def export_saved_model(segment, params: list[np.ndarray], spec: str, directory: str) -> None:
    """jax2tf of `segment` (native StableHLO inside an XlaCallModule op), params as TF variables."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    tf.config.set_visible_devices([], "GPU")  # TF only writes the files; the accelerators stay JAX's
    converted = jax2tf.convert(segment, polymorphic_shapes=[None, spec], with_gradient=False)
    module = tf.Module()
    module.params = [tf.Variable(x, trainable=False) for x in params]
    dims = [None if d.isalpha() else int(d) for d in spec.strip("()").replace(" ", "").split(",")]

    @tf.function(autograph=False, input_signature=[tf.TensorSpec(dims, tf.uint8, name="images")])
    def serve(images):
        logits, masks = converted(module.params, images)
        return {"logits": logits, "masks": masks}

    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def description(network: Network, heads: dataset_info.Heads, batch, size, formats, platforms,
                exported=None) -> dict:
    """export.json: the contract of the artifacts (what a user without fcn_jax needs to call them)."""
    classes = sum(k for _, k in network.heads)
    masks = "(batch, height, width)" + ("" if len(heads) == 1 else f" x {len(heads)} heads (last axis)")
    return {
        "inputs": {"images": "uint8 RGB (batch, height, width, 3); one size a call, normalised inside"},
        "outputs": {"logits": f"float32 (batch, height, width, {classes})", "masks": f"uint8 {masks}: argmax per head"},
        "accepts": {"batch": batch or "any >= 1",
                    "height": size[0] if size else "any >= 1", "width": size[1] if size else "any >= 1"},
        "heads": [{"name": name, "classes": list(info.classes), "palette": info.palette()[:info.num_classes].tolist()}
                  for name, info in heads],
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in network.settings.items()},
        "formats": list(formats), "platforms": list(platforms) if "stablehlo" in formats else [],
        "versions": {"jax": jax.__version__,
                     "calling_convention": exported.calling_convention_version if exported else None,
                     "onnx_opset": ONNX_OPSET if "onnx" in formats else None},
    }


def write_artifacts(network, heads, output: str, *, batch=None, size=None, formats=DEFAULT_FORMATS,
                    platforms=("cpu",)) -> dict:
    """Writes the export folder (to a temporary sibling first, so `output` is whole or untouched); returns
    export.json's content. An existing `output` is replaced only if it is an earlier export."""
    output = os.path.abspath(output)
    if os.path.exists(output) and not os.path.isfile(os.path.join(output, META_FILE)) and (
            not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"--output {output} exists and is not an earlier export; give a new folder")
    if os.path.commonpath([os.path.realpath(os.getcwd()), os.path.realpath(output)]) == os.path.realpath(output):
        raise ValueError(f"--output {output} holds the current folder; export from outside it")
    if isinstance(network.model, crf.WithCRF):  # its lattice is built for one image size, in NumPy, at trace time
        if size is None:
            raise ValueError("a model with a dense CRF layer (config.model.crf) exports at one image size only: "
                             "give --size H W")
        if "onnx" in formats:
            raise ValueError("the dense CRF layer (config.model.crf) has no ONNX lowering (its lattice's scatter-add): "
                             "export it with --formats stablehlo saved_model")
    if "saved_model" in formats:  # what a format needs, before minutes of exporting the others
        import tensorflow  # noqa: F401
    if "onnx" in formats:
        from fcn_jax.infer import onnx_export  # needs the onnx package: pip install ".[onnx]"
    segment, params = serving_function(network)
    spec = shape_spec(batch, size)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.exporting-", dir=os.path.dirname(output))
    try:
        exported = None
        if "stablehlo" in formats:
            exported = export_stablehlo(segment, params, spec, tuple(platforms))
            with open(os.path.join(tmp, JAX_FILE), "wb") as f:
                f.write(exported.serialize())
            np.savez(os.path.join(tmp, PARAMS_FILE), **{f"p{i}": x for i, x in enumerate(params)})
        if "onnx" in formats:
            with open(os.path.join(tmp, ONNX_FILE), "wb") as f:
                f.write(onnx_export.to_onnx(segment, params, spec, opset=ONNX_OPSET).SerializeToString())
        if "stablehlo" in formats or "onnx" in formats:
            shutil.copy(SCRIPT_SOURCE, os.path.join(tmp, SCRIPT_FILE))
        if "saved_model" in formats:
            export_saved_model(segment, params, spec, os.path.join(tmp, SAVED_MODEL_DIR))
        meta = description(network, heads, batch, size, formats, platforms, exported)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        dataset_info.write(heads, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)
    return meta

"""ONNX export: the serving function's jaxpr lowered to ONNX operators, batch, height and width symbolic.

    model = to_onnx(segment, flat_params)    # infer.export.serving_function(network)
    onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"images": uint8 (B, H, W, 3)})

The function is traced with jax.export's symbolic shapes "(b, h, w, 3)" (the jaxpr jax.export sees); the params
become initializers, so the model's one input is the uint8 images. Every equation whose inputs are all constants is
evaluated here, once (the upsampling kernels' rearrangement, flip indices); jit, custom_jvp and custom_vjp calls
are inlined; the other primitives are lowered one by one (NHWC kept; convolutions and pools transpose to NCHW and
back, which onnxruntime's optimiser mostly removes). A symbolic dimension (e.g. 2*floordiv(h + 199, 32) - 10) is
evaluated at run time by jax's own DimExpr._evaluate over int64 [1] tensors taken from Shape(images), so crops,
pads and reshapes get their sizes when the model runs. A primitive outside the table is a NotImplementedError
naming it. Why not jax2onnx: it cannot export these models with symbolic sizes (pad widths, crops) and rejects
the ResNet's pools; tf2onnx cannot read jax2tf's SavedModels (XlaCallModule ops).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from jax import export
from jax.extend import core as jex
from onnx import TensorProto, helper, numpy_helper

INT64_MIN = np.iinfo(np.int64).min
_DTYPES = {np.dtype(k): v for k, v in [(np.float32, TensorProto.FLOAT), (np.float64, TensorProto.DOUBLE),
                                       (np.int32, TensorProto.INT32), (np.int64, TensorProto.INT64),
                                       (np.uint8, TensorProto.UINT8), (np.int8, TensorProto.INT8),
                                       (np.bool_, TensorProto.BOOL), (np.float16, TensorProto.FLOAT16)]}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
           "and": "And", "or": "Or", "eq": "Equal", "gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less",
           "le": "LessOrEqual", "atan2": "Atan2"}
_UNARY = {"neg": "Neg", "abs": "Abs", "sqrt": "Sqrt", "exp": "Exp", "log": "Log", "tanh": "Tanh",
          "logistic": "Sigmoid", "floor": "Floor", "ceil": "Ceil", "sign": "Sign", "not": "Not", "erf": "Erf"}
_ALIASES = ("stop_gradient", "copy", "optimization_barrier", "sharding_constraint")
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr", "remat2": "jaxpr"}  # remat2: jax.checkpoint


def _onnx_type(dtype) -> int:
    """The ONNX element type of a NumPy / jax dtype; one line for a type the export does not carry (bfloat16)."""
    if np.dtype(dtype) not in _DTYPES:
        raise ValueError(f"ONNX export: no {np.dtype(dtype).name} tensors; export a float32 model "
                         "(config.model.dtype / the weights' dtype setting)")
    return _DTYPES[np.dtype(dtype)]


class Dim:
    """A run-time dimension: an int64 [1] tensor, with the arithmetic DimExpr._evaluate applies to it (max / min
    terms, e.g. clamped slice bounds, reach `max` / `min` through jax.core.max_dim, which takes it for a symbolic
    dimension by its `dimension_as_value`)."""

    dimension_as_value = True

    def __init__(self, conv: "Converter", name: str):
        self.conv, self.name = conv, name

    def _op(self, op, other, swap=False):
        a, b = self.name, self.conv.dim_name(other)
        return Dim(self.conv, self.conv.node(op, [b, a] if swap else [a, b]))

    def __add__(self, other):
        return self._op("Add", other)

    def __mul__(self, other):
        return self._op("Mul", other)

    def __sub__(self, other):
        return self._op("Sub", other)

    def __rsub__(self, other):
        return self._op("Sub", other, swap=True)

    def __divmod__(self, other):
        return self.conv.divmod(self.name, self.conv.dim_name(other))

    def __rdivmod__(self, other):
        return self.conv.divmod(self.conv.dim_name(other), self.name)

    def max(self, other):
        return self._op("Max", other)

    def min(self, other):
        return self._op("Min", other)

    __radd__, __rmul__, rmax, rmin = __add__, __mul__, max, min


class _Names:
    """The inputs of an equation as ONNX names, made on first use (a constant the handler folds itself, such as a
    kernel it transposes, never becomes an initializer of its own)."""

    def __init__(self, conv, ins):
        self.conv, self.ins, self.names = conv, ins, {}

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self.ins))[i]]
        if i not in self.names:
            self.names[i] = self.conv.name(self.ins[i])
        return self.names[i]

    def __len__(self):
        return len(self.ins)

    def __iter__(self):
        return iter(self[:])


def _symbolic(obj) -> bool:
    if isinstance(obj, (tuple, list)):
        return any(_symbolic(x) for x in obj)
    return type(obj).__name__ == "_DimExpr"


class Converter:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes, self.initializers, self.count = [], [], 0
        self.const_names: dict[int, tuple[str, np.ndarray]] = {}
        self.dim_env: dict[str, Dim] = {}
        self.dim_cache: dict[str, Dim] = {}

    # ------------------------------------------------------------------ graph building
    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def node(self, op: str, inputs, n_out: int = 1, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def divmod(self, a: str, b: str):  # Python's floor semantics (ONNX's integer Div truncates)
        mod = self.node("Mod", [a, b], fmod=0)
        return Dim(self, self.node("Div", [self.node("Sub", [a, mod]), b])), Dim(self, mod)

    def const(self, value, dtype=None) -> str:
        array = np.asarray(value, dtype)
        if id(value) in self.const_names and self.const_names[id(value)][1] is value and dtype is None:
            return self.const_names[id(value)][0]
        name = self.fresh("c")
        self.initializers.append(numpy_helper.from_array(array, name))
        if isinstance(value, np.ndarray) and dtype is None:
            self.const_names[id(value)] = (name, value)
        return name

    def name(self, value) -> str:
        return value if isinstance(value, str) else self.const(value)

    # ------------------------------------------------------------------ dimensions
    def dim(self, d):
        """An int for a constant dimension, else a Dim (evaluated once per expression)."""
        if isinstance(d, (int, np.integer)):
            return int(d)
        key = str(d)
        if key not in self.dim_cache:
            self.dim_cache[key] = d._evaluate(self.dim_env)
        return self.dim_cache[key]

    def dim_name(self, d) -> str:
        d = self.dim(d) if not isinstance(d, Dim) else d
        return d.name if isinstance(d, Dim) else self.const(np.array([d], np.int64))

    def shape(self, dims) -> str:
        """An int64 1-D tensor of the dimensions (an initializer when all are constant)."""
        vals = [self.dim(d) for d in dims]
        if all(isinstance(v, int) for v in vals):
            return self.const(np.array(vals, np.int64))
        return self.node("Concat", [self.dim_name(v) for v in vals], axis=0)

    def scalar(self, d, dtype) -> str:
        out = self.node("Squeeze", [self.dim_name(d)])  # [1] -> []
        return self.node("Cast", [out], to=_onnx_type(dtype))

    # ------------------------------------------------------------------ the jaxpr
    def convert(self, closed, input_names):
        jaxpr = closed.jaxpr
        for var, name in zip(jaxpr.invars, input_names):
            for axis, d in enumerate(var.aval.shape):
                if not isinstance(d, (int, np.integer)) and d._to_var() not in self.dim_env:
                    self.dim_env[d._to_var()] = Dim(self, self.node("Shape", [name], start=axis, end=axis + 1))
        return self.run(jaxpr, closed.consts, list(input_names))

    def run(self, jaxpr, consts, args):
        env = {}
        read = lambda v: np.asarray(v.val, v.aval.dtype) if isinstance(v, jex.Literal) else env[v]  # noqa: E731
        for v, x in zip(jaxpr.constvars, consts):
            env[v] = np.asarray(x)
        for v, x in zip(jaxpr.invars, args):
            env[v] = x
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.equation(eqn, ins)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for v, x in zip(eqn.outvars, outs):
                env[v] = x
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn, ins):
        prim, params = eqn.primitive.name, eqn.params
        if prim in _CALLS:
            closed = params[_CALLS[prim]]
            if isinstance(closed, jex.ClosedJaxpr):
                return self.run(closed.jaxpr, closed.consts, ins)
            return self.run(closed, [], ins)
        static = not _symbolic([v.aval.shape for v in eqn.outvars]) and not _symbolic(list(params.values()))
        if static and all(isinstance(x, np.ndarray) for x in ins):  # fold: computed once, here
            out = eqn.primitive.bind(*ins, **params)
            return [np.asarray(o) for o in out] if eqn.primitive.multiple_results else np.asarray(out)
        if prim in _ALIASES:
            return ins if eqn.primitive.multiple_results else ins[0]
        n = _Names(self, ins)
        if prim in _BINARY:
            return self.node(_BINARY[prim], n)
        if prim in _UNARY:
            return self.node(_UNARY[prim], n)
        handler = getattr(self, "p_" + prim, None)
        if handler is None:
            raise NotImplementedError(f"ONNX export: no lowering for primitive {prim!r} (inputs "
                                      f"{', '.join(str(v.aval) for v in eqn.invars)})")
        return handler(eqn, ins, n, **params)

    # ------------------------------------------------------------------ primitives
    def p_ne(self, eqn, ins, n):
        return self.node("Not", [self.node("Equal", n)])

    def p_rsqrt(self, eqn, ins, n, **_):
        return self.node("Reciprocal", [self.node("Sqrt", n)])

    def p_convert_element_type(self, eqn, ins, n, new_dtype, **_):
        return self.node("Cast", n, to=_onnx_type(new_dtype))

    def p_select_n(self, eqn, ins, n):
        if len(n) != 3:
            raise NotImplementedError("ONNX export: select_n with more than two cases")
        pred = n[0] if eqn.invars[0].aval.dtype == np.bool_ else self.node("Cast", [n[0]], to=TensorProto.BOOL)
        return self.node("Where", [pred, n[2], n[1]])

    def p_broadcast_in_dim(self, eqn, ins, n, shape, broadcast_dimensions, **_):
        x, rank = n[0], len(shape)
        missing = [i for i in range(rank) if i not in broadcast_dimensions]
        if missing:
            x = self.node("Unsqueeze", [x, self.const(np.array(missing, np.int64))])
        return self.node("Expand", [x, self.shape(shape)])

    def p_reshape(self, eqn, ins, n, new_sizes, dimensions=None, **_):
        if dimensions is not None:
            raise NotImplementedError("ONNX export: reshape with dimensions")
        return self.node("Reshape", [n[0], self.shape(new_sizes)])

    def p_squeeze(self, eqn, ins, n, dimensions):
        return self.node("Squeeze", [n[0], self.const(np.array(dimensions, np.int64))])

    def p_transpose(self, eqn, ins, n, permutation):
        return self.node("Transpose", n, perm=list(permutation))

    def p_rev(self, eqn, ins, n, dimensions):
        k = len(dimensions)
        return self.node("Slice", [n[0], self.const(np.full(k, -1, np.int64)), self.const(np.full(k, INT64_MIN)),
                                   self.const(np.array(dimensions, np.int64)), self.const(np.full(k, -1, np.int64))])

    def _slice(self, x, starts, limits, axes, steps=None):
        steps = steps or [1] * len(axes)
        return self.node("Slice", [x, self.shape(starts), self.shape(limits), self.const(np.array(axes, np.int64)),
                                   self.const(np.array(steps, np.int64))])

    def p_slice(self, eqn, ins, n, start_indices, limit_indices, strides):
        rank = len(start_indices)
        return self._slice(n[0], start_indices, limit_indices, list(range(rank)), list(strides or [1] * rank))

    def p_pad(self, eqn, ins, n, padding_config):
        if any(interior for _, _, interior in padding_config if not isinstance(interior, int) or interior):
            raise NotImplementedError("ONNX export: pad with interior padding")
        pads = self.shape([lo for lo, _, _ in padding_config] + [hi for _, hi, _ in padding_config])
        return self.node("Pad", [n[0], pads, n[1]], mode="constant")

    def p_concatenate(self, eqn, ins, n, dimension):
        return self.node("Concat", n, axis=dimension)

    def p_stack(self, eqn, ins, n, axis):
        axes = self.const(np.array([axis], np.int64))
        return self.node("Concat", [self.node("Unsqueeze", [x, axes]) for x in n], axis=axis)

    def p_iota(self, eqn, ins, n, dtype, shape, dimension, **_):
        size = self.node("Squeeze", [self.dim_name(shape[dimension])])
        out = self.node("Range", [self.const(np.array(0, np.int64)), size, self.const(np.array(1, np.int64))])
        out = self.node("Cast", [out], to=_onnx_type(dtype))
        if len(shape) > 1:
            others = [i for i in range(len(shape)) if i != dimension]
            out = self.node("Unsqueeze", [out, self.const(np.array(others, np.int64))])
            out = self.node("Expand", [out, self.shape(shape)])
        return out

    def p_dim_as_value(self, eqn, ins, n, dim):
        return self.scalar(dim, eqn.outvars[0].aval.dtype)

    def p_conv_general_dilated(self, eqn, ins, n, window_strides, padding, lhs_dilation, rhs_dilation,
                               dimension_numbers, feature_group_count, batch_group_count, **_):
        if any(d != 1 for d in lhs_dilation) or batch_group_count != 1:
            raise NotImplementedError("ONNX export: conv with lhs_dilation (transposed) or batch groups")
        lhs_spec, rhs_spec, out_spec = dimension_numbers
        x = self.node("Transpose", [n[0]], perm=list(lhs_spec))  # -> N C spatial
        w = np.transpose(ins[1], rhs_spec) if isinstance(ins[1], np.ndarray) else \
            self.node("Transpose", [n[1]], perm=list(rhs_spec))  # -> O I spatial
        pads = [int(lo) for lo, _ in padding] + [int(hi) for _, hi in padding]
        y = self.node("Conv", [x, self.name(w)], strides=list(window_strides), pads=pads,
                      dilations=list(rhs_dilation), group=feature_group_count)
        return self.node("Transpose", [y], perm=[int(i) for i in np.argsort(out_spec)])

    def p_dot_general(self, eqn, ins, n, dimension_numbers, **_):
        (lc, rc), (lb, rb) = dimension_numbers
        lr, rr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        lhs = [next(letters) for _ in range(lr)]
        rhs = [None] * rr
        for i, j in zip(lc, rc):
            rhs[j] = lhs[i]
        for i, j in zip(lb, rb):
            rhs[j] = lhs[i]
        rhs = [c or next(letters) for c in rhs]
        out = [lhs[i] for i in lb] + [lhs[i] for i in range(lr) if i not in lc and i not in lb] + \
              [rhs[j] for j in range(rr) if j not in rc and j not in rb]
        return self.node("Einsum", n, equation=f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}")

    def _reduce(self, op, n, axes):
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [n[0], self.const(np.array(axes, np.int64))], keepdims=0)
        return self.node(op, [n[0]], axes=list(axes), keepdims=0)

    def p_reduce_max(self, eqn, ins, n, axes, **_):
        return self._reduce("ReduceMax", n, axes)

    def p_reduce_sum(self, eqn, ins, n, axes, **_):
        return self._reduce("ReduceSum", n, axes)

    def p_argmax(self, eqn, ins, n, axes, index_dtype):
        out = self.node("ArgMax", n, axis=axes[0], keepdims=0, select_last_index=0)
        return self.node("Cast", [out], to=_onnx_type(index_dtype))

    def p_reduce_window_max(self, eqn, ins, n, window_dimensions, window_strides, padding, base_dilation,
                            window_dilation):
        rank = len(window_dimensions)
        if rank != 4 or window_dimensions[0] != 1 or window_dimensions[3] != 1 or window_strides[0] != 1 \
                or window_strides[3] != 1 or any(d != 1 for d in base_dilation) or padding[0] != (0, 0) \
                or padding[3] != (0, 0):
            raise NotImplementedError("ONNX export: reduce_window_max other than an NHWC spatial pool")
        x = self.node("Transpose", n[:1], perm=[0, 3, 1, 2])
        y = self.node("MaxPool", [x], kernel_shape=list(window_dimensions[1:3]), strides=list(window_strides[1:3]),
                      pads=[int(padding[1][0]), int(padding[2][0]), int(padding[1][1]), int(padding[2][1])],
                      dilations=list(window_dilation[1:3]))
        return self.node("Transpose", [y], perm=[0, 2, 3, 1])

    def p_gather(self, eqn, ins, n, dimension_numbers, slice_sizes, **_):
        """The two gathers numpy indexing makes under symbolic shapes, with constant indices: a slice with
        constant starts (x[:, a:a + size]) and a take along one axis (x[..., ::-1])."""
        dn, operand, idx = dimension_numbers, eqn.invars[0].aval, ins[1]
        rank = len(operand.shape)
        if not isinstance(idx, np.ndarray) or dn.operand_batching_dims:
            raise NotImplementedError("ONNX export: gather with computed indices")
        if idx.ndim == 1 and dn.offset_dims == tuple(range(rank)) and not dn.collapsed_slice_dims:
            axes = list(dn.start_index_map)
            starts = [int(i) for i in idx]
            return self._slice(n[0], starts, [s + slice_sizes[a] for s, a in zip(starts, axes)], axes)
        if idx.ndim == 2 and idx.shape[1] == 1 and dn.collapsed_slice_dims == dn.start_index_map \
                and len(dn.start_index_map) == 1:
            axis = dn.start_index_map[0]
            if dn.offset_dims == tuple(i for i in range(rank) if i != axis):
                return self.node("Gather", [n[0], self.const(idx[:, 0].astype(np.int64))], axis=axis)
        raise NotImplementedError(f"ONNX export: gather pattern {dn}")


def to_onnx(segment, params, spec: str = "(b, h, w, 3)", *, opset: int = 17,
                names=("logits", "masks")) -> onnx.ModelProto:
    """ONNX model of images -> segment(params, images), params as initializers, `spec` in jax.export's syntax
    (symbolic names become the input's dim_params B, H, W)."""
    shape = export.symbolic_shape(spec)
    closed = jax.make_jaxpr(lambda images: segment(params, images))(jax.ShapeDtypeStruct(shape, jnp.uint8))
    conv = Converter(opset)
    try:
        outs = conv.convert(closed, ["images"])
    except (TypeError, jax.errors.InconclusiveDimensionOperation) as error:  # a size the lowerings cannot compute
        raise NotImplementedError(f"ONNX export: a size of this model is not computable at run time ("
                                  f"{str(error).splitlines()[0]}); export with --size H W") from None
    graph_outs = []
    for value, var_aval, name in zip(outs, closed.out_avals, names):
        conv.nodes.append(helper.make_node("Identity", [conv.name(value)], [name]))
        dims = [d if isinstance(d, int) else (str(d).upper() if d._to_var() else None) for d in var_aval.shape]
        graph_outs.append(helper.make_tensor_value_info(name, _onnx_type(var_aval.dtype), dims))
    in_dims = [d if isinstance(d, int) else str(d).upper() for d in shape]
    graph = helper.make_graph(conv.nodes, "fcn_jax_segment",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, in_dims)], graph_outs,
                              conv.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fcn_jax")
    model.ir_version = 8  # onnx 1.13+ / onnxruntime 1.14+
    onnx.checker.check_model(model)
    return model

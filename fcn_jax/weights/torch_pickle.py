"""Reading PyTorch .pth state_dicts into NumPy without torch and without running pickled code.

A .pth file is a pickle, and unpickling can call any importable function, so a
plain `pickle.load` of a downloaded file is arbitrary code execution. Here the
unpickler's `find_class` resolves only the few globals that rebuild tensors;
any other global (`os.system`, `builtins.eval`, a model class, ...) is refused
with `UnsafePickleError` naming it, before anything is called.

Two on-disk formats are read:
  * zip (torch >= 1.6): `<root>/data.pkl` (protocol 2) whose persistent ids
    `('storage', torch.FloatStorage, key, location, numel)` name raw
    `<root>/data/<key>` records; `<root>/byteorder` says little/big endian.
  * legacy (torch < 1.6, how the original vgg16 and pytorch-fcn files were
    written): pickles of a magic number, protocol version and sys_info, then
    the object with ids `('storage', type, key, location, numel, view)`, then
    the list of keys, then per key an int64 element count and the raw data.
The older tar format (torch <= 0.1.10) is refused with a message.

Tensors come back as NumPy arrays in torch's own layout (e.g. OIHW).
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import tarfile
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle references a global that is not needed to rebuild tensors."""


class _FileError(ValueError):
    """A message about the file that is already complete (names the file)."""


class _StorageType:
    """Stand-in for torch.FloatStorage & co: only carries the dtype."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage record; `data` (1-D native-endian array) is set once its bytes are read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


class _StorageView(_Storage):
    """Legacy-format view: elements [offset, offset + numel) of a root storage (only torch < 0.4 wrote these)."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        super().__init__(root.dtype, numel)
        self.root, self.offset = root, offset

    @property
    def data(self):
        return None if self.root.data is None else self.root.data[self.offset : self.offset + self.numel]

    @data.setter
    def data(self, value):
        del value  # views never own bytes


class _Tensor:
    """A tensor waiting for its storage's bytes: storage, element offset, size, stride."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data, offset = self.storage.data, self.offset
        if min(self.size + self.stride + (offset,), default=0) < 0:
            raise pickle.UnpicklingError(f"negative tensor size/stride/offset: {self.size} {self.stride} {offset}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=data.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= data.size:  # as_strided would read foreign memory
            raise pickle.UnpicklingError(
                f"tensor of size {self.size}, stride {self.stride}, offset {offset} "
                f"reaches past its storage of {data.size}"
            )
        strides = [s * data.dtype.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(data[offset:], self.size, strides, writeable=False).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # autograd state: irrelevant for weights
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 got a {type(storage).__name__} instead of a storage")
    return _Tensor(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks  # an nn.Parameter is just its tensor here
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load):
        super().__init__(file, encoding="utf-8")
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': "
                "a weights file may only reference tensor-rebuilding globals"
            ) from None

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def _no_persistent_ids(pid):
    raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")


def _storage_pid(pid) -> tuple[np.dtype, str, int]:
    """('storage', storage_type, key, location, numel, ...) -> (dtype, key, numel)."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80} (not a tensor storage)")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"persistent id names {storage_type!r:.60} instead of a storage type")
    return storage_type.dtype, str(key), int(numel)


def _storage_data(raw: bytes, dtype: np.dtype, numel: int, byteorder: str) -> np.ndarray:
    data = np.frombuffer(raw, dtype=dtype, count=numel)
    return data.byteswap() if byteorder != sys.byteorder and dtype.itemsize > 1 else data


def _materialise(obj):
    """Replaces every pending _Tensor inside dicts/lists/tuples by a NumPy array."""
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_zip(path: str, zf: zipfile.ZipFile):
    names = zf.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
        raise _FileError(f"{path} is a zip archive but not a torch.save file (no single data.pkl)")
    root = pkl[0][: -len("data.pkl")]
    byteorder = zf.read(f"{root}byteorder").decode().strip() if f"{root}byteorder" in names else "little"
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        dtype, key, numel = _storage_pid(pid)
        if key not in storages:
            if f"{root}data/{key}" not in names:
                raise _FileError(f"{path}: storage record data/{key} is missing (truncated file?)")
            raw = zf.read(f"{root}data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise _FileError(f"{path}: storage data/{key} has {len(raw)} bytes, needs {numel * dtype.itemsize}")
            storages[key] = _Storage(dtype, numel)
            storages[key].data = _storage_data(raw, dtype, numel, byteorder)
        return storages[key]

    return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), persistent_load).load()


def _load_legacy(path: str, f):
    def plain_load():  # the header pickles hold plain ints/dicts/lists
        return _RestrictedUnpickler(f, _no_persistent_ids).load()

    if plain_load() != _LEGACY_MAGIC:
        raise _FileError(f"{path} is a pickle but not a PyTorch .pth file (no torch magic number)")
    if plain_load() != _LEGACY_PROTOCOL:
        raise _FileError(f"{path}: unsupported legacy torch protocol version")
    byteorder = "little" if plain_load().get("little_endian", True) else "big"
    roots: dict[str, _Storage] = {}

    def persistent_load(pid):
        dtype, key, numel = _storage_pid(pid)
        root = roots.setdefault(key, _Storage(dtype, numel))
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return root
        _view_key, offset, view_numel = view
        return _StorageView(root, int(offset), int(view_numel))

    try:  # past the magic number this is a torch file: failures now mean damage
        obj = _RestrictedUnpickler(f, persistent_load).load()
        keys = plain_load()
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, UnsafePickleError):
            raise
        raise _FileError(f"{path} is a truncated or corrupt legacy .pth file ({e})") from None
    for key in keys:
        root = roots[str(key)]
        header = f.read(8)
        numel = int.from_bytes(header, byteorder, signed=True) if len(header) == 8 else -1
        raw = f.read(max(numel, 0) * root.dtype.itemsize)
        if numel < 0 or len(raw) < numel * root.dtype.itemsize:
            raise _FileError(f"{path} is truncated: storage {key} is incomplete")
        root.data = _storage_data(raw, root.dtype, numel, byteorder)
    return obj


def load_torch_file(path: str) -> Any:
    """Unpickles a torch.save file safely; tensors become NumPy arrays in torch's layout.

    Raises UnsafePickleError for a forbidden global, ValueError (one line naming
    the file) for anything that is not a readable .pth file.
    """
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        try:
            if is_zip:
                with zipfile.ZipFile(f) as zf:
                    return _materialise(_load_zip(path, zf))
            return _materialise(_load_legacy(path, f))
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except _FileError:
            raise
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path} is a truncated or corrupt zip archive ({e})") from None
        except Exception as e:  # garbage makes the unpickler fail in many ways; say what the file is not
            if is_zip:
                raise ValueError(f"{path}: data.pkl is truncated or corrupt ({type(e).__name__}: {e})") from None
            if tarfile.is_tarfile(path):
                raise ValueError(
                    f"{path} is in PyTorch's old tar format (torch <= 0.1.10), which is not supported: "
                    "re-save it with a recent torch (torch.save(torch.load(f), g))"
                ) from None
            raise ValueError(
                f"{path} is not a PyTorch .pth file (neither a torch zip archive nor a legacy torch pickle)"
            ) from None

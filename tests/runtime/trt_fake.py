"""A strict stand-in for ``tensorrt`` built from NVIDIA's real Python bindings, and one for pycuda.

``StrictTensorRT(bindings)`` behaves like the ``tensorrt`` module as far as the API goes: every
class, attribute, enum member and call signature is read from the real bindings (loaded over stub
libraries by ``../shared/tools/trt-api-surface.sh``: nothing in them can run). Calling a method the
real class lacks, with a wrong argument count, an unknown keyword or an argument of the wrong
type (a string where an enum is expected, an int where a bool is), or setting an attribute that is
not a writable property, raises :class:`StrictAPIError`. Nothing here lists the API by hand: the
signatures are parsed from the pybind11 docstrings. What the calls *return* is scripted by the
test (``fake.script("Builder.build_serialized_network", fn)``); unscripted calls return a fake of
the declared return class or a neutral value of the declared builtin type. Every call is logged.

pycuda cannot be had here, so :class:`FakeCuda` mirrors the part EdgeFlow uses by hand: per-thread
context stacks, device memory that exists only while its context is current, page-locked host
buffers, and copies that record whether their host side was page-locked.
"""

from __future__ import annotations

import re
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

PREFIX = "tensorrt_bindings.tensorrt."


class StrictAPIError(TypeError):
    """The code under test used the TensorRT API in a way the real bindings would refuse."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    optional: bool


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str

    def __str__(self) -> str:
        return f"({', '.join(p.name + ': ' + p.type for p in self.params)}) -> {self.returns}"


def _split_top(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


_SIG = re.compile(r"^(?:\d+\.\s+)?[\w]*\((.*)\)\s*->\s*(.+)$")


def signatures(func: Any) -> list[Signature]:
    """Every overload of a pybind11 function, from its docstring (``self``/``arg0`` dropped)."""
    sigs = []
    for line in (func.__doc__ or "").splitlines():
        m = _SIG.match(line.strip())
        if not m or m[1].startswith("*args"):
            continue
        params = []
        for part in _split_top(m[1]):
            name, _, rest = part.partition(":")
            typ, eq, _default = rest.partition("=")
            params.append(Param(name.strip(), typ.strip(), bool(eq)))
        sigs.append(Signature(tuple(params[1:]), m[2].strip()))  # drop self / arg0
    return sigs


def _real_type(bindings: Any, name: str) -> Any:
    if not name.startswith(PREFIX):
        return None
    obj = bindings
    for part in name[len(PREFIX):].split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def is_enum(cls: Any) -> bool:
    return isinstance(cls, type) and hasattr(cls, "__members__")


def is_interface(cls: type) -> bool:
    """A class Python code subclasses (ILogger, calibrators): constructible with no arguments."""
    sigs = signatures(cls.__init__)
    return bool(sigs) and all(not s.params for s in sigs)


class StrictTensorRT(types.ModuleType):
    """The ``tensorrt`` module as the real bindings define it, with scripted behaviour."""

    def __init__(self, bindings: Any, *, version: str | None = None) -> None:
        super().__init__("tensorrt")
        self._bindings = bindings
        self.__version__ = version or bindings.__version__
        self._scripts: dict[str, Callable[..., Any]] = {}
        self.calls: list[tuple[str, tuple, dict]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            value = getattr(self._bindings, name)
        except AttributeError:
            raise StrictAPIError(f"the real tensorrt module has no attribute {name!r}") from None
        if isinstance(value, type) and not is_enum(value) and not is_interface(value):
            return FakeClass(self, value)
        return value

    # -- scripting and logging ---------------------------------------------------------------
    def script(self, key: str, fn: Callable[..., Any]) -> None:
        """What ``Class.member`` returns: ``fn(obj, *args, **kwargs)`` (properties: ``fn(obj)``)."""
        cls, _, member = key.partition(".")
        real = getattr(self._bindings, cls)
        if not hasattr(real, member):
            raise StrictAPIError(f"cannot script {key}: the real {cls} has no {member!r}")
        self._scripts[key] = fn

    def record(self, key: str, args: tuple, kwargs: dict) -> None:
        with self._lock:
            self.calls.append((key, args, kwargs))

    def called(self, key: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for c, a, k in self.calls if c == key]

    # -- checking ----------------------------------------------------------------------------
    def accepts(self, typ: str, value: Any) -> bool:
        if typ.startswith("Optional["):
            return value is None or self.accepts(typ[9:-1], value)
        simple = {"int": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
                  "float": lambda v: isinstance(v, (int, float, np.floating)),
                  "bool": lambda v: isinstance(v, (bool, np.bool_)),
                  "str": lambda v: isinstance(v, str),
                  "buffer": lambda v: isinstance(v, (bytes, bytearray, memoryview, np.ndarray)),
                  "tuple": lambda v: isinstance(v, tuple), "list": lambda v: isinstance(v, list)}
        if typ in simple:
            return simple[typ](value)
        if typ.startswith("List["):
            return isinstance(value, (list, tuple))
        real = _real_type(self._bindings, typ)
        if real is None:
            return True  # numpy, capsules, C++ types the bindings do not name: not checked
        if is_enum(real):
            return isinstance(value, real)
        if real.__name__.startswith("Dims") or real.__name__ == "Permutation":
            # pybind converts tuples and lists of ints implicitly
            return isinstance(value, real) or (isinstance(value, (tuple, list)) and
                                               all(isinstance(d, (int, np.integer)) for d in value))
        if isinstance(value, FakeObject):
            return issubclass(value._cls, real)
        return isinstance(value, real)

    def bind(self, owner: str, name: str, sigs: list[Signature], args: tuple, kwargs: dict
             ) -> Signature:
        """The overload ``args``/``kwargs`` fit, or StrictAPIError naming the real ones."""
        for sig in sigs:
            if len(args) > len(sig.params):
                continue
            bound = dict(zip((p.name for p in sig.params), args, strict=False))
            if any(k in bound or k not in {p.name for p in sig.params} for k in kwargs):
                continue
            bound.update(kwargs)
            if any(p.name not in bound and not p.optional for p in sig.params):
                continue
            if all(self.accepts(p.type, bound[p.name]) for p in sig.params if p.name in bound):
                return sig
        shown = "; ".join(str(s) for s in sigs) or "no signature"
        given = ", ".join([*(type(a).__name__ for a in args),
                           *(f"{k}={type(v).__name__}" for k, v in kwargs.items())])
        raise StrictAPIError(f"{owner}.{name}({given}) fits no real signature: {shown}")

    def default(self, typ: str) -> Any:
        real = _real_type(self._bindings, typ)
        if real is not None and not is_enum(real) and isinstance(real, type):
            return FakeObject(self, real)
        return {"bool": True, "int": 0, "str": "", "float": 0.0}.get(typ)


class FakeClass:
    """A real TensorRT class whose constructor is checked and whose instances are fakes."""

    def __init__(self, fake: StrictTensorRT, real: type) -> None:
        self._fake, self._real = fake, real

    def __getattr__(self, name: str) -> Any:  # class attributes: nested enums, constants
        try:
            return getattr(self._real, name)
        except AttributeError:
            raise StrictAPIError(f"the real {self._real.__name__} has no {name!r}") from None

    def __call__(self, *args: Any, **kwargs: Any) -> FakeObject:
        cls = self._real.__name__
        self._fake.bind(cls, "__init__", signatures(self._real.__init__), args, kwargs)
        self._fake.record(f"{cls}.__init__", args, kwargs)
        script = self._fake._scripts.get(f"{cls}.__init__")
        obj = FakeObject(self._fake, self._real)
        if script is not None:
            script(obj, *args, **kwargs)
        return obj

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, FakeObject) and issubclass(obj._cls, self._real)


class FakeObject:
    """An instance of a real TensorRT class: members checked against it, behaviour scripted."""

    def __init__(self, fake: StrictTensorRT, cls: type) -> None:
        object.__setattr__(self, "_fake", fake)
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "state", {})

    def _member(self, name: str) -> Any:
        try:
            return getattr(self._cls, name)
        except AttributeError:
            raise StrictAPIError(f"the real {self._cls.__name__} has no attribute {name!r}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        member = self._member(name)
        key = f"{self._cls.__name__}.{name}"
        script = self._fake._scripts.get(key)
        if isinstance(member, property):
            if name in self.state:
                return self.state[name]
            returns = signatures(member.fget)[0].returns if member.fget else "None"
            return script(self) if script else self._fake.default(returns)
        if callable(member) and not isinstance(member, type) and not is_enum(type(member)):
            def call(*args: Any, **kwargs: Any) -> Any:
                sig = self._fake.bind(self._cls.__name__, name, signatures(member), args, kwargs)
                self._fake.record(key, args, kwargs)
                return script(self, *args, **kwargs) if script else self._fake.default(sig.returns)
            return call
        return member

    def __setattr__(self, name: str, value: Any) -> None:
        member = self._member(name)
        if not isinstance(member, property) or member.fset is None:
            raise StrictAPIError(f"{self._cls.__name__}.{name} is not a writable property")
        self._fake.bind(self._cls.__name__, name + "=", signatures(member.fset), (value,), {})
        self._fake.record(f"{self._cls.__name__}.{name}=", (value,), {})
        self.state[name] = value

    def __bool__(self) -> bool:
        return True


# ---- pycuda, by hand -------------------------------------------------------------------------

class PinnedBuffer(bytearray):
    """Page-locked host memory: ``free()`` like pycuda's HostAllocation."""

    freed = False

    def free(self) -> None:
        self.freed = True


class FakeContext:
    def __init__(self, cuda: FakeCuda, device: int) -> None:
        self.cuda, self.device, self.detached = cuda, device, False

    def push(self) -> None:
        self.cuda.stack().append(self)

    def pop(self) -> None:
        stack = self.cuda.stack()
        if not stack or stack[-1] is not self:
            raise RuntimeError("cuCtxPopCurrent failed: this context is not current in this thread")
        stack.pop()

    def detach(self) -> None:
        self.detached = True


class FakeAllocation:
    def __init__(self, cuda: FakeCuda, nbytes: int, ctx: FakeContext) -> None:
        self.cuda, self.ctx = cuda, ctx
        self.address = cuda.next_address
        cuda.next_address += max(nbytes, 1) + 256
        cuda.memory[self.address] = bytearray(nbytes)
        self.freed = False

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        if self.cuda.current() is not self.ctx:  # what pycuda cannot do from another context
            raise RuntimeError("cuMemFree failed: invalid device context")
        self.freed = True
        del self.cuda.memory[self.address]


class FakeCuda(types.ModuleType):
    """``pycuda.driver`` as EdgeFlow uses it; records allocations and copies."""

    def __init__(self, *, name: str = "Orin", capability: tuple[int, int] = (8, 7)) -> None:
        super().__init__("pycuda.driver")
        self.name, self.capability = name, capability
        self._local = threading.local()
        self.contexts: dict[int, FakeContext] = {}
        self.memory: dict[int, bytearray] = {}
        self.next_address = 1 << 20
        self.allocations: list[FakeAllocation] = []
        self.pinned: list[PinnedBuffer] = []
        self.copies: list[tuple[str, bool]] = []  # (direction, host side page-locked)
        cuda = self

        class Device:
            def __init__(self, index: int) -> None:
                self.index = index

            def name(self) -> str:
                return cuda.name

            def compute_capability(self) -> tuple[int, int]:
                return cuda.capability

            def retain_primary_context(self) -> FakeContext:
                return cuda.contexts.setdefault(self.index, FakeContext(cuda, self.index))

        class Stream:
            handle = 0xC0FFEE

            def synchronize(self) -> None:
                pass

        self.Device, self.Stream = Device, Stream

    def init(self) -> None:
        pass

    def stack(self) -> list[FakeContext]:
        return self._local.__dict__.setdefault("stack", [])

    def current(self) -> FakeContext | None:
        stack = self.stack()
        return stack[-1] if stack else None

    def _need_context(self, what: str) -> FakeContext:
        ctx = self.current()
        if ctx is None:
            raise RuntimeError(f"{what} failed: invalid device context (no context current)")
        return ctx

    def mem_alloc(self, nbytes: int) -> FakeAllocation:
        alloc = FakeAllocation(self, int(nbytes), self._need_context("cuMemAlloc"))
        self.allocations.append(alloc)
        return alloc

    def pagelocked_empty(self, shape: Any, dtype: Any) -> np.ndarray:
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = PinnedBuffer(count)
        self.pinned.append(buf)
        # like pycuda's: the array's base is the allocation, which has free()
        return np.ndarray(shape, dtype=dtype, buffer=buf)

    @staticmethod
    def _is_pinned(arr: np.ndarray) -> bool:
        base = arr
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        return isinstance(base, PinnedBuffer)

    def memcpy_htod_async(self, dest: FakeAllocation, src: np.ndarray, stream: Any = None) -> None:
        self._need_context("cuMemcpyHtoDAsync")
        data = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        self.memory[int(dest)][:len(data)] = data.tobytes()
        self.copies.append(("htod", self._is_pinned(src)))

    def memcpy_htod(self, dest: FakeAllocation, src: np.ndarray) -> None:
        self.memcpy_htod_async(dest, src)

    def memcpy_dtoh_async(self, dest: np.ndarray, src: FakeAllocation, stream: Any = None) -> None:
        self._need_context("cuMemcpyDtoHAsync")
        raw = np.frombuffer(bytes(self.memory[int(src)][:dest.nbytes]), dtype=dest.dtype)
        dest[...] = raw.reshape(dest.shape)
        self.copies.append(("dtoh", self._is_pinned(dest)))

    def read(self, address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """What a kernel would read at ``address`` (for scripted execute)."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(bytes(self.memory[address][:n]), dtype=dtype).reshape(shape)

    def write(self, address: int, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value).view(np.uint8).reshape(-1).tobytes()
        self.memory[address][:len(data)] = data

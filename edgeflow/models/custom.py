"""Bring your own model: any ``torch.nn.Module`` classifier, wrapped as a :class:`Backbone`.

A user model is named by an import path ``package.module:build`` (a callable that takes no
arguments and returns an ``nn.Module``) or, from Python, passed as an instance
(:func:`register_object` gives it a name for this process). :class:`CustomBackbone` finds what the
rest of EdgeFlow needs, from one forward pass in eval mode with hooks:

- the **head**: the single ``nn.Linear`` whose output is the model's output (``head=NAME`` names
  it when there are several Linear layers or none produces the output directly);
- the **features**: the model with its head replaced by ``nn.Identity``, i.e. the head's input;
- the **BatchNorm layers** theta can adapt: the last conv must be followed by a BatchNorm2d, and
  each BatchNorm must be registered right after the conv that feeds it (the export folds BatchNorm
  into the conv registered before it).

Every refusal is a :class:`ConfigError` that names the problem and the fix. The split is checked
against the model itself: ``classifier(features(x))`` must equal the original ``model(x)``.

State-dict names are ``body.<the user's name>`` and ``classifier.*``; :meth:`translate_state_dict`
maps a state dict saved from the user's own model (its own names) onto them, so ``--weights`` takes
either an EdgeFlow checkpoint or the user's ``torch.save(model.state_dict())``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeflow.errors import ConfigError
from edgeflow.models.base import Backbone

SPEC = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
OBJECT_PREFIX = "python-object:"  # a hyphen: never a module name, so never mistaken for a spec
_OBJECTS: dict[str, nn.Module] = {}
HEAD_FIX = "pass --head NAME (backbone.head; head= in Python) with the classifier's Linear layer"


def is_custom(name: str) -> bool:
    """Whether ``name`` names a user model (``pkg.mod:build`` or a registered Python object)."""
    return name.startswith(OBJECT_PREFIX) or ":" in name


def register_object(module: nn.Module) -> str:
    """A name for ``module`` that :func:`edgeflow.models.create_model` builds (a deep copy of it)
    in this process; the name changes with the architecture and the weights."""
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model= must be a torch.nn.Module instance or a model name, got "
                          f"{type(module).__name__}")
    h = hashlib.sha256(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    key = f"{OBJECT_PREFIX}{type(module).__name__}-{h.hexdigest()[:12]}"
    _OBJECTS[key] = module
    return key


def _public_callables(mod: Any) -> list[str]:
    return sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == mod.__name__)


def import_builder(spec: str) -> Callable[[], Any]:
    """The callable that ``spec`` (``package.module:attr``) names; errors say what is wrong."""
    m = SPEC.fullmatch(spec)
    if m is None:
        raise ConfigError(f"model {spec!r} is not an import path; write 'package.module:function' "
                          "(a callable that returns a torch.nn.Module), e.g. my_models.nets:build")
    modname, attr = m["module"], m["attr"]
    if os.getcwd() not in sys.path and "" not in sys.path:  # the `edgeflow` script lacks it
        sys.path.append(os.getcwd())  # last: never shadows an installed package
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and (modname == exc.name or modname.startswith(exc.name + ".")):
            raise ConfigError(f"model {spec!r}: no module named {exc.name!r}; check the spelling, "
                              "and run from the folder that holds the package (the current folder "
                              "is searched) or add that folder to PYTHONPATH") from None
        raise ConfigError(f"model {spec!r}: importing {modname} failed inside it: {exc}; install "
                          "what it imports") from exc
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"model {spec!r}: importing {modname} raised {type(exc).__name__}: {exc}; "
                          "fix the module (edgeflow --debug shows the traceback)") from exc
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            have = _public_callables(mod)
            raise ConfigError(f"model {spec!r}: {modname} has no {attr!r}; it defines "
                              f"{', '.join(have) if have else 'no public functions or classes'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {spec!r}: {modname}.{attr} is a {type(obj).__name__}, not a "
                          "callable; name a function or class that returns a torch.nn.Module")
    return obj


def load_user_module(name: str) -> nn.Module:
    """A fresh ``nn.Module`` for ``name``: the builder's return value, or a copy of the object."""
    if name.startswith(OBJECT_PREFIX):
        if name not in _OBJECTS:
            raise ConfigError(f"model {name!r} was an nn.Module passed to edgeflow.compile(model=...) "
                              "in another Python process, so it cannot be rebuilt here; pass the "
                              "module again, or name an importable builder 'package.module:build'")
        return copy.deepcopy(_OBJECTS[name])
    builder = import_builder(name)
    try:
        module = builder()
    except Exception as exc:
        raise ConfigError(f"model {name!r}: calling it with no arguments raised "
                          f"{type(exc).__name__}: {exc}; EdgeFlow calls the builder with no "
                          "arguments: give every parameter a default, or wrap it, e.g. "
                          "def build(): return MyNet(num_classes=10)") from exc
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model {name!r} returned a {type(module).__name__}, not a "
                          "torch.nn.Module; make it return the model (e.g. return MyNet())")
    return module


def source_digest(name: str) -> str:
    """sha256 of the file that defines the builder ``name`` (the object key itself for a Python
    object): what tells a resumed compile that the model's code changed. Only that file: a change
    in a module it imports is not seen."""
    if name.startswith(OBJECT_PREFIX):
        return name
    import inspect

    builder = import_builder(name)
    path = inspect.getsourcefile(inspect.getmodule(builder) or builder)
    if path is None:
        return name
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@dataclass(frozen=True)
class Probe:
    """What one eval-mode forward pass showed: layers in the order they ran."""

    output: torch.Tensor
    linears: tuple[tuple[str, nn.Linear, tuple[int, ...], bool], ...]  # name, layer, in shape, is out
    order: tuple[tuple[str, nn.Module], ...]  # Conv2d and BatchNorm layers, in execution order
    bn_fed_by: dict[str, str | None]  # BatchNorm name -> the conv whose output it normalises


def probe(module: nn.Module, x: torch.Tensor) -> Probe:
    """Run ``module(x)`` once in eval mode (restored after) and record its layers."""
    produced: dict[int, str] = {}  # id(conv output) -> conv name
    alive: list[torch.Tensor] = []  # conv outputs kept referenced, so their ids are not reused
    linears: list[tuple[str, nn.Linear, tuple[int, ...], torch.Tensor]] = []
    order: list[tuple[str, nn.Module]] = []
    bn_fed_by: dict[str, str | None] = {}

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple, out: Any) -> None:
            if isinstance(mod, nn.Linear):
                linears.append((name, mod, tuple(inp[0].shape), out))
            elif isinstance(mod, nn.Conv2d):
                order.append((name, mod))
                produced[id(out)] = name
                alive.append(out)
            else:
                order.append((name, mod))
                bn_fed_by[name] = produced.get(id(inp[0]))
        return fn

    kinds = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()
               if isinstance(m, kinds)]
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise ConfigError(f"the model's forward failed on a {tuple(x.shape)} input: "
                          f"{type(exc).__name__}: {exc}; check in_channels and the input size "
                          "(--data-size)") from exc
    finally:
        for h in handles:
            h.remove()
        module.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = f"a {tuple(out.shape)} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model's forward returns {what}; EdgeFlow needs one (N, classes) "
                          "tensor of logits: return only the logits")
    return Probe(out, tuple((n, m, s, o is out) for n, m, s, o in linears), tuple(order), bn_fed_by)


def _candidates(p: Probe) -> str:
    return ", ".join(f"{n} ({m.in_features}->{m.out_features})" for n, m, _, _ in p.linears) or "none"


def choose_head(module: nn.Module, p: Probe, head: str = "") -> str:
    """The head's module name: ``head`` if given (checked), else the one Linear giving the output."""
    if head:
        names = dict(module.named_modules())
        if head not in names:
            raise ConfigError(f"--head {head!r} is not a layer of the model; Linear layers: "
                              f"{_candidates(p)}")
        if not isinstance(names[head], nn.Linear):
            inner = [n for n, _, _, _ in p.linears if n.startswith(head + ".")]
            hint = f"; name the final Linear inside it: --head {inner[-1]}" if inner else ""
            raise ConfigError(f"--head {head!r} is a {type(names[head]).__name__}, not an "
                              f"nn.Linear{hint}")
        ran = [n for n, _, _, _ in p.linears]
        if head not in ran:
            raise ConfigError(f"--head {head!r} does not run in forward; Linear layers that run: "
                              f"{_candidates(p)}")
        if ran.count(head) > 1:
            raise ConfigError(f"--head {head!r} runs {ran.count(head)} times in forward; the head "
                              "must run once, last")
        return head
    out_layers = [n for n, _, _, is_out in p.linears if is_out]
    if len(p.linears) == 1 and out_layers:
        return out_layers[0]
    if not p.linears:
        raise ConfigError("the model has no nn.Linear classifier head that runs in forward; EdgeFlow "
                          "splits a classifier into features and a Linear head: end forward with "
                          "one (e.g. nn.Linear(features, classes))")
    why = ("several Linear layers run in forward" if len(p.linears) > 1 else
           "no Linear layer's output is the model's output (is there an op after the head?)")
    raise ConfigError(f"cannot tell which layer is the classifier head: {why}; candidates: "
                      f"{_candidates(p)}; {HEAD_FIX}, e.g. --head {p.linears[-1][0]}")


def check_batchnorm(p: Probe) -> list[str]:
    """Names of the BatchNorm2d layers theta can adapt; a ConfigError when there are none usable."""
    convs = [n for n, m in p.order if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError("the model has no nn.Conv2d layer that runs in forward; EdgeFlow deploys "
                          "convolutional backbones with BatchNorm")
    last = convs[-1]
    at = max(i for i, (_, m) in enumerate(p.order) if isinstance(m, nn.Conv2d))
    after = [n for n, _ in p.order[at + 1:]]
    bns = list(dict.fromkeys(n for n, m in p.order if isinstance(m, nn.BatchNorm2d)))  # once each
    other = sorted({n for n, m in p.order if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d))})
    if other:
        raise ConfigError(f"BatchNorm layers {other[:4]} are not BatchNorm2d; the export folds "
                          "BatchNorm2d only: use nn.BatchNorm2d in the feature extractor")
    if not any(n in bns for n in after):
        conv = dict(p.order)[last]
        raise ConfigError(f"no BatchNorm2d after the last conv {last!r} ({conv.in_channels}->"
                          f"{conv.out_channels}): theta, the biases EdgeFlow adapts on the device, "
                          f"are BatchNorm shifts near the features; add nn.BatchNorm2d("
                          f"{conv.out_channels}) after it (and train), or use a model with "
                          "conv -> BatchNorm blocks")
    mods = dict(p.order)
    for n in bns:
        bn = mods[n]
        if bn.bias is None or bn.running_mean is None:
            what = "affine=False (no bias to adapt)" if bn.bias is None else \
                "track_running_stats=False (cannot be folded for export)"
            raise ConfigError(f"BatchNorm {n!r} has {what}; use nn.BatchNorm2d({bn.num_features}) "
                              "with the defaults")
    return bns


def check_fold_order(module: nn.Module, p: Probe) -> None:
    """Each BatchNorm that follows a conv in registration order must normalise that conv's output
    (the export folds it into that conv); refuse a model where the two orders disagree."""
    names = [n for n, _ in module.named_modules()]
    mods = dict(module.named_modules())
    for bn, fed_by in p.bn_fed_by.items():
        i = names.index(bn)
        prev = names[i - 1] if i > 0 else None
        if (prev is not None and isinstance(mods[prev], nn.Conv2d)
                and mods[prev].out_channels == mods[bn].num_features and fed_by != prev):
            raise ConfigError(f"BatchNorm {bn!r} is defined right after conv {prev!r} but normalises "
                              f"{'the output of ' + repr(fed_by) if fed_by else 'another tensor'}; "
                              "EdgeFlow's export folds a BatchNorm into the conv defined before it: "
                              "in __init__, define each BatchNorm right after its own conv")


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


class CustomBackbone(Backbone):
    """A user ``nn.Module`` classifier as a Backbone: ``body`` is the model with its head replaced by
    ``nn.Identity``, ``classifier`` the head. ``module`` is taken over (not copied)."""

    def __init__(self, module: nn.Module, *, name: str = "", head: str = "", input_size: int = 32,
                 in_channels: int = 3, num_classes: int | None = None) -> None:
        super().__init__()
        self.model_name, self.in_channels, self.input_size = name, in_channels, input_size
        x = torch.randn(2, in_channels, input_size, input_size,
                        generator=torch.Generator().manual_seed(0))
        p = probe(module, x)
        self.head_name = choose_head(module, p, head)
        linear = module.get_submodule(self.head_name)
        shape = next(s for n, _, s, _ in p.linears if n == self.head_name)
        if len(shape) != 2:
            raise ConfigError(f"head {self.head_name!r} gets a {shape} input; EdgeFlow needs (N, D) "
                              "features before the head (pool and flatten before it)")
        check_fold_order(module, p)
        self.batchnorms = tuple(check_batchnorm(p))
        _replace(module, self.head_name, nn.Identity())
        self.body, self.classifier = module, linear
        self.feature_dim = linear.in_features
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                again: torch.Tensor | None = self(x)
        except Exception:  # the layers after the "head" got its input: it was not the last step
            again = None
        self.train(was)
        if (again is None or again.shape != p.output.shape
                or not torch.allclose(again, p.output, atol=1e-5, rtol=1e-4)):
            raise ConfigError(f"head {self.head_name!r} is not the last step of forward: the model "
                              "without it, then it, does not give the model's output; "
                              f"{HEAD_FIX} (the Linear that makes the logits)")
        if num_classes is not None and linear.out_features != num_classes:
            self.reset_classifier(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body(x), 1)

    def translate_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in the user model's own names (``torch.save(model.state_dict())``) in this
        wrapper's names; one already in this wrapper's names is returned as is."""
        own = self.state_dict()
        if all(k in own for k in sd):
            return sd
        prefix = self.head_name + "."
        return {("classifier." + k[len(prefix):]) if k.startswith(prefix) else "body." + k: v
                for k, v in sd.items()}

    def user_name(self, key: str) -> str:
        """A state-dict name of this wrapper in the user model's own terms (for messages)."""
        if key.startswith("classifier."):
            return self.head_name + key[len("classifier"):]
        return key.removeprefix("body.")

    def summary(self) -> dict[str, Any]:
        """What EdgeFlow chose: head, feature size, BatchNorm layers, biases, input."""
        bns = dict(self.body.named_modules())
        return {"model": self.model_name, "head": self.head_name,
                "head_shape": [self.classifier.in_features, self.classifier.out_features],
                "feature_dim": self.feature_dim, "batchnorm_layers": len(self.batchnorms),
                "batchnorm_biases": sum(bns[n].num_features for n in self.batchnorms),
                "last_batchnorm": f"body.{self.batchnorms[-1]}",
                "input": [self.in_channels, self.input_size, self.input_size],
                "params": sum(p.numel() for p in self.parameters())}


def build_custom(name: str, *, num_classes: int | None = None, head: str = "",
                 input_size: int = 32, in_channels: int = 3) -> CustomBackbone:
    """Build the user model ``name`` and wrap it (see :class:`CustomBackbone`)."""
    return CustomBackbone(load_user_module(name), name=name, head=head, input_size=input_size,
                          in_channels=in_channels, num_classes=num_classes)

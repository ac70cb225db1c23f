"""CP3 gate, Model Downloads: `llorch-pool models download` and the pool's catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gatehelpers import backend_param, expect, llorch_pool, pool_level, run_command

from llorch_harness.fsutil import sha256_file
from llorch_harness.pool import catalog as cat
from llorch_harness.pool.download import verify_model
from llorch_harness.pool.hfcli import check_hf_cli, hf_download_command
from llorch_harness.pool.paths import PoolPaths

SECTION = "Model Downloads"
REAL_QWEN_SIZE_GB = (0.8, 1.3)  # Qwen2.5-0.5B-Instruct safetensors: about 1 GB


@pytest.mark.gate(SECTION, "`llorch-pool models download` works")
@pool_level
def test_models_download_command(lab, pool_paths, hub, downloaded_model, tmp_path,
                                 gate_record):
    """The command users run: a fresh download, then the no-op rerun and `models verify`."""
    model_id = downloaded_model.model_id
    if hub is not None:
        # the embedded hub is cheap: prove a download from nothing into a scratch pool
        scratch = PoolPaths.at(tmp_path / "scratch-pool")
        scratch.root.mkdir(parents=True)
        before = hub.weight_bytes_sent()
        res = llorch_pool(scratch, "models", "download", model_id, env={"HF_ENDPOINT": hub.url})
        gate_record["fresh download"] = res.describe()
        expect(res.returncode == 0, "exit status 0", res.describe(), str(scratch.root))
        entry = cat.read_catalog(scratch).find(model_id)
        expect(entry is not None and entry.downloaded, f"{model_id} downloaded=true",
               repr(entry), str(scratch.catalog_path))
        expect(hub.weight_bytes_sent() > before, "weights fetched from the hub",
               "no weight bytes sent", hub.url)
        sent = hub.weight_bytes_sent()
        again = llorch_pool(scratch, "models", "download", model_id, env={"HF_ENDPOINT": hub.url})
        expect(again.returncode == 0 and "already downloaded" in again.stdout,
               "second run: exit 0 and 'already downloaded'", again.describe(),
               str(scratch.catalog_path))
        expect(hub.weight_bytes_sent() == sent, "no weight bytes fetched by the rerun",
               f"{hub.weight_bytes_sent() - sent} bytes", hub.url)
    res = llorch_pool(pool_paths, "models", "download", model_id)
    gate_record["pool download"] = res.describe()
    expect(res.returncode == 0 and "already downloaded" in res.stdout,
           f"`llorch-pool models download {model_id}` on the pool: exit 0, already downloaded",
           res.describe(), str(pool_paths.catalog_path))
    ver = llorch_pool(pool_paths, "models", "verify", model_id)
    expect(ver.returncode == 0, f"`llorch-pool models verify {model_id}` exit 0",
           ver.describe(), str(pool_paths.models_dir))


@pytest.mark.gate(SECTION, "`llorch-pool models download` works")
@pool_level
def test_hf_cli_manual_path(lab, hub, downloaded_model, tmp_path, gate_record):
    """The documented manual path: `hf` (never huggingface-cli) runs, and its download line,
    with one --include per pattern, fetches the same bytes the catalog verified."""
    status = check_hf_cli()
    gate_record["hf cli"] = status.message
    expect(status.ok, "`hf` installed and runs", status.message, "pip install huggingface_hub")
    target = tmp_path / "hf-manual"
    cmd = hf_download_command(downloaded_model.repo, target, hf=status.path)
    env = {"HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_XET": "1"}
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    else:
        cmd.append("--dry-run")  # the real hub: prove the line and the listing, not 1 GB again
    res = run_command(cmd, env=env)
    gate_record["hf download"] = res.describe()
    expect(res.returncode == 0, "`hf download` exit status 0", res.describe(), str(target))
    if hub is None:
        return
    for name, rec in sorted(downloaded_model.files.items()):
        if rec.get("sha256"):
            got = sha256_file(target / name) if (target / name).is_file() else "missing"
            expect(got == rec["sha256"], f"{name}: sha256 {rec['sha256']}", got, str(target))


def _check_downloaded_here(pool_paths, downloaded_model, gate_record) -> None:
    model_id = downloaded_model.model_id
    entry = cat.read_catalog(pool_paths).find(model_id)
    expect(entry is not None and entry.downloaded, f"catalog: {model_id} downloaded=true",
           repr(entry), str(pool_paths.catalog_path))
    result = verify_model(pool_paths, model_id, out=_Null(), raise_on_failure=False)
    expect(result.ok, "every file matches its recorded sha256", "; ".join(result.problems),
           str(result.path))
    names = {p.name for p in Path(result.path).iterdir()}
    expect(any(n.endswith(".safetensors") for n in names) and {"config.json", "tokenizer.json"}
           <= names, "*.safetensors, config.json and tokenizer.json in the model directory",
           ", ".join(sorted(names)), str(result.path))
    gate_record["model"] = model_id
    gate_record["model_dir"] = str(result.path)
    gate_record["model_files"] = downloaded_model.file_hashes


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


@pytest.mark.parametrize("backend", [
    backend_param("metal", pytest.mark.gate(SECTION, "Qwen downloaded on mac.home.arpa")),
    backend_param("cuda", pytest.mark.gate(SECTION, "Qwen downloaded on workstation.home.arpa")),
    backend_param("cpu", pytest.mark.gate(SECTION, "Qwen downloaded on this pool (cpu)")),
])
def test_gate_model_downloaded_on_this_pool(backend, lab, pool_paths, downloaded_model,
                                            gate_record):
    """Run on each pool: the gate model is downloaded and verified in this pool root."""
    gate_record["pool"] = lab.hostname
    _check_downloaded_here(pool_paths, downloaded_model, gate_record)


@pytest.mark.gate(SECTION, "Catalog updated correctly")
@pool_level
def test_catalog_updated(pool_paths, downloaded_model, gate_record):
    """The catalog file is the CP3 format, and the gate model's record says what was fetched."""
    path = pool_paths.catalog_path
    raw = json.loads(path.read_text(encoding="utf-8"))
    for key in ("version", "pool_id", "updated_at", "models"):
        expect(key in raw, f"top-level key {key!r}", ", ".join(raw), str(path))
    model_id = downloaded_model.model_id
    records = [m for m in raw["models"] if m.get("id") == model_id]
    expect(len(records) == 1, f"exactly one record for {model_id}", str(len(records)), str(path))
    rec = records[0]
    known = cat.known_models().get(model_id)
    checks = {
        "path": (rec.get("path") == f".test-models/{model_id}", f".test-models/{model_id}"),
        "format": (rec.get("format") == "safetensors", "safetensors"),
        "downloaded": (rec.get("downloaded") is True, "true"),
        "metadata.repo": (known is None or rec.get("metadata", {}).get("repo") == known.repo,
                          known.repo if known else "-"),
        "backends": (isinstance(rec.get("backends"), list) and "cpu" in rec["backends"],
                     "a list including cpu"),
        "metadata.files": (isinstance(rec.get("metadata", {}).get("files"), dict),
                           "recorded per-file sizes and hashes"),
    }
    for key, (ok, want) in checks.items():
        expect(ok, f"{key}: {want}", json.dumps(rec.get(key.split(".")[0]))[:300], str(path))
    gate_record["catalog record"] = rec


@pytest.mark.gate(SECTION, "File sizes are accurate")
@pool_level
def test_file_sizes_accurate(pool_paths, downloaded_model, gate_record):
    """size_gb matches the recorded sizes and the bytes on disk (and ~1 GB for Qwen 0.5B)."""
    entry = cat.read_catalog(pool_paths).find(downloaded_model.model_id)
    files = entry.metadata.get("files", {})
    model_dir = pool_paths.absolute(entry.path)
    on_disk = {n: (model_dir / n).stat().st_size for n in files}
    for name, rec in files.items():
        expect(on_disk[name] == rec.get("size"), f"{name}: {rec.get('size')} bytes",
               f"{on_disk[name]} bytes", str(model_dir / name))
    total = sum(on_disk.values())
    expect(abs(entry.size_gb - total / 1e9) < 1e-5, f"size_gb {total / 1e9:.6f} (bytes / 1e9)",
           f"{entry.size_gb}", str(pool_paths.catalog_path))
    if entry.id == "qwen-0.5b":
        lo, hi = REAL_QWEN_SIZE_GB
        expect(lo <= entry.size_gb <= hi, f"{lo}..{hi} GB for Qwen2.5-0.5B",
               f"{entry.size_gb} GB", str(model_dir))
    gate_record["sizes"] = {"size_gb": entry.size_gb, "files": on_disk}

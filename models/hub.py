"""Publish a heads folder to the Hugging Face Hub with a generated model card.

The token comes from the usual Hugging Face places (HF_TOKEN, or a saved login) and is handed to
huggingface_hub only; it is never printed or written into any file. HF_ENDPOINT points uploads at
another Hub-compatible server.
"""

from __future__ import annotations

import json
from pathlib import Path

from draftheads.models.card import model_card
from draftheads.models.draft_model import read_head_config
from draftheads.models.heads_folder import CARD_NAME, PUBLISHED, SUMMARY_NAME, TRAINING_NAME
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.errors import HubError

def _optional_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def refresh_card(folder: Path) -> str:
    """Regenerate README.md from config.json, training.json and eval_report.json (when present)."""
    config = read_head_config(folder)
    card = model_card(config, _optional_json(folder / TRAINING_NAME), _optional_json(folder / SUMMARY_NAME))
    atomic_write_text(folder / CARD_NAME, card)
    return card


def push_heads(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Create `repo_id` if needed and upload the heads folder; returns the commit URL."""
    folder = Path(folder)
    refresh_card(folder)
    config = read_head_config(folder)
    return _upload(
        folder, repo_id, private, commit_message or f"Upload {config.head_type} draft heads for {config.base.model}", list(PUBLISHED)
    )


def push_export(
    folder: str | Path, name: str, repo_id: str, dtype: str, private: bool = False, commit_message: str | None = None, engine: str = "all"
) -> str:
    """Export the heads folder in layout `name` for `engine` (`draftheads export`) and upload the whole export."""
    import tempfile

    from draftheads.models.formats import export_heads

    config = read_head_config(Path(folder))
    with tempfile.TemporaryDirectory() as tmp:
        out = export_heads(folder, name, Path(tmp) / "export", dtype, engine=engine)
        return _upload(
            out, repo_id, private, commit_message or f"Upload {config.head_type} draft heads for {config.base.model} ({name} layout)", None
        )


def _upload(folder: Path, repo_id: str, private: bool, message: str, patterns: list[str] | None) -> str:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if get_token() is None:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message, allow_patterns=patterns
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no response"
        raise HubError(f"the Hub refused the upload to {repo_id} (HTTP {status}): {exc.server_message or exc}") from None
    except OSError as exc:
        raise HubError(f"cannot reach the Hub to upload {repo_id}: {exc}") from None
    return commit.commit_url

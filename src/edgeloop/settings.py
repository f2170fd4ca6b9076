"""Project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments override single parameters (e.g. training.epochs), not whole
    # top-level blocks.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}

from edgeloop.hooks import ProvenanceHook, RunTimingHook  # noqa: E402

HOOKS = (ProvenanceHook(), RunTimingHook())

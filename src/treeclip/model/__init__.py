"""Models: create/load CLIP models via open_clip (architectures, tiny configs, hub folders, checkpoints)
and export them in open_clip's hub layout."""

from .export import export_model
from .factory import (
    CONFIG_DIR,
    ModelRef,
    create_model,
    list_architectures,
    load_model,
    load_state,
    model_config,
    parse_model_id,
    read_checkpoint,
    register_configs,
    unwrap_model,
)
from .hub import HUB_CONFIG, HUB_WEIGHTS, is_hub_dir, read_hub_config, write_hub_config

__all__ = [
    "CONFIG_DIR",
    "HUB_CONFIG",
    "HUB_WEIGHTS",
    "ModelRef",
    "create_model",
    "export_model",
    "is_hub_dir",
    "list_architectures",
    "load_model",
    "load_state",
    "model_config",
    "parse_model_id",
    "read_checkpoint",
    "read_hub_config",
    "register_configs",
    "unwrap_model",
    "write_hub_config",
]

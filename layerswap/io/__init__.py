"""The core: lazy safetensors access, LoRA adapters as deltas, short model names, atomic writes.

Also the tensor-name architecture rules, the data folder and language codes. The core imports only
the foundation (``layerswap.errors``, ...) and itself; modules here import their siblings directly,
never this package. Importing it imports neither torch nor pandas: the functions that build
tensors or tables import them.

``layerswap.io.syscalls`` (Linux calls behind the writer) is an implementation detail, not exported.
"""

from __future__ import annotations

from layerswap.io.architecture import (
    GLOBAL_MODULES,
    LAYER_MODULE_ORDER,
    REGISTRY,
    Architecture,
    ArchitectureRule,
    TensorRole,
    architecture_from_config,
    generic_architecture,
    module_sort_key,
    parse_layer_spec,
    rule_for,
)
from layerswap.io.atomic import AtomicDir, prepare_output_dir, recover_interrupted, write_bytes_atomic, write_text_atomic
from layerswap.io.data_files import (
    iter_jsonl,
    iter_records,
    iter_tsv,
    read_data_json,
    read_data_yaml,
    read_lines,
    require_fields,
    resolve_data_dir,
)
from layerswap.io.deltas import Checkpoint, DeltaView, check_compatible
from layerswap.io.dtypes import (
    DTYPE_ALIASES,
    DTYPE_SIZES,
    FLOAT_CODES,
    TORCH_DTYPE_NAMES,
    dtype_code,
    parse_dtype,
    parse_dtype_code,
    torch_dtype_of,
)
from layerswap.io.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModel, cache_dir
from layerswap.io.languages import LANGUAGES, Language, language, parse_languages
from layerswap.io.lora import LoraAdapter, LoraModule, is_adapter_folder
from layerswap.io.model_folder import INDEX_NAME, PICKLE_SUFFIXES, ModelFolder
from layerswap.io.provenance import (
    ADAPTER_DONOR_FILES,
    DONOR_FILES,
    PROVENANCE_NAME,
    copy_donor_files,
    package_version,
    read_provenance,
    write_provenance,
)
from layerswap.io.reader import TensorInfo, load_json, read_safetensors_header, read_tensor, read_tensor_into
from layerswap.io.resolve import open_checkpoint, open_model, prepare_model, resolve_model
from layerswap.io.summary import describe, format_description, parameter_table
from layerswap.io.writer import ShardedWriter, TensorSpec, parse_size, write_tensors

__all__ = [
    # reading checkpoints
    "Checkpoint",
    "DeltaView",
    "INDEX_NAME",
    "LoraAdapter",
    "LoraModule",
    "ModelFolder",
    "PICKLE_SUFFIXES",
    "TensorInfo",
    "check_compatible",
    "is_adapter_folder",
    "load_json",
    "open_checkpoint",
    "open_model",
    "read_safetensors_header",
    "read_tensor",
    "read_tensor_into",
    # model names
    "DEFAULT_MODEL",
    "EMBEDDED",
    "EmbeddedModel",
    "cache_dir",
    "prepare_model",
    "resolve_model",
    # dtypes
    "DTYPE_ALIASES",
    "DTYPE_SIZES",
    "FLOAT_CODES",
    "TORCH_DTYPE_NAMES",
    "dtype_code",
    "parse_dtype",
    "parse_dtype_code",
    "torch_dtype_of",
    # writing
    "ADAPTER_DONOR_FILES",
    "AtomicDir",
    "DONOR_FILES",
    "PROVENANCE_NAME",
    "ShardedWriter",
    "TensorSpec",
    "copy_donor_files",
    "package_version",
    "parse_size",
    "prepare_output_dir",
    "read_provenance",
    "recover_interrupted",
    "write_provenance",
    "write_tensors",
    "write_bytes_atomic",
    "write_text_atomic",
    # architecture
    "Architecture",
    "ArchitectureRule",
    "GLOBAL_MODULES",
    "LAYER_MODULE_ORDER",
    "REGISTRY",
    "TensorRole",
    "architecture_from_config",
    "generic_architecture",
    "module_sort_key",
    "parse_layer_spec",
    "rule_for",
    # data files and languages
    "LANGUAGES",
    "Language",
    "iter_jsonl",
    "iter_records",
    "iter_tsv",
    "read_data_json",
    "read_data_yaml",
    "language",
    "parse_languages",
    "read_lines",
    "require_fields",
    "resolve_data_dir",
    # what a checkpoint holds (layerswap inspect)
    "describe",
    "format_description",
    "parameter_table",
]

"""Weights: state dicts (read, clean, compare, load: `state_dict`), named sources (download, cache,
preprocessing, class names: `sources`, with `akamaster` and `timm_hub`), hub-style folders
(`folder`) and the Hugging Face hub (`hf`); `pretrained` turns any weights spec into a model."""
from .folder import from_folder, is_folder
from .pretrained import (apply_preprocess, from_pretrained, kind_of, load_pretrained, model_from_weights,
                         preprocess_of, resolve, toolkit_state_dict, weights_meta)
from ..errors import WeightsError, WeightsUnavailableError
from .preprocess import Preprocess
from .sources import (CIFAR10_CLASSES, DEFAULTS, SCHEMES, SOURCES, WeightSource, cache_dirs, download, find_cached,
                      get_source, imagenet_classes, imagenet_wnids, is_named, sha256_of, weights_dir)
from .state_dict import HEAD_PREFIX, PREFIXES, clean_keys, compare_state_dicts, load_strict, load_weights, \
    read_state_dict

__all__ = ["CIFAR10_CLASSES", "DEFAULTS", "HEAD_PREFIX", "PREFIXES", "SCHEMES", "SOURCES", "Preprocess",
           "WeightSource", "WeightsError", "WeightsUnavailableError", "apply_preprocess", "cache_dirs", "clean_keys",
           "compare_state_dicts", "download", "find_cached", "from_folder", "from_pretrained", "get_source",
           "imagenet_classes", "imagenet_wnids", "is_folder", "is_named", "kind_of", "load_pretrained", "load_strict",
           "load_weights", "model_from_weights", "preprocess_of", "read_state_dict", "resolve", "sha256_of",
           "toolkit_state_dict", "weights_dir", "weights_meta"]
